"""The int8 encoder: the loaded SentenceTransformer exported to ONNX, quantised, run by ONNX Runtime.

Export happens once per model (keyed by the model's weight fingerprint) and is cached on disk:

1. ``torch.onnx.export`` (TorchScript exporter, no hub access) of the whole SentenceTransformer
   forward (transformer + pooling + normalise), with eager attention so that ONNX Runtime's
   transformer optimiser can fuse it (EmbedLayerNormalization, Attention, SkipLayerNorm, BiasGelu);
2. ``onnxruntime.transformers.optimizer.optimize_model`` (skipped if it fails: unfused still runs);
3. ``onnxruntime.quantization.quantize_dynamic`` with the first recipe of :data:`RECIPES` whose
   embeddings keep mean cosine >= :data:`MIN_MEAN_COSINE` to fp32 on a validation sample (the best
   one when none does). Default (per-tensor) int8 weights lose too much here (mean cosine ~0.956
   on the MiniLM model and wiki text); per-channel weights keep ~0.994.

The cache folder is ``$DGAMIX_CACHE`` or ``$XDG_CACHE_HOME/dgamix`` or ``~/.cache/dgamix``; each
export lives in ``onnx/<fingerprint>-<EXPORT_VERSION>/`` (``model.int8.onnx`` + ``meta.json``),
written to a temporary folder and renamed, so a crash or a concurrent export never leaves a
half model under the final name.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import DgamixError

EXPORT_VERSION = "v1"          # bump when the export recipe changes: old caches are then ignored
MIN_MEAN_COSINE = 0.99         # a quantisation recipe must keep this mean cosine to fp32
MIN_MIN_COSINE = 0.95          # ... and this worst-document cosine
OPSET = 17

# name -> keyword arguments of quantize_dynamic (weight_type given by name, resolved lazily).
RECIPES: list[tuple[str, dict]] = [
    ("per-channel-s8", {"per_channel": True, "weight_type": "QInt8"}),
    ("per-channel-s8-matmul", {"per_channel": True, "weight_type": "QInt8", "reduce_range": True,
                               "op_types_to_quantize": ["MatMul"], "extra_options": {"MatMulConstBOnly": True}}),
    ("per-channel-u8", {"per_channel": True, "weight_type": "QUInt8"}),
]

INSTALL_HINT = "`pip install onnxruntime onnx` (or `pip install 'dgamix[onnx]'`)"


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def require_onnxruntime(for_export: bool = False) -> None:
    """Raise a DgamixError naming the install command when ONNX Runtime (or onnx) is missing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise DgamixError(f"--precision int8 runs the encoder with ONNX Runtime, which is not installed; "
                          f"{INSTALL_HINT}, or use --precision fp32.") from None
    if for_export:
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise DgamixError(f"exporting the encoder for --precision int8 needs the onnx package; "
                              f"{INSTALL_HINT}, or use --precision fp32.") from None


def onnxruntime_available() -> bool:
    try:
        require_onnxruntime(for_export=True)
        return True
    except DgamixError:
        return False


def cache_root() -> Path:
    env = os.environ.get("DGAMIX_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dgamix"


def cache_dir(model_fp: str) -> Path:
    return cache_root() / "onnx" / f"{model_fp}-{EXPORT_VERSION}"


@dataclass
class Int8Encoder:
    """An ONNX Runtime session over the quantised model: features (numpy int64) -> embeddings."""

    session: object
    inputs: list[str]
    path: Path
    recipe: str
    exported: bool          # True when this load ran the export (False: read from the cache)
    export_seconds: float
    cosine: dict            # {"mean": ..., "min": ...} on the export-time validation sample

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.ascontiguousarray(features[k], dtype=np.int64) for k in self.inputs}
        return self.session.run(None, feed)[0]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _open(folder: Path, threads: int, exported: bool) -> Int8Encoder:
    meta = json.loads((folder / "meta.json").read_text())
    sess = _session(folder / "model.int8.onnx", threads)
    return Int8Encoder(sess, [i.name for i in sess.get_inputs()], folder / "model.int8.onnx", meta["recipe"],
                       exported, float(meta.get("export_seconds", 0.0)), meta.get("cosine", {}))


def load_int8(model, model_fp: str, score: Callable[[Int8Encoder], tuple[float, float]] | None = None,
              threads: int | None = None) -> Int8Encoder:
    """The cached int8 encoder of ``model`` (fingerprint ``model_fp``), exporting it on first use.

    ``score(encoder) -> (mean_cosine, min_cosine)`` compares a candidate to fp32 on a validation
    sample; it picks the quantisation recipe at export time (without it, the first recipe is used).
    """
    require_onnxruntime()
    threads = threads or cores()
    folder = cache_dir(model_fp)
    if (folder / "meta.json").exists() and (folder / "model.int8.onnx").exists():
        try:
            return _open(folder, threads, exported=False)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never fatal
            shutil.rmtree(folder, ignore_errors=True)
    require_onnxruntime(for_export=True)
    return _export(model, folder, score, threads)


