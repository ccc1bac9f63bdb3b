"""Which precision the encoder runs at: each precision's cosine to fp32 on a validation sample
(``measure_precision``), ``auto``'s choice of the fastest one that keeps mean cosine >= 0.99 to
fp32 (``resolve_precision``, ``measure_auto``), and the per-machine cache of that decision (one
small JSON file per machine, model and settings under the dgamix cache root, never in a
workspace: the same machine does not measure again for every corpus)."""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.runtime import torch_threads
from dgamix.pipeline.encoder import (
    CONCRETE,
    TOKENS_PER_BATCH,
    VALIDATION_DOCS,
    EmbedConfig,
    Encoder,
    _cosines,
    _embed_with,
    _run_features,
    _runner,
    _spread,
    check_precision,
    encode,
    int8_encoder,
    tokenize,
    weights_fingerprint,
)

MIN_MEAN_COSINE = 0.99      # a precision other than fp32 must keep this mean cosine to fp32 ...
MIN_MIN_COSINE = 0.95       # ... and this worst-document cosine (on the validation sample)
AUTO_MARGIN = 1.1           # auto leaves fp32 only for a precision at least this much faster
TIMING_PARTS = 4            # auto times each candidate on this many interleaved parts of the sample
AUTO_VERSION = 3            # of how auto measures and decides: bump it and cached decisions are ignored
DECISION_FORMAT = 1         # of the decision cache files
# what auto's speed ranking depends on besides the model and settings (see machine_fingerprint)
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")
LIBRARIES = ("torch", "onnxruntime", "onnx", "sentence-transformers", "transformers", "tokenizers", "numpy")


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
    fp32_runner: str = "torch"                      # auto: what fp32 was timed on: torch (as fp32 runs), or
                                                    # "onnx-export" (the fp32 graph int8 was quantised from)

    def params(self) -> dict:
        """The deterministic part, for manifest params."""
        return {"precision_requested": self.requested, "precision_cosine_mean": round(self.cosine_mean, 5),
                "precision_cosine_min": round(self.cosine_min, 5), "precision_sample": self.sample}

    def choice(self) -> dict | None:
        """auto: what the choice was made from (measured docs/s, cosines, why others were skipped)."""
        if not (self.docs_per_s or self.skipped or self.cached):
            return None
        out = {"docs_per_s": self.docs_per_s, "cosine": self.cosines, "skipped": self.skipped}
        if self.docs_per_s:
            out["fp32_runner"] = self.fp32_runner
        if self.cached:
            out["cached"] = self.cached
        return out


