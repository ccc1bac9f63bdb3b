"""A mixture's state as plain Python values (lists, dicts, numbers, strings, numpy-free), and its
checksummed files: what ``OnlineMixture.state_dict`` returns, what a checkpoint holds, and the
one reader and writer of those files (``save_state`` / ``load_state``)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dgamix.pipeline.core.errors import DgamixError

STATE_FORMAT = 2  # 2: the state records its run (OnlineMixture.identity)
CHECKSUM_KEY = "dgamix_sha256"  # save_state's files: the sha256 of the state's torch.save bytes


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as torch tensors and numpy scalars as Python numbers, so that
    ``torch.load(weights_only=True)`` reads it back (dicts, lists, tuples kept)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def save_state(state: dict, path: str | Path) -> None:
    """``torch.save`` of ``to_plain(state)`` with the sha256 of those bytes, atomically: the file holds
    ``{CHECKSUM_KEY: sha256, "state": the bytes as a uint8 tensor}``, so a flipped byte is found on load
    (torch itself does not check), and a crash or a full disk leaves the previous file (one-line error)."""
    from dgamix.pipeline.core import files

    inner = io.BytesIO()
    torch.save(to_plain(state), inner)
    data = inner.getbuffer()
    outer = io.BytesIO()
    torch.save({CHECKSUM_KEY: hashlib.sha256(data).hexdigest(), "state": torch.frombuffer(data, dtype=torch.uint8)},
               outer)
    del data
    # written by Python, not by torch's writer, whose disk errors arrive as RuntimeErrors without the errno
    with files.atomic_file(path) as tmp:
        tmp.write_bytes(outer.getbuffer())


def load_state(path: str | Path, fix: str = "delete it and start again") -> dict:
    """A state written by ``save_state`` (or ``torch.save`` of a ``state_dict``), read with
    ``weights_only=True``: plain values only, nothing executed. A file whose bytes do not match the
    sha256 saved with them is refused (one line naming the file and ``fix``)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(obj, dict) and CHECKSUM_KEY in obj):
        return obj  # a plain torch.save: nothing to verify
    blob = obj["state"].numpy()
    if hashlib.sha256(blob).hexdigest() != obj[CHECKSUM_KEY]:
        raise DgamixError(f"{path} is corrupted: its bytes do not match the sha256 saved with them; {fix}.")
    return torch.load(io.BytesIO(blob.tobytes()), map_location="cpu", weights_only=True)


def from_plain(obj: Any) -> Any:
    """Inverse of ``to_plain``: CPU tensors back to numpy arrays."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, Mapping):
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


