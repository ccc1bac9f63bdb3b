import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def wiki_sample(tmp_path_factory) -> Path:
    """60 real Wikipedia summaries (from data/) as a Parquet corpus."""
    import polars as pl

    path = tmp_path_factory.mktemp("corpus") / "wiki60.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(60, seed=1).write_parquet(path)
    return path


@pytest.fixture(scope="session")
def encoder():
    """The real packaged all-MiniLM-L6-v2, loaded once per session."""
    from pipeline.embed import EmbedConfig, load_encoder

    return load_encoder(EmbedConfig())
