"""`dgamix` — one command per stage; the code of `dgamix X` is the function X in cli/X.py."""
from __future__ import annotations

import importlib

import typer

COMMANDS = ["embed", "cluster", "target", "basis", "train", "schedule", "report"]  # in pipeline order

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a large generic corpus into a data mixture that specialises a language model "
                       "to a small target task. Stages: embed -> cluster -> target -> basis -> train/schedule -> report.")


@app.callback()
def _group() -> None:
    """dgamix: clustered importance sampling and Dynamic Gradient Alignment for data mixtures."""


for _name in COMMANDS:
    app.command(_name)(getattr(importlib.import_module(f"cli.{_name}"), _name))


if __name__ == "__main__":
    app()
