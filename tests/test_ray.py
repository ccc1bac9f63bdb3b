"""The Ray engine (--engine ray) on a local Ray instance with 2 CPUs: the same manifests as the
local engine, resume after a SIGKILLed Ray run, and a clear error when Ray is not installed."""
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from dgamix.pipeline.core import manifest
from tests.helpers import CLUSTER, COMMON, ROOT, cli_ok, one_line_error, run_cli


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs, no dashboard) for this module; the CLI reuses it in-process
    and a subprocess joins it through its address. Shut down when the module's tests are done."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


def embeddings(ws) -> pl.DataFrame:
    return pl.read_parquet(ws / "embeddings" / "*.parquet").sort("doc_id")


def same_embeddings(a, b) -> None:
    ea, eb = embeddings(a), embeddings(b)
    assert ea["doc_id"].to_list() == eb["doc_id"].to_list()
    xa, xb = (np.asarray(e["embedding"].to_list(), np.float32) for e in (ea, eb))
    assert np.abs(xa - xb).max() <= 1e-6
    cols = ["shard", "first_doc_id", "last_doc_id", "rows", "path"]
    assert pl.read_parquet(a / "embeddings.parquet").select(cols).equals(pl.read_parquet(b / "embeddings.parquet").select(cols))
    pa_, pb = (manifest.read_meta(w / "embeddings.parquet", "embeddings") for w in (a, b))
    assert pa_["inputs"] == pb["inputs"] and pa_["params"] == pb["params"]


@pytest.mark.slow
def test_ray_engine_writes_the_same_manifests_as_local(tmp_path, wiki_sample, local_ws, ray_instance):
    import logging

    import ray

    def ray_data_settings():
        ctx = ray.data.DataContext.get_current()
        return logging.getLogger("ray.data").level, ctx.enable_progress_bars, ctx.print_on_execution_start

    settings = ray_data_settings()
    local, rayws = local_ws, tmp_path / "ray"
    out = cli_ok("embed", wiki_sample, "--workspace", rayws, *COMMON, "--engine", "ray", "--num-workers", 2)
    assert ray_data_settings() == settings  # the stage turned Ray Data's own bars and logs off only for itself
    assert re.search(r"engine\s+: ray\n", out) and re.search(r"shards_embedded\s+: 12\n", out), out
    assert (local / "docs.parquet").read_bytes() == (rayws / "docs.parquet").read_bytes()
    same_embeddings(local, rayws)

    out = cli_ok(*CLUSTER, "--workspace", rayws, "--engine", "ray", "--num-workers", 2)
    assert re.search(r"engine\s+: ray\n", out) and re.search(r"shards_assigned\s+: 12\n", out), out
    ta, tb = (pl.read_parquet(w / "clusters" / "k" / "tree.parquet") for w in (local, rayws))
    assert ta.select("level", "domain", "parent", "size").equals(tb.select("level", "domain", "parent", "size"))
    assert np.array_equal(np.asarray(ta["centroid"].to_list()), np.asarray(tb["centroid"].to_list()))
    aa, ab = (pl.read_parquet(w / "clusters" / "k" / "assignments" / "*.parquet").sort("doc_id") for w in (local, rayws))
    assert aa.equals(ab) and aa.height == 60
    da, db = (pl.read_parquet(w / "clusters" / "k" / "domains.parquet") for w in (local, rayws))
    assert da.select("level", "domain", "n_docs", "exemplars").equals(db.select("level", "domain", "n_docs", "exemplars"))

    # a rerun on Ray resumes: nothing left to do, and the files stay as they are
    before = (rayws / "clusters" / "k" / "assignments" / "part-00000.parquet").read_bytes()
    out = cli_ok(*CLUSTER, "--workspace", rayws, "--engine", "ray")
    assert re.search(r"shards_assigned\s+: 0\n", out), out
    assert (rayws / "clusters" / "k" / "assignments" / "part-00000.parquet").read_bytes() == before


