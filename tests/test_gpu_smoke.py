"""bench/gpu_smoke.sh (the GPU paths in one call) dry-runs on the CPU at a tiny scale, so that the
first machine with a CUDA GPU runs it in one call."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_smoke_dry_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "SCALE": "tiny", "SKIP_TESTS": "1", "OUT": str(tmp_path),
           "PY": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "gpu smoke finished" in r.stdout
    emb = json.loads((tmp_path / "embed.json").read_text())
    for corpus in emb["corpora"].values():
        m = corpus["methods"]
        assert set(m) == {"plain", "plain-bs16", "dgamix-fp32"}
        assert m["dgamix-fp32"]["cos_min"] >= 0.99  # the same model on the same device
    tree = json.loads((tmp_path / "cluster.json").read_text())["assign"]["torch"]
    assert tree["device"] == "cpu" and tree["docs"] == 5000
    assert tree["same_leaf_as_numpy"] >= 0.99


def test_gpu_smoke_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = {**os.environ, "DEVICE": "cuda", "OUT": str(tmp_path), "PY": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: DEVICE=cuda but torch sees no CUDA device"]
    assert list(tmp_path.iterdir()) == []
