"""CUDA paths: fp16 embeddings (--device cuda --precision fp16) and torch tree descent
(dgamix cluster --device cuda) against the CPU reference. Tests marked `gpu` skip without CUDA;
the torch descent itself is also checked on the CPU, where it runs everywhere."""
import numpy as np
import polars as pl
import pytest

from dgamix.pipeline.assign_torch import TorchTree
from dgamix.pipeline.kmeans import ArraySource, FitConfig, fit_tree
from tests.helpers import one_line_error, run_cli


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


def _tree(n=6000, d=64, levels=(8, 6), seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, d))
    x = (centers[rng.integers(40, size=n)] + 0.6 * rng.standard_normal((n, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tree, _ = fit_tree(ArraySource(x, 2000), FitConfig(levels, seed=1, niter=10))
    return tree, x


def test_torch_descent_on_cpu_matches_the_numpy_descent():
    tree, x = _tree()
    want, wsim = tree.descend(x)
    got, gsim = TorchTree(tree, "cpu").descend(x)
    assert got.shape == want.shape and got.dtype == np.int64
    assert (got[:, -1] == want[:, -1]).mean() >= 0.999  # float rounding may flip an exact near-tie
    same = (got == want).all(axis=1)
    assert np.allclose(gsim[same], wsim[same], atol=1e-5)
    # every label is a child of the row's label one level up
    for lv in range(1, tree.depth):
        pos = tree.index_of(lv + 1, got[:, lv])
        assert np.array_equal(tree.parent[lv][pos], got[:, lv - 1])


def test_fp16_is_cuda_only_one_clear_line(tmp_path, wiki_sample):
    r = run_cli("embed", wiki_sample, "--workspace", tmp_path / "ws", "--precision", "fp16", "-q")
    assert one_line_error(r).startswith("error: --precision fp16 runs on CUDA only")
    assert not (tmp_path / "ws" / "docs.parquet").exists()


def test_device_cuda_without_a_gpu_is_a_user_error(tmp_path):
    if _cuda():
        pytest.skip("a CUDA device is present")
    r = run_cli("cluster", "--workspace", tmp_path, "--levels", "3,2", "--device", "cuda")
    one_line_error(r, "torch sees no CUDA device")
    assert not (tmp_path / "clusters").exists()
    r = run_cli("embed", tmp_path / "none.parquet", "--workspace", tmp_path / "ws", "--device", "cuda", "-q")
    assert r.exit_code == 2 and "torch sees no CUDA device" in r.output, r.output


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_cuda_fp16_embeddings_agree_with_cpu_fp32(tmp_path, wiki_sample, encoder):
    from dgamix.pipeline.encoder import EmbedConfig, encode, load_encoder

    texts = pl.read_parquet(wiki_sample)["text"].to_list()
    ref = encode(encoder, texts, EmbedConfig())
    cfg = EmbedConfig(device="cuda", precision="fp16")
    got = encode(load_encoder(cfg), texts, cfg)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.99, cos.min()
    # and through the CLI: the precision is recorded, the vectors agree with a CPU run
    for dev, extra in (("cpu", ()), ("cuda", ("--precision", "fp16"))):
        r = run_cli("embed", wiki_sample, "--workspace", tmp_path / dev, "--device", dev, *extra, "-q")
        assert r.exit_code == 0, r.output
    a, b = (pl.read_parquet(tmp_path / dev / "embeddings" / "*.parquet").sort("doc_id") for dev in ("cpu", "cuda"))
    xa, xb = (np.asarray(e["embedding"].to_list(), np.float32) for e in (a, b))
    assert ((xa * xb).sum(1)).min() >= 0.99


@pytest.mark.gpu
@needs_cuda
def test_cuda_tree_descent_agrees_with_cpu():
    tree, x = _tree(n=20000, d=384, levels=(16, 16))
    want, _ = tree.descend(x)
    got, _ = TorchTree(tree, "cuda").descend(x)
    assert (got[:, -1] == want[:, -1]).mean() >= 0.99


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_cluster_device_cuda_assigns_like_the_cpu(real_ws):
    r = run_cli("cluster", "--workspace", real_ws, "--levels", "3,2", "--name", "k3x2-cuda", "--device", "cuda", "-q")
    assert r.exit_code == 0, r.output
    cpu, cuda = (pl.read_parquet(real_ws / "clusters" / n / "assignments" / "*.parquet").sort("doc_id")
                 for n in ("k3x2", "k3x2-cuda"))
    assert cpu["doc_id"].to_list() == cuda["doc_id"].to_list()
    assert (cpu["level_2"] == cuda["level_2"]).mean() >= 0.99
    t1, t2 = (pl.read_parquet(real_ws / "clusters" / n / "tree.parquet") for n in ("k3x2", "k3x2-cuda"))
    assert t1["centroid"].to_list() == t2["centroid"].to_list()  # the fit runs on the CPU either way
