"""The int8 encoder: the loaded SentenceTransformer exported to ONNX, quantised, run by ONNX Runtime.

Export happens once per model (keyed by the model's weight fingerprint) and is cached on disk:

1. ``torch.onnx.export`` (TorchScript exporter, no hub access) of the whole SentenceTransformer
   forward (transformer + pooling + normalise), with eager attention so that ONNX Runtime's
   transformer optimiser can fuse it (EmbedLayerNormalization, Attention, BiasGelu or FastGelu);
2. ``onnxruntime.transformers.optimizer.optimize_model`` (skipped if it fails: unfused still runs),
   *without* the SkipLayerNormalization fusion: on CPU (ORT 1.32, AVX2) that fused kernel took
   2.7 ms on 1024 x 384 tokens where Add + LayerNormalization take 0.6 ms, ~10% of the int8 time;
   sessions also disable ORT's own ``SkipLayerNormFusion`` (:data:`DISABLED_OPTIMIZERS`);
3. ``onnxruntime.quantization.quantize_dynamic`` with the first recipe of :data:`RECIPES` whose
   embeddings keep mean cosine >= :data:`MIN_MEAN_COSINE` to fp32 on a validation sample (the best
   one when none does). Default (per-tensor) int8 weights lose too much here (mean cosine ~0.956
   on the MiniLM model and wiki text); per-channel weights keep ~0.994.

Runs: one session with one intra-op thread, called from ``threads`` Python threads on different
batches at once (ONNX Runtime releases the GIL); no thread pool synchronises inside each of the
~60 operators per batch. Fewer batches than threads go to a second session with ``threads``
intra-op threads (created when first needed).

The cache folder is ``$DGAMIX_CACHE`` or ``$XDG_CACHE_HOME/dgamix`` or ``~/.cache/dgamix``; each
export lives in ``onnx/<fingerprint>-<EXPORT_VERSION>/`` (``model.int8.onnx`` + ``meta.json``),
written to a temporary folder and renamed, so a crash or a concurrent export never leaves a
half model under the final name. ``--precision auto``'s decisions live beside them, in ``auto/``
(see ``precision.cached_decision``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dgamix.pipeline.core import files
from dgamix.pipeline.core.errors import DgamixError, first_line

EXPORT_VERSION = "v2"          # bump when the export recipe changes: old caches are then ignored
MIN_MEAN_COSINE = 0.99         # a quantisation recipe must keep this mean cosine to fp32
MIN_MIN_COSINE = 0.95          # ... and this worst-document cosine
OPSET = 17

# (name, fusion options of optimize_model, keyword arguments of quantize_dynamic), tried in order.
# Per-channel signed int8 weights; reduce_range (7-bit weights) keeps u8 x s8 products clear of
# the 16-bit saturation of AVX2's vpmaddubsw on CPUs without VNNI; only the MatMul / Attention
# weights are quantised (the embedding table stays fp32: same speed, better worst-case cosine).
# FastGelu (tanh form) is cheaper than the exact erf BiasGelu at |diff| <= 5e-4.
# Unsigned weights (QUInt8) are not used: they run the slower u8 x u8 kernel.
_MATMULS = {"per_channel": True, "weight_type": "QInt8", "reduce_range": True,
            "op_types_to_quantize": ["MatMul", "Attention"]}
RECIPES: list[tuple[str, dict, dict]] = [
    ("s8-rr-fastgelu", {"enable_gelu_approximation": True}, _MATMULS),
    ("s8-rr", {}, _MATMULS),
    ("s8-all", {}, {"per_channel": True, "weight_type": "QInt8"}),   # the embedding table quantised too
]
FUSIONS = {"enable_skip_layer_norm": False}   # see the module docstring
FP32_FILE = "model.fp32.onnx"  # the unquantised export, kept beside the int8 one (see Int8Encoder.reference)
TOKENS_PER_BATCH = 512  # padded tokens per int8 batch (one thread each): smaller batches keep it in cache
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]

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
    """Whether ONNX Runtime and onnx are installed (found, not imported: importing onnx takes most
    of a second, and a run with a cached export never needs it)."""
    import sys
    from importlib.util import find_spec

    def found(name: str) -> bool:  # (a module set to None in sys.modules counts as not installed)
        return sys.modules[name] is not None if name in sys.modules else find_spec(name) is not None

    return found("onnxruntime") and found("onnx")


def cache_root() -> Path:
    """dgamix's per-user cache folder (int8 exports, auto's decisions); never inside a workspace."""
    env = os.environ.get("DGAMIX_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dgamix"


def cache_dir(model_fp: str) -> Path:
    return cache_root() / "onnx" / f"{model_fp}-{EXPORT_VERSION}"


def writable_cache(folder: Path) -> Path:
    """``folder`` (inside :func:`cache_root`) created, or one line naming the cache and how to move it:
    DGAMIX_CACHE a file, a read-only or full disk."""
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise DgamixError(f"the dgamix cache {root} is a file, not a folder; set DGAMIX_CACHE to a writable folder "
                          f"(or remove the file), or use --precision fp32.")
    try:
        return files.make_dir(folder, root)
    except DgamixError as e:
        raise DgamixError(f"{str(e).rstrip('.')}; the dgamix cache is {root}: set DGAMIX_CACHE to a writable "
                          f"folder, or use --precision fp32.") from None


def export_cached(model_fp: str) -> bool:
    """Whether the int8 export of the model with fingerprint ``model_fp`` is in the cache (its
    model and meta.json; ``load_int8`` then opens it without the model)."""
    return _complete(cache_dir(model_fp))


def _complete(folder: Path) -> bool:
    return (folder / "meta.json").exists() and (folder / "model.int8.onnx").exists()


@dataclass
class Int8Encoder:
    """ONNX Runtime over the quantised model: features (numpy int64) -> embeddings.

    ``map(batch, keys)`` runs ``batch(key)`` for each key on ``threads`` Python threads sharing one
    single-threaded session (results in the order of ``keys``); calling the encoder runs one batch.
    """

    session: object         # intra_op_num_threads = 1; thread-safe, run concurrently
    inputs: list[str]
    path: Path
    recipe: str
    exported: bool          # True when this load ran the export (False: read from the cache)
    export_seconds: float
    cosine: dict            # {"mean": ..., "min": ...} on the export-time validation sample
    threads: int = 1
    tokens_per_batch: int = TOKENS_PER_BATCH
    _wide: object = None    # intra_op_num_threads = threads, for fewer batches than threads

    def _run(self, sess, features: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.ascontiguousarray(features[k], dtype=np.int64) for k in self.inputs}
        return sess.run(None, feed)[0]

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        if self.threads > 1:
            if self._wide is None:
                self._wide = _session(self.path, self.threads)
            return self._run(self._wide, features)
        return self._run(self.session, features)

    def reference(self) -> Int8Encoder | None:
        """The same runner over the fp32 export this int8 model was quantised from (same graph, no
        quantisation: cosine to torch's fp32 >= 0.99999, tests/test_precision.py), or None for a
        cache made before dgamix kept that file. Lets a cosine check run without torch."""
        fp32 = self.path.parent / FP32_FILE
        if not fp32.is_file():
            return None
        try:
            return _encoder(fp32, "fp32-export", self.threads, False, {})
        except Exception:  # noqa: BLE001 - unreadable: the caller uses torch, and keep_fp32 writes it anew
            files.discard(fp32)
            return None

    def map(self, batch: Callable[[object], dict], keys: list):
        if self.threads == 1 or len(keys) < self.threads:
            yield from (self(batch(k)) for k in keys)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="dgamix-int8") as pool:
            yield from pool.map(lambda k: self._run(self.session, batch(k)), keys)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads > 1:  # spinning workers lose time when other processes share the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def _encoder(path: Path, recipe: str, threads: int, exported: bool, meta: dict) -> Int8Encoder:
    sess = _session(path, 1)
    return Int8Encoder(sess, [i.name for i in sess.get_inputs()], path, recipe, exported,
                       float(meta.get("export_seconds", 0.0)), meta.get("cosine", {}), threads)


def _open(folder: Path, threads: int, exported: bool) -> Int8Encoder:
    meta = json.loads((folder / "meta.json").read_text())
    # the version is part of the recipe name recorded in manifests: v1 and v2 exports give other vectors
    recipe = f"{meta.get('export_version', 'v1')}/{meta['recipe']}"
    return _encoder(folder / "model.int8.onnx", recipe, threads, exported, meta)


def load_int8(load_model: Callable[[], object], model_fp: str,
              score: Callable[[Int8Encoder], tuple[float, float]] | None = None,
              threads: int | None = None) -> Int8Encoder:
    """The cached int8 encoder of the model with fingerprint ``model_fp``, exporting it on first use
    (only then is ``load_model()``, which returns the SentenceTransformer, called).

    ``score(encoder) -> (mean_cosine, min_cosine)`` compares a candidate to fp32 on a validation
    sample; it picks the quantisation recipe at export time (without it, the first recipe is used).
    """
    require_onnxruntime()
    threads = threads or cores()
    folder = cache_dir(model_fp)
    if export_cached(model_fp):
        try:
            return _open(folder, threads, exported=False)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never fatal
            files.remove(folder, cache_root())
    require_onnxruntime(for_export=True)
    writable_cache(folder.parent)  # before the model is loaded: an unusable cache is one line at once
    return _export(load_model(), folder, score, threads)


def keep_fp32(int8: Int8Encoder, model) -> None:
    """Add the fp32 export to a cache folder made before dgamix kept it (see ``Int8Encoder.reference``),
    so that later runs check their cosine without torch. Best effort, written atomically; called
    where torch and the model are loaded anyway."""
    folder = int8.path.parent
    dest = folder / FP32_FILE
    if dest.exists():
        return
    for old in folder.glob(".fp32-*"):  # an older dgamix's temporaries, named without their writer's PID
        files.discard(old)
    work = files.temp_name(dest)  # a folder: a model over 2 GB writes side files beside the .onnx
    try:
        files.sweep_orphans(dest)
        files.make_dir(work, cache_root())
        _export_fp32(model, work / FP32_FILE)
        if _self_contained(work / FP32_FILE):
            files.replace(work / FP32_FILE, dest, cache_root())
    except Exception:  # noqa: BLE001 - without it the next run uses torch, as this one did
        pass
    finally:
        files.discard(work)


def _self_contained(path: Path) -> bool:
    """Whether the ONNX file holds all its weights: a model over 2 GB keeps them in side files,
    which a rename of the file alone would leave behind (then no fp32 reference is kept)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(path), load_external_data=False).graph
    return not any(uses_external_data(t) for t in graph.initializer)


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
    except OSError:
        raise  # a full or read-only disk: the caller names the file
    except Exception as e:  # noqa: BLE001 - any exporter failure is reported as one line
        raise DgamixError(f"could not export the model to ONNX for --precision int8 "
                          f"({first_line(e)}); "
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
    before = logging.root.manager.disable  # a level the user disabled stays disabled afterwards
    logging.disable(max(before, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(before)


def _optimise(src: Path, dest: Path, heads: int, hidden: int, fusions: dict) -> tuple[Path, dict]:
    """Fuse transformer subgraphs (BERT-like models; ``fusions``: FusionOptions fields on top of
    :data:`FUSIONS`): (path, fused op counts); the unfused graph when fusion fails."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        opts = FusionOptions("bert")
        for k, v in {**FUSIONS, **fusions}.items():
            setattr(opts, k, v)
        with _quiet_logging():
            opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                 optimization_options=opts)
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
    """Export, quantise and cache ``model`` in ``folder``: built in a temporary folder named after this
    process and renamed into place, so the folder appears complete or not at all; a full or read-only
    disk is one line, with nothing left behind."""
    t0 = time.perf_counter()
    root = cache_root()
    writable_cache(folder.parent)
    try:
        with files.atomic_dir(folder, root) as final:
            work = files.make_dir(final / "work", root)
            _export_fp32(model, work / "model.onnx")
            conf = getattr(_transformer(model), "config", None)
            heads, hidden = int(getattr(conf, "num_attention_heads", 0) or 0), int(getattr(conf, "hidden_size", 0) or 0)
            graphs: dict[str, tuple[Path, dict]] = {}  # fusion options -> optimised graph
            tried = []
            for name, fuse, kw in RECIPES:
                key = json.dumps(fuse, sort_keys=True)
                if key not in graphs:
                    graphs[key] = _optimise(work / "model.onnx", work / f"model.opt{len(graphs)}.onnx", heads, hidden,
                                            fuse)
                fused, fusions = graphs[key]
                out = work / f"{name}.onnx"
                _quantise(fused, out, kw)
                if score is None:
                    tried.append((name, out, (float("nan"), float("nan")), fusions))
                    break
                mean, low = score(_encoder(out, name, threads, True, {}))
                tried.append((name, out, (mean, low), fusions))
                if mean >= MIN_MEAN_COSINE and low >= MIN_MIN_COSINE:
                    break
            name, out, (mean, low), fusions = tried[-1] if score is None else max(
                tried, key=lambda t: (t[2][0] >= MIN_MEAN_COSINE and t[2][1] >= MIN_MIN_COSINE, t[2][0]))
            files.replace(out, final / "model.int8.onnx", root)
            # the fp32 export too: the fp32 reference of a later cosine check, without torch (FP32_FILE)
            if _self_contained(work / "model.onnx"):
                files.replace(work / "model.onnx", final / FP32_FILE, root)
            import onnxruntime
            import torch

            meta = {"recipe": name, "export_version": EXPORT_VERSION, "export_seconds": time.perf_counter() - t0,
                    "cosine": {"mean": mean, "min": low},
                    "tried": {n: {"mean": c[0], "min": c[1]} for n, _, c, _ in tried},
                    "fused_ops": fusions, "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "opset": OPSET}
            (final / "meta.json").write_text(json.dumps(meta, indent=1))
            files.remove(work, root)
    except DgamixError:
        if not _complete(folder):
            raise
        # another process renamed the same export into place first: use theirs
    except Exception as e:  # noqa: BLE001 - torch.onnx / the optimiser / quantize_dynamic on an unusual model
        raise DgamixError(f"the int8 export of this model failed ({type(e).__name__}: {first_line(e)}); use "
                          f"--precision fp32 (or auto, which then leaves int8 out).") from None
    return _open(folder, threads, exported=True)
