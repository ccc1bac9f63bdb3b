"""Every name of dgamix's public API has a docstring.

Public modules: ``dgamix.mixing`` (its ``__all__``, resolved through its lazy ``__getattr__``),
``dgamix.mixing.online`` and ``dgamix.mixing.hf`` (their ``__all__``, else the classes and functions
they define whose names do not start with ``_``), and every other module under pipeline/, mixing/
and cli/ that defines ``__all__``. A class or function needs its own docstring; a constant needs an
attribute docstring (a string right after its assignment) or a comment on or above its line.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"pipeline": "dgamix.pipeline", "mixing": "dgamix.mixing", "cli": "dgamix.cli"}
ALWAYS = ("dgamix.mixing", "dgamix.mixing.online", "dgamix.mixing.hf", "dgamix.mixing.loader")


def modules_with_all() -> list[str]:
    """Modules under pipeline/, mixing/ and cli/ whose source assigns ``__all__`` (found without importing)."""
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                   and any(isinstance(t, ast.Name) and t.id == "__all__"
                           for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
                   for n in tree.body):
                parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out.append(".".join([package, *parts]))
    return out


def public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return sorted(n for n, v in vars(module).items()
                  if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
                  and getattr(v, "__module__", None) == module.__name__)


def home_of(module, name: str):
    """The module whose source assigns ``name``: through ``_HOME`` (dgamix.mixing's lazy names) and
    ``from x import name`` re-exports."""
    home = getattr(module, "_HOME", {}).get(name)
    if home:
        return importlib.import_module(home if "." in home else f"{module.__name__}.{home}")
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and any((a.asname or a.name) == name for a in node.names):
            return home_of(importlib.import_module(node.module), name)
    return module


def own_docstring(obj) -> str | None:
    """The docstring written in ``obj``'s source (not one inherited, nor the signature a dataclass makes up)."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(obj)))).body[0]
    except (OSError, TypeError):  # no Python source (a builtin)
        return obj.__doc__
    return ast.get_docstring(node)


def constant_documented(module, name: str) -> bool:
    """``name`` is assigned at the top of ``module``'s source with an attribute docstring after it or
    a comment on (or right above) its first line."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    body = ast.parse(source).body
    for i, node in enumerate(body):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        nxt = body[i + 1] if i + 1 < len(body) else None
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            return True
        first = node.lineno - 1
        return "#" in lines[first] or (first > 0 and lines[first - 1].lstrip().startswith("#"))
    return False


def undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name in public_names(module):
        obj = getattr(module, name)  # dgamix.mixing: through its lazy __getattr__
        if inspect.ismodule(obj):
            ok = bool((obj.__doc__ or "").strip())
        elif inspect.isclass(obj) or inspect.isroutine(obj):
            ok = bool((own_docstring(obj) or "").strip())
        else:  # a constant: documented where it is assigned
            ok = constant_documented(home_of(module, name), name)
        if not ok:
            missing.append(f"{module_name}.{name}")
    return missing


def test_the_public_modules_are_found():
    found = modules_with_all()
    assert "dgamix.mixing" in found and "dgamix.pipeline.core.stage" in found, found


@pytest.mark.parametrize("module_name", sorted(set(ALWAYS) | set(modules_with_all())))
def test_every_public_name_has_a_docstring(module_name):
    pytest.importorskip("torch")
    if module_name == "dgamix.mixing.hf":
        pytest.importorskip("transformers")
    assert undocumented(module_name) == []
