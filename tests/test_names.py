"""One name rule for every artefact: no name given to any command can reach outside the workspace.

Two halves make the proof: (1) every path of a named artefact is computed by ``Workspace``, whose
methods accept only names that ``check_name`` admits, and for any string that it admits the path
stays one component under the artefact's folder (a property over arbitrary text); (2) every
command with a name-valued option, given hostile names, exits 2 with one line naming the option
and leaves every file inside and outside the workspace as it was.
"""
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgamix.cli.common import split_names
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace, check_name, valid_name
from tests.helpers import one_line_error, run_cli

HOSTILE = ["../../evil", "../evil", "..", ".", "/tmp/dgamix-evil", "a/b", "a\\b", "..\\..\\evil", ".hidden",
           "-x", "", " ", "evil\n", "a\x00b", "tab\there", "ünïcode", "a" * 101, "x.summary", "x.tmp", "~root"]


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (folders included as '<dir>')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------- the rule itself

@pytest.mark.slow
@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=120), st.sampled_from(HOSTILE),
                 st.text(alphabet="abc./\\-_", max_size=12), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}",
                                                                            fullmatch=True)))
def test_an_admitted_name_is_one_path_component_under_its_folder(name):
    ws = Workspace("/ws/root")
    paths = {"clusters": lambda n: ws.clusters_dir(n), "targets": lambda n: ws.target_dir(n),
             "bases": lambda n: ws.basis(n), "runs": lambda n: ws.run_dir(n), "schedules": lambda n: ws.schedule(n)}
    if not valid_name(name):
        for make in paths.values():
            with pytest.raises(DgamixError) as e:
                make(name)
            assert len(str(e.value).splitlines()) == 1 and "not a valid" in str(e.value)
        return
    for folder, make in paths.items():
        p = make(name)
        assert p.parent == Path("/ws/root") / folder
        assert os.path.normpath(p) == str(p) and p.name in (name, f"{name}.parquet")
        assert not p.name.startswith(".") and "/" not in p.name and "\x00" not in p.name


def test_the_rule_on_examples():
    for ok in ("k64-64-64", "gsm8k", "is", "b9", "dga-noema", "run_1.v2", "A" * 100):
        assert check_name(ok, "run") == ok
    for bad in HOSTILE + [None, 3]:
        with pytest.raises(DgamixError, match="not a valid run name"):
            check_name(bad, "run")
    with pytest.raises(DgamixError, match=r"^--name '\.\./x' is not a valid basis name; use 1-100 letters"):
        check_name("../x", "basis", "--name")


def test_basis_summary_cannot_collide_with_another_basis():
    ws = Workspace("/w")
    assert ws.basis_summary("x") == Path("/w/bases/x.summary.parquet")
    with pytest.raises(DgamixError):
        ws.basis("x.summary")  # would be basis x's summary file


# --------------------------------------------------------------------------- every command

def _commands(ws: Path) -> dict[str, tuple]:
    """Each command with a name-valued option, as a function of that name: (option, argv)."""
    w = ("--workspace", ws)
    return {
        "cluster --name": lambda n: ("cluster", *w, "--levels", "2,2", "--name", n, "-q"),
        "target --name": lambda n: ("target", ws.parent / "gsm8k.parquet", *w, "--name", n),
        "basis --name": lambda n: ("basis", *w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                                   "--by", "single", "--name", n),
        "basis --clusters": lambda n: ("basis", *w, "--clusters", n, "--level", 2, "--target", "gsm8k",
                                       "--name", "b-ok"),
        "basis --target": lambda n: ("basis", *w, "--clusters", "k3x2", "--level", 2, "--target", n, "--name", "b-ok"),
        "train --name": lambda n: ("train", *w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                                   "--mixer", "uniform", "--steps", 1, "--name", n),
        "train --basis": lambda n: ("train", *w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                                    "--mixer", "is", "--basis", n, "--steps", 1, "--name", "t-ok"),
        "schedule --name": lambda n: ("schedule", *w, "--clusters", "k3x2", "--level", 2, "--mixer", "uniform",
                                      "--steps", 2, "--batch-size", 2, "--name", n),
        "schedule --run": lambda n: ("schedule", *w, "--clusters", "k3x2", "--level", 2, "--run", n,
                                     "--steps", 2, "--batch-size", 2, "--name", "s-ok"),
        "report --runs": lambda n: ("report", *w, "--runs", n),
    }


@pytest.mark.slow
def test_no_name_of_any_command_changes_a_file_inside_or_outside_the_workspace(real_ws):
    root = Path(real_ws).parent  # holds the workspace and, beside it, the corpus and target inputs
    before = snapshot(root)
    for what, argv in _commands(Path(real_ws)).items():
        option = what.split()[1]
        for name in HOSTILE:
            if what == "report --runs" and all(valid_name(v) for v in split_names([name])):
                continue  # --runs takes "a,b" and strips blanks: '' means every run, 'evil\n' is run 'evil'
            r = run_cli(*argv(name))
            lines = r.output.strip().splitlines()
            assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {option} "), (what, name,
                                                                                                       r.output)
            assert "not a valid" in lines[0]
    assert snapshot(root) == before
    assert not Path("/tmp/dgamix-evil").exists()


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.one_of(st.text(max_size=30), st.sampled_from(HOSTILE),
                      st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)))
def test_schedule_names_write_only_their_own_file(real_ws, name):
    """Whatever --name is, schedule either writes WS/schedules/NAME.parquet and nothing else, or exits 2
    with one line and changes nothing."""
    root = Path(real_ws).parent
    before = snapshot(root)
    r = run_cli(*_commands(Path(real_ws))["schedule --name"](name), "--overwrite")
    after = snapshot(root)
    if r.exit_code == 0:
        assert valid_name(name)
        new = {k for k in after if after[k] != before.get(k)}
        rel = os.path.relpath(Workspace(real_ws).schedule(name), root)
        assert new <= {rel, os.path.dirname(rel), os.path.relpath(Path(real_ws) / f".lock-schedule-{name}", root)}
        assert rel in new
    else:
        one_line_error(r)
        assert not valid_name(name) and after == before


def test_library_calls_check_names_before_writing(tmp_path):
    """The stage functions, called from Python, refuse a bad name before anything is written."""
    from dgamix.mixing.schedule import export_schedule
    from dgamix.pipeline.basis import build_basis
    from dgamix.pipeline.core.params import ScheduleParams

    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DgamixError, match="not a valid basis name"):
        build_basis(ws, "k3x2", 2, "gsm8k", "../../evil")
    with pytest.raises(DgamixError, match="not a valid schedule name"):
        export_schedule(ws, "k3x2", 2, "../x", ScheduleParams(2, 2), mixer="uniform")
    assert not any(tmp_path.rglob("*"))