def test_fit_tree_on_ray_equals_local_exactly(ray_instance):
    """Nodes big enough that FAISS runs multi-threaded locally and single-threaded in a Ray task."""
    from dgamix.pipeline.engine import EngineConfig, session
    from dgamix.pipeline.kmeans import ArraySource, FitConfig, fit_tree

    rng = np.random.default_rng(0)
    x = rng.standard_normal((9000, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    source, cfg = ArraySource(x, shard_size=2000), FitConfig((2, 16), seed=3, niter=8)
    local, _ = fit_tree(source, cfg)
    engine = EngineConfig("ray", num_workers=2)
    with session(engine):
        remote, _ = fit_tree(source, cfg, engine=engine)
    assert local.checksum() == remote.checksum()
    for a, b in zip(local.centroids, remote.centroids):
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_ray_embed_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, wiki_sample, local_ws, ray_instance):
    killed = tmp_path / "killed"
    address = ray_instance.get_runtime_context().gcs_address  # the driver joins this instance, as on a cluster
    p = subprocess.Popen([sys.executable, "-m", "dgamix.cli.main", "embed", str(wiki_sample), "--workspace", str(killed),
                          *map(str, COMMON), "--engine", "ray", "--ray-address", address, "--num-workers", "2"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))  # after ray.init:
    # the environment now holds how to authenticate to the instance (RAY_AUTH_MODE)
    t0 = time.time()
    while not list((killed / "embeddings").glob("part-*.parquet")):
        assert p.poll() is None, f"finished before the kill point: {p.stderr.read().decode()[-800:]}"
        assert time.time() - t0 < 300, "no shard was ever written"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)  # Ray ends the job's actors when their driver dies
    p.wait()
    parts = len(list((killed / "embeddings").glob("part-*.parquet")))
    assert not (killed / "embeddings.parquet").exists() and 1 <= parts < 12

    out = cli_ok("embed", wiki_sample, "--workspace", killed, *COMMON, "--engine", "ray", "--num-workers", 2)
    assert int(re.search(r"shards_skipped\s+: (\d+)", out).group(1)) >= 1, out  # finished shards were kept
    e = embeddings(killed)
    assert e["doc_id"].to_list() == sorted(set(e["doc_id"].to_list()))  # no duplicated doc id
    kept = pl.read_parquet(local_ws / "docs.parquet").filter(pl.col("dup_of").is_null())["doc_id"].to_list()
    assert e["doc_id"].to_list() == kept  # none missing
    same_embeddings(local_ws, killed)  # equal to the uninterrupted run
    assert not list(killed.rglob("*.tmp"))


def test_engine_ray_without_ray_installed_is_one_clear_line(tmp_path, wiki_sample, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    ws = tmp_path / "ws"
    for args in (("embed", wiki_sample, "--workspace", ws, "--engine", "ray", "-q"),
                 ("cluster", "--workspace", ws, "--levels", "2", "--engine", "ray")):
        r = run_cli(*args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --engine ray needs Ray"), r.output
        assert "pip install -e '.[ray]'" in lines[0]
    assert not ws.exists()


def test_ray_options_without_engine_ray_and_cuda_without_gpus_are_user_errors(tmp_path, wiki_sample):
    pytest.importorskip("ray")
    for extra, msg in ((("--num-workers", 2), "need --engine ray"),
                       (("--engine", "ray", "--device", "cuda"), "--gpus-per-worker"),
                       (("--engine", "ray", "--num-workers", 0), "--num-workers 0")):
        one_line_error(run_cli("embed", wiki_sample, "--workspace", tmp_path / "ws", "-q", *extra), msg)


def test_sharded_dedup_on_ray_equals_in_memory(tmp_path, ray_instance):
    from dgamix.pipeline.dedup import DedupConfig, near_duplicates, near_duplicates_sharded
    from dgamix.pipeline.engine import EngineConfig, session
    from tests.test_dedup import planted_corpus

    texts = planted_corpus(300)
    engine = EngineConfig("ray", num_workers=2)
    with session(engine):  # the signature shards run as Ray tasks and write to the shared folder
        got = near_duplicates_sharded([texts[i:i + 60] for i in range(0, len(texts), 60)], DedupConfig(),
                                      tmp_path / "sig", engine=engine)
    np.testing.assert_array_equal(got, near_duplicates(texts, DedupConfig()))
    assert (got >= 0).sum() > 20
