"""--engine ray on a multi-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster:
a head and a second node, one CPU each, so the two workers land on different nodes): embed and
cluster write the same manifests as the local engine, with actors given absolute paths (the
driver runs from another folder with a relative --workspace) and no temporary file left."""
import logging
import re

import numpy as np
import polars as pl
import pytest

from tests.helpers import CLUSTER, COMMON, cli_ok
from tests.test_ray import same_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    # tests/conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported: loopback only
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_node_cluster_writes_the_same_manifests_as_local(tmp_path, wiki_sample, local_ws, two_nodes, monkeypatch):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}  # loopback only
    assert [n["Resources"]["CPU"] for n in nodes] == [1.0, 1.0]  # two 1-CPU workers: one per node
    monkeypatch.chdir(tmp_path)  # the driver's folder is not the actors': paths they get must be absolute
    ray_opts = ("--engine", "ray", "--ray-address", two_nodes.address, "--num-workers", 2)
    out = cli_ok("embed", wiki_sample, "--workspace", "ws", *COMMON, *ray_opts)
    assert re.search(r"shards_embedded\s+: 12\n", out), out
    ws = tmp_path / "ws"
    assert pl.read_parquet(ws / "docs.parquet").drop("source").equals(
        pl.read_parquet(local_ws / "docs.parquet").drop("source"))
    same_embeddings(local_ws, ws)
    out = cli_ok(*CLUSTER, "--workspace", "ws", *ray_opts)
    assert re.search(r"shards_assigned\s+: 12\n", out), out
    ta, tb = (pl.read_parquet(w / "clusters" / "k" / "tree.parquet") for w in (local_ws, ws))
    assert ta.select("level", "domain", "parent", "size").equals(tb.select("level", "domain", "parent", "size"))
    assert np.array_equal(np.asarray(ta["centroid"].to_list()), np.asarray(tb["centroid"].to_list()))
    aa, ab = (pl.read_parquet(w / "clusters" / "k" / "assignments" / "*.parquet").sort("doc_id") for w in (local_ws, ws))
    assert aa.equals(ab) and aa.height == 60
    assert not list(ws.rglob("*.tmp")) and not list(tmp_path.glob("*.parquet"))  # atomic, nothing outside ws
