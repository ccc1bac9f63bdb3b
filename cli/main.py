"""`dgamix` — one command per stage; the code of `dgamix X` is the function X in cli/X.py."""
from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # recent typer vendors its own copy of click, whose exceptions are the ones raised here
    from typer import _click as click
except ImportError:  # older typer uses click itself
    import click

COMMANDS = ["embed", "cluster", "target", "basis", "train", "schedule", "weights", "report"]  # in pipeline order


class OneLineErrors(TyperGroup):
    """Click's own rejections (a missing option, a value out of range, an unknown option) print one
    line `error: ...` and exit 2, like every other dgamix error, instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # `dgamix` or `dgamix X` alone: the help
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.UsageError as e:
            where = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
            print(f"error: {' '.join(e.format_message().split()).rstrip('.')}{where}.", file=sys.stderr)
            sys.exit(2)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        except click.exceptions.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer returns a command's typer.Exit code


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a large generic corpus into a data mixture that specialises a language model "
                       "to a small target task. Stages: embed -> cluster -> target -> basis -> train/schedule/weights -> report.")


@app.callback()
def _group() -> None:
    """dgamix: clustered importance sampling and Dynamic Gradient Alignment for data mixtures."""


for _name in COMMANDS:
    app.command(_name)(getattr(importlib.import_module(f"dgamix.cli.{_name}"), _name))


if __name__ == "__main__":
    app()
