"""Run the dgamix CLI in a real process that stops at a chosen write, to be SIGKILLed there.

    DGAMIX_FAULT=MODE:PATTERN:NTH DGAMIX_FAULT_MARK=FILE python -m tests.faultpoint cluster ...

MODE 'write': right after the NTH record batch written to the temporary of a file whose name
matches PATTERN (fnmatch): part of the data is on disk, the file has no footer yet.
MODE 'commit': when the NTH such file is complete under its temporary name, before the rename.
At that point the process creates FILE and sleeps; the test kills it with SIGKILL. Production
code is not changed for this: the hooks wrap pyarrow's writer and dgamix.pipeline.core.files._commit.
"""
from __future__ import annotations

import fnmatch
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from dgamix.pipeline.core import files

MODE, PATTERN, NTH = os.environ["DGAMIX_FAULT"].split(":")
MARK = Path(os.environ["DGAMIX_FAULT_MARK"])
_hits = 0


def _hit(name: str) -> None:
    global _hits
    if not fnmatch.fnmatch(name, PATTERN):
        return
    _hits += 1
    if _hits == int(NTH):
        MARK.touch()
        time.sleep(600)
        os._exit(3)  # never reached when the test kills us


def _final_name(tmp: str | Path) -> str:
    """'.NAME.PID.RANDOM.tmp' -> 'NAME' (files.temp_name)."""
    return Path(tmp).name[1:].rsplit(".", 3)[0]


if MODE == "commit":
    _real_commit = files._commit

    def _commit(tmp, path):
        _hit(Path(path).name)
        return _real_commit(tmp, path)

    files._commit = _commit
elif MODE == "write":
    _real_write_table = pq.ParquetWriter.write_table  # write_batch goes through write_table

    def _write_table(self, *args, **kwargs):
        out = _real_write_table(self, *args, **kwargs)
        _hit(_final_name(self.where))
        return out

    pq.ParquetWriter.write_table = _write_table
else:  # pragma: no cover
    raise SystemExit(f"unknown fault mode {MODE!r}")

if __name__ == "__main__":
    from dgamix.cli.main import app

    sys.argv = ["dgamix", *sys.argv[1:]]
    app()