def _transformer(model):
    from transformers import PreTrainedModel

    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            return m
    return None


def _wrap(model, names: list[str]):
    """A torch module mapping positional feature tensors -> the model's normalised sentence embedding."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = model

        def forward(self, *tensors):
            out = self.st.forward(dict(zip(names, tensors)))["sentence_embedding"]
            return torch.nn.functional.normalize(out.float(), p=2.0, dim=1)

    return Wrapped().eval()


def _export_fp32(model, dest: Path) -> list[str]:
    """Export the SentenceTransformer forward to ``dest``; returns the input names."""
    import torch

    prep = getattr(model, "preprocess", None) or model.tokenize
    feats = prep(["A short one.", "A somewhat longer sentence, so that the trace sees padding in a batch."])
    names = [k for k, v in feats.items() if isinstance(v, torch.Tensor)]
    args = tuple(feats[k].cpu() for k in names)
    tr = _transformer(model)
    old_attn = getattr(getattr(tr, "config", None), "_attn_implementation", None)
    try:
        if tr is not None and old_attn not in (None, "eager"):
            try:  # the classic attention pattern is what ONNX Runtime's optimiser fuses
                tr.set_attn_implementation("eager")
            except Exception:  # noqa: BLE001 - older transformers: the config field
                tr.config._attn_implementation = "eager"
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["embedding"] = {0: "batch"}
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_wrap(model, names), args, str(dest), input_names=names,
                              output_names=["embedding"], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
    except Exception as e:  # noqa: BLE001 - any exporter failure is reported as one line
        raise DgamixError(f"could not export the model to ONNX for --precision int8 "
                          f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                          f"use --precision fp32.") from None
    finally:
        if tr is not None and old_attn not in (None, "eager"):
            try:
                tr.set_attn_implementation(old_attn)
            except Exception:  # noqa: BLE001
                tr.config._attn_implementation = old_attn
    return names


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime's optimiser and quantiser log advice through the root logger; keep it off our output."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _optimise(src: Path, dest: Path, heads: int, hidden: int) -> tuple[Path, dict]:
    """Fuse transformer subgraphs (BERT-like models): (path, fused op counts); the unfused graph
    when fusion fails."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet_logging():
            opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
            stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(dest))
        return dest, stats
    except Exception:  # noqa: BLE001 - fusion is an optimisation, not a requirement
        return src, {}


def _quantise(src: Path, dest: Path, kw: dict) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kw = dict(kw)
    kw["weight_type"] = getattr(QuantType, kw.get("weight_type", "QInt8"))
    # fused contrib ops defeat shape inference; their outputs are float tensors
    kw["extra_options"] = {**kw.get("extra_options", {}), "DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet_logging():
        quantize_dynamic(str(src), str(dest), **kw)


def _export(model, folder: Path, score, threads: int) -> Int8Encoder:
    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _export_fp32(model, work / "model.onnx")
        conf = getattr(_transformer(model), "config", None)
        fused, fusions = _optimise(work / "model.onnx", work / "model.opt.onnx", int(getattr(conf, "num_attention_heads", 0) or 0),
                          int(getattr(conf, "hidden_size", 0) or 0))
        tried = []
        for name, kw in RECIPES:
            out = work / f"{name}.onnx"
            _quantise(fused, out, kw)
            if score is None:
                tried.append((name, out, (float("nan"), float("nan"))))
                break
            sess = _session(out, threads)
            enc = Int8Encoder(sess, [i.name for i in sess.get_inputs()], out, name, True, 0.0, {})
            mean, low = score(enc)
            tried.append((name, out, (mean, low)))
            if mean >= MIN_MEAN_COSINE and low >= MIN_MIN_COSINE:
                break
        name, out, (mean, low) = tried[-1] if score is None else max(
            tried, key=lambda t: (t[2][0] >= MIN_MEAN_COSINE and t[2][1] >= MIN_MIN_COSINE, t[2][0]))
        final = work / "final"
        final.mkdir()
        os.replace(out, final / "model.int8.onnx")
        import onnxruntime
        import torch

        meta = {"recipe": name, "export_version": EXPORT_VERSION, "export_seconds": time.perf_counter() - t0,
                "cosine": {"mean": mean, "min": low},
                "tried": {n: {"mean": c[0], "min": c[1]} for n, _, c in tried},
                "fused_ops": fusions, "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__, "opset": OPSET}
        (final / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(final, folder)  # atomic: the folder appears complete or not at all
        except OSError:  # another process finished the same export first: use theirs
            if not (folder / "meta.json").exists():
                aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(folder, aside)
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, folder)
    except OSError as e:
        raise DgamixError(f"could not write the int8 model cache under {folder.parent}: {e.strerror or e}; "
                          f"set DGAMIX_CACHE to a writable folder.") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _open(folder, threads, exported=True)
