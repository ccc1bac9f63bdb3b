"""One home per default: every CLI option's default is read from the params dataclass of its stage
(no literal default in cli/), and each option's default equals that dataclass's field."""
from __future__ import annotations

import ast
from dataclasses import fields

import typer.main

from dgamix.cli.main import app
from dgamix.mixing.dga import DGAConfig
from dgamix.mixing.testbed.config import TrainConfig
from dgamix.pipeline.core.params import BasisParams, ClusterParams, ScheduleParams, TargetConfig
from dgamix.pipeline.corpus import CorpusSpec
from dgamix.pipeline.dedup import DedupConfig
from dgamix.pipeline.encoder import EMBED_STAGE
from dgamix.pipeline.engine import LOCAL
from tests.helpers import ROOT

# command -> (the instances whose fields give its defaults, option name -> field name where they differ)
HOMES = {
    "train": ([TrainConfig(), DGAConfig()], {}),
    "cluster": ([ClusterParams()], {"sample_memory": "sample_memory_mib"}),
    "target": ([TargetConfig()], {}),
    "basis": ([BasisParams()], {}),
    "schedule": ([ScheduleParams(0, 0)], {}),
    "embed": ([EMBED_STAGE, CorpusSpec(), DedupConfig(), LOCAL], {"dedup_threshold": "threshold"}),
}


def test_no_literal_default_in_the_cli():
    """typer.Option's default is `...`, None, False or a name/attribute (a dataclass field): never a literal."""
    found = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Option" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and first.value not in (Ellipsis, None, False):
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(first)}")
    assert not found, found


REQUIRED = {("cluster", "levels"), ("schedule", "steps"), ("schedule", "batch_size")}  # no default: must be given


def test_every_option_default_is_its_dataclass_field():
    command = typer.main.get_command(app)
    checked = 0
    for name, (homes, renamed) in HOMES.items():
        for param in command.commands[name].params:
            field = renamed.get(param.name, param.name)
            if (name, param.name) in REQUIRED:
                continue
            for home in homes:
                if field in {f.name for f in fields(home)}:
                    want = getattr(home, field)
                    if name == "basis" and field == "temper":
                        want = ",".join(f"{g:g}" for g in want)
                    empty = (None, (), "")  # a comma-separated option left out = an empty tuple
                    got = None if param.default in empty else param.default
                    assert got == (None if want in empty else want), (name, param.name, param.default, want)
                    checked += 1
                    break
    assert checked >= 40, checked  # the options above are really compared
