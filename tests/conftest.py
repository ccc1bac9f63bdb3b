import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray binds 127.0.0.1 only with this set before `import ray` (ray_constants reads it at import):
# tests talk to loopback only. Set for the tests, never by the product.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# after the environment above: the helpers import torch (OpenMP reads OMP_WAIT_POLICY when it loads)
from tests.helpers import CLUSTER, COMMON, DATA, ROOT, cli_ok, run_cli, train_workspace  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


# Fixtures that load or run the real MiniLM model: every test that uses one is marked slow (left out of
# `make test-fast`), so that the fast lane never loads the model.
MINILM_FIXTURES = frozenset({"encoder", "real_ws", "local_ws"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MINILM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def wiki_sample(tmp_path_factory) -> Path:
    """60 real Wikipedia summaries (from data/) as a Parquet corpus."""
    import polars as pl

    path = tmp_path_factory.mktemp("corpus") / "wiki60.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(60, seed=1).write_parquet(path)
    return path


@pytest.fixture(scope="session")
def encoder():
    """The real packaged all-MiniLM-L6-v2, loaded once per session (its tests are marked slow)."""
    from dgamix.pipeline.encoder import EmbedConfig, load_encoder

    return load_encoder(EmbedConfig())


@pytest.fixture(scope="session")
def real_ws(tmp_path_factory):
    """A small real workspace: 120 Wikipedia summaries embedded with MiniLM, clustered 3,2,
    and 40 GSM8K + 40 recipe examples as targets (recipes with a group column)."""
    import polars as pl

    root = tmp_path_factory.mktemp("realws")
    corpus = root / "corpus.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(120, seed=3).write_parquet(corpus)
    pl.read_parquet(DATA / "targets" / "gsm8k.parquet").head(40).write_parquet(root / "gsm8k.parquet")
    rec = pl.read_parquet(DATA / "targets" / "wikibooks_recipes.parquet").head(40)
    rec.with_columns(pl.when(pl.arange(0, 40) % 2 == 0).then(pl.lit("even")).otherwise(pl.lit("odd")).alias("half")
                     ).write_parquet(root / "recipes.parquet")
    ws = root / "ws"
    for args in (("embed", corpus, "--workspace", ws, "--keep-columns", "topic", "--shard-size", 50, "-q"),
                 ("cluster", "--workspace", ws, "--levels", "3,2", "--name", "k3x2", "-q"),
                 ("target", root / "gsm8k.parquet", "--workspace", ws, "--name", "gsm8k"),
                 ("target", root / "recipes.parquet", "--workspace", ws, "--name", "recipes", "--group-column", "half")):
        r = run_cli(*args)
        assert r.exit_code == 0, (args, r.output)
    return ws


@pytest.fixture(scope="session")
def tiny_ws(tmp_path_factory):
    """Real texts (160 Wikipedia summaries), a hand-written clustering 'c' (levels 2,2), target 't'
    (GSM8K), bases 'b' (level 2: target / generic / pocket) and 'b1' (level 1): tests.helpers.train_workspace."""
    return train_workspace(tmp_path_factory.mktemp("trainws") / "ws")


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin-waits that made a
    1 ms step take 100+ ms when another process holds the second core (use with pytest.mark.usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def local_ws(tmp_path_factory, wiki_sample):
    """The reference for the Ray engine tests: wiki_sample embedded and clustered with the local
    engine (tests.helpers.COMMON and CLUSTER: 60 documents in 12 shards, levels 3,2)."""
    import re

    ws = tmp_path_factory.mktemp("local") / "ws"
    assert re.search(r"engine\s+: local\n", cli_ok("embed", wiki_sample, "--workspace", ws, *COMMON))
    cli_ok(*CLUSTER, "--workspace", ws)
    return ws
