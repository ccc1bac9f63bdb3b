"""mkdocs hook: let mkdocstrings find dgamix's modules by their installed names.

The repository's folders install as ``dgamix.pipeline`` (pipeline/), ``dgamix.mixing`` (mixing/)
and ``dgamix.cli`` (cli/) through pyproject's package-dir, a mapping that griffe (mkdocstrings'
reader, which parses the sources without importing them) cannot follow. Before mkdocstrings
starts, this copies the sources into a temporary folder laid out as the installed package and
points the Python handler there; the folder is removed when the build ends. It also roots the
snippets extension at the repository, so that the site builds from any working directory.
"""
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

PACKAGE = {"dgamix": "dgamix", "dgamix/pipeline": "pipeline", "dgamix/mixing": "mixing", "dgamix/cli": "cli"}
_made: list[str] = []


@event_priority(100)  # before mkdocstrings' own on_config, which starts the Python handler
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    tree = tempfile.mkdtemp(prefix="dgamix-api-")
    _made.append(tree)
    for dest, src in PACKAGE.items():
        shutil.copytree(root / src, Path(tree) / dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
    config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})["paths"] = [tree]
    # snippets (docs/changelog.md includes CHANGELOG.md) resolve from the repository, wherever mkdocs runs
    config.mdx_configs.setdefault("pymdownx.snippets", {})["base_path"] = [str(root)]
    return config


def on_shutdown():
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)