def cpu_info() -> tuple[str | None, set[str]]:
    """The CPU's model name and instruction-set flags, from /proc/cpuinfo (None and no flags where
    there is none)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, flags


def bf16_is_fast(device: str) -> bool:
    """Whether bf16 can beat fp32 here: a CUDA device with bf16, or a CPU with AMX/AVX512-BF16 units."""
    if device.startswith("cuda"):
        import torch  # only here: a CPU run that never needs torch does not import it

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(cpu_info()[1] & {"amx_bf16", "avx512_bf16"})


def int8_outruns_bf16(device: str) -> bool:
    """Whether int8 (ONNX Runtime, VNNI) has the higher peak than bf16 here: a CPU with AVX-512 VNNI
    and no AMX. AVX-512 BF16's dot products do twice fp32's work per instruction, VNNI's four times,
    so bf16 is worth timing there only when int8 does not qualify."""
    flags = cpu_info()[1]
    return device.startswith("cpu") and "avx512_vnni" in flags and not flags & {"amx_bf16", "amx_int8", "amx_tile"}


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


def decision_ready(enc: Encoder, cfg: EmbedConfig) -> bool:
    """Whether ``auto`` can decide here without measuring speed: this machine's decision for the
    model and settings is cached, and for an int8 decision its export too (nothing to export). Reads
    no model; a stale or unreadable file makes :func:`resolve_precision` measure after all."""
    try:
        d = json.loads(decision_path(decision_inputs(enc, cfg)).read_text())
        precision = d["report"]["precision"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    if precision != "int8":
        return precision in CONCRETE
    from dgamix.pipeline.onnx_int8 import export_cached

    return export_cached(weights_fingerprint(enc, cfg))


def small_corpus_precision(enc: Encoder, cfg: EmbedConfig, texts: list[str], n_docs: int,
                           min_docs: int) -> PrecisionReport:
    """``auto`` on a corpus of ``n_docs`` < ``min_docs`` documents (too few to repay an int8 export and
    a speed measurement): this machine's cached decision when :func:`decision_ready` (its cosine to
    fp32 checked on ``texts``, a sample of this corpus, as :func:`resolve_precision` does), else fp32
    without measuring; either way the report says why (``cached`` / ``skipped``)."""
    if n_docs >= VALIDATION_DOCS and decision_ready(enc, cfg):
        return resolve_precision(enc, cfg, texts)
    if n_docs < VALIDATION_DOCS:
        why = f"{n_docs} documents < {VALIDATION_DOCS}: fp32 without measuring (a cosine check would cost more than it saves)"
    else:
        why = (f"{n_docs} documents < {min_docs} and no decision cached for this machine: fp32 without measuring "
               f"(an int8 export and a measurement would not be repaid; auto on a corpus of {min_docs}+ documents "
               f"measures once, then every corpus of {VALIDATION_DOCS}+ documents on this machine reuses it)")
    return PrecisionReport("auto", "fp32", skipped={"all": why})


def measure_auto(enc: Encoder, cfg: EmbedConfig, texts: list[str]) -> PrecisionReport:
    """auto's measurement on a spread sample of at most VALIDATION_DOCS of ``texts``.

    Each candidate embeds the sample once, as TIMING_PARTS interleaved parts (similar length mix)
    timed apart; its speed is that of its fastest part (other processes share these cores: a burst
    of their load slows a part, not the best of them), and the candidates take turns part by part,
    so load elsewhere hits them alike. The cosine to fp32 is over the whole sample. A candidate
    that fails is left out (fp32 must work). On a CPU where int8's peak is above bf16's
    (:func:`int8_outruns_bf16`), bf16 is timed only when int8 does not qualify, after the others
    (against fp32's speed from their turns).

    fp32 is the reference and the speed to beat. Where int8 and fp32 are the only candidates and
    torch is not loaded yet (int8's export is cached: a machine's second corpus or setting), fp32
    runs as the fp32 ONNX export int8 was quantised from (``Int8Encoder.reference``: the same
    graph, cosine >= 0.99999 to torch's) instead of loading torch and the model, which is most of
    a measurement's time; int8 must then beat ONNX Runtime's fp32 speed instead of torch's
    (``fp32_runner`` records which one ran; bench/micro/embed.py times both)."""
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
    bf16_last = False  # bf16 timed only if int8 does not qualify
    if not bf16_is_fast(cfg.device):
        rep.skipped["bf16"] = "no bf16 units on this device (autocast would be slower than fp32)"
    elif "int8" in cands and int8_outruns_bf16(cfg.device):
        bf16_last = True
    else:
        cands.append("bf16")
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

    def measure(ps: list[str]) -> None:
        """Warm up and time the precisions ``ps`` part by part; their docs/s and cosines into ``rep``."""
        for p in [p for p in ps if p not in rep.skipped]:
            try:
                run = runs.get(p) or _runner(enc, cfg, p, sample)  # int8: export / cache load here, untimed
                _run_features(run, *subset(warm), left, replace(cfg, batch_size=1))
                runs[p] = run
            except Exception as e:  # a candidate that fails is left out; fp32 must work
                if p == "fp32":
                    raise
                leave_out(p, e)
        for h in parts:
            for p in [p for p in ps if p in runs]:
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
        for p in ps:
            if p in runs:
                c = _cosines(embs["fp32"], embs[p])
                rep.docs_per_s[p] = round(rates[p], 2)
                rep.cosines[p] = [round(float(c.mean()), 5), round(float(c.min()), 5)]

    def choose(ps: list[str]) -> None:
        """The fastest of ``ps`` that keeps the cosine bounds and beats the choice so far by AUTO_MARGIN."""
        for p in ps:
            if p not in rep.cosines:
                continue
            mean, low = rep.cosines[p]
            if (mean >= MIN_MEAN_COSINE and low >= MIN_MIN_COSINE
                    and rep.docs_per_s[p] >= AUTO_MARGIN * rep.docs_per_s[rep.precision]):
                rep.precision = p

    if cands == ["fp32", "int8"] and not enc.loaded:  # fp32 on int8's fp32 export: see the docstring
        try:
            runs["int8"] = _runner(enc, cfg, "int8", sample)
        except Exception as e:  # noqa: BLE001 - as in measure: int8 is left out, fp32 runs on torch
            leave_out("int8", e)
        # an export made just now has loaded torch and the model: fp32 is then timed as it runs
        export = runs["int8"].reference() if "int8" in runs and not enc.loaded else None
        if export is not None:
            runs["fp32"], rep.fp32_runner = export, "onnx-export"
    with contextlib.nullcontext() if "fp32" in runs else torch_threads(cores()):
        measure(cands)
    choose(cands[1:])
    if bf16_last and rep.precision == "fp32":
        with torch_threads(cores()):
            measure(["bf16"])
        choose(["bf16"])
    elif bf16_last:
        rep.skipped["bf16"] = (f"not timed: {rep.precision} qualified, and on a CPU with AVX-512 VNNI and no "
                               f"AMX int8's peak is twice bf16's")
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

    model, flags = cpu_info()
    cpu = model or platform.processor() or platform.machine()
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
                              dict(r["skipped"]), cached=f"cached decision from {d['decided']}",
                              fp32_runner=r.get("fp32_runner", "torch"))
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
    keep = ("precision", "cosine_mean", "cosine_min", "sample", "recipe", "docs_per_s", "cosines", "skipped",
            "fp32_runner")
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


