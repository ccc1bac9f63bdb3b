import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError


def test_round_trip_keeps_rows_and_metadata(tmp_path):
    t = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    p = manifest.write(tmp_path / "m.parquet", t, "thing", {"k": 3}, "fp123", extra={"note": "hi"})
    back, meta = manifest.read(p, "thing")
    assert back.select(["a", "b"]).equals(t)
    assert meta["kind"] == "thing" and meta["params"] == {"k": 3} and meta["inputs"] == "fp123"
    assert meta["schema_version"] == manifest.SCHEMA_VERSION and meta["note"] == "hi"
    assert manifest.read_meta(p)["dgamix_version"]


def test_wrong_kind_missing_and_foreign_files_are_clear_errors(tmp_path):
    p = manifest.write(tmp_path / "m.parquet", pa.table({"a": [1]}), "thing")
    with pytest.raises(DgamixError, match="expected 'other'"):
        manifest.read(p, "other")
    with pytest.raises(DgamixError, match="does not exist"):
        manifest.read(tmp_path / "nope.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(DgamixError, match="not a dgamix manifest"):
        manifest.read(tmp_path / "plain.parquet")


def test_other_schema_version_is_refused(tmp_path):
    t = pa.table({"a": [1]}).replace_schema_metadata(
        {b"dgamix": json.dumps({"schema_version": 999, "kind": "thing"}).encode()})
    pq.write_table(t, tmp_path / "old.parquet")
    with pytest.raises(DgamixError, match="schema version 999"):
        manifest.read(tmp_path / "old.parquet")


def test_truncated_file_is_a_clear_error(tmp_path):
    p = manifest.write(tmp_path / "m.parquet", pa.table({"a": list(range(1000))}), "thing")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DgamixError, match="corrupt"):
        manifest.read(p)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    p = manifest.write(tmp_path / "m.parquet", pa.table({"a": [1]}), "thing")
    before = p.read_bytes()

    def boom(self, table, **kw):  # half a row group reaches the disk, then it is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)
    with pytest.raises(DgamixError, match="No space left"):
        manifest.write(p, pa.table({"a": [2]}), "thing")
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.parquet"]


def test_fingerprint_is_stable_and_sensitive():
    assert manifest.fingerprint({"a": 1, "b": 2}) == manifest.fingerprint({"b": 2, "a": 1})
    assert manifest.fingerprint({"a": 1}) != manifest.fingerprint({"a": 2})


def test_temporaries_of_a_killed_writer_are_swept_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".m.parquet.{int(dead.stdout)}.0badc0de.tmp"  # left by a SIGKILLed writer
    live = tmp_path / f".m.parquet.{os.getppid()}.0badc0de.tmp"       # a writer that is still running
    other = tmp_path / f".n.parquet.{int(dead.stdout)}.0badc0de.tmp"  # another file's temporary
    for f in (orphan, live, other):
        f.write_bytes(b"PAR1 half")
    manifest.write(tmp_path / "m.parquet", pa.table({"a": [1]}), "thing")
    assert not orphan.exists() and live.exists() and other.exists()
    assert manifest.read(tmp_path / "m.parquet", "thing")[0].num_rows == 1
