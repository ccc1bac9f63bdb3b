"""The layout is the architecture: one installed name, a kernel layer, no import circles.

- Everything installs under ``dgamix``: the wheel holds no top-level ``pipeline``, ``mixing`` or
  ``cli``, and ``dgamix.*`` imports from a folder that holds a user's own ``pipeline/``.
- ``dgamix.pipeline.core`` (the kernel) imports no other dgamix code; ``dgamix.mixing`` (stage 3)
  reads stages 1-2 only through it; stages 1-2 never import stage 3 or the CLI.
- ``dgamix.mixing.testbed`` (the reference LM and trainer) sits on the engine and public API of
  ``dgamix.mixing``, which never imports it: a user's loop gets what the testbed gets.
- No import circle among dgamix's modules, counting imports made inside functions too.
"""
import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"dgamix": "dgamix", "pipeline": "dgamix.pipeline", "mixing": "dgamix.mixing", "cli": "dgamix.cli"}


def modules() -> dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules ``name`` imports (absolute names, functions' bodies included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, m, known) for m, p in mods.items()}


def test_no_generic_top_level_imports():
    """Nothing imports `pipeline`, `mixing` or `cli` by their folder names (the product, the tests and
    the benches alike): from the repository root those would be a second copy of the modules."""
    users = {m: p for m, p in modules().items()}
    users.update({".".join(p.relative_to(ROOT).with_suffix("").parts): p for d in ("tests", "bench")
                  for p in (ROOT / d).rglob("*.py") if p.name != "test_layout.py"})
    bad = {}
    for m, p in users.items():
        found = imports(p, m, set(users))
        source = p.read_text()
        patched = re.findall(r"[\"'](?:pipeline|mixing|cli)\.\w+\.\w+", source)  # mock.patch("pipeline.x.y")
        hits = sorted(i for i in found if i.split(".")[0] in ("pipeline", "mixing", "cli")) + patched
        if hits:
            bad[m] = hits
    assert not bad


def test_layers():
    g = graph()
    for m, deps in g.items():
        ours = {d for d in deps if d.startswith("dgamix.")}
        if m.startswith("dgamix.pipeline.core"):
            assert ours <= {d for d in ours if d.startswith("dgamix.pipeline.core")} | {"dgamix"}, (m, ours)
        elif m.startswith("dgamix.mixing"):
            stage12 = {d for d in ours if d.startswith("dgamix.pipeline") and not d.startswith("dgamix.pipeline.core")}
            assert not stage12, (m, stage12)
            assert not {d for d in ours if d.startswith("dgamix.cli")}, m
            if not m.startswith("dgamix.mixing.testbed"):  # the engine never imports the testbed
                assert not {d for d in ours if d.startswith("dgamix.mixing.testbed")}, (m, ours)
        elif m.startswith("dgamix.pipeline"):
            assert not {d for d in ours if d.startswith(("dgamix.mixing", "dgamix.cli"))}, (m, ours)
    # the walk sees real edges: a stage-3 module reads manifests through the kernel
    assert "dgamix.pipeline.core.manifest" in g["dgamix.mixing.inputs"]
    assert "dgamix.pipeline.kmeans" in g["dgamix.pipeline.cluster"]
    assert "dgamix.mixing.online" in g["dgamix.mixing.testbed.trainer"]  # the testbed uses the engine


def test_no_import_circles():
    g = graph()
    g = {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    # a package's __init__ may re-export its own submodules; that is not a circle between layers
    cycles = [c for c in cycles if not all(x.startswith(c[0]) for x in c)]
    assert not cycles


@pytest.mark.slow
def test_wheel_installs_only_dgamix_and_imports_beside_a_users_pipeline(tmp_path):
    try:
        import setuptools  # noqa: F401 - the build backend, used without build isolation (offline)
    except ImportError:
        pytest.skip("needs setuptools in this environment to build the wheel offline")
    import shutil

    src, wheels = tmp_path / "src", tmp_path / "wheels"  # a copy: setuptools writes build/ beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *FOLDERS):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("dgamix-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"dgamix", wheel.name.split("-py")[0] + ".dist-info"}, tops
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, cwd=tmp_path)
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert not {"pipeline", "mixing", "cli"} & {p.name for p in site.iterdir()}
    entry = [ln for ln in (next(site.glob("dgamix-*.dist-info")) / "entry_points.txt").read_text().splitlines()
             if ln.startswith("dgamix")]
    assert entry == ["dgamix = dgamix.cli.main:app"]
    # a user's project with its own pipeline/ and mixing.py, where they run Python
    user = tmp_path / "project"
    (user / "pipeline").mkdir(parents=True)
    (user / "pipeline" / "__init__.py").write_text("MINE = True\n")
    (user / "mixing.py").write_text("MINE = True\n")
    code = ("import dgamix, dgamix.pipeline.core.manifest, dgamix.pipeline.cluster, dgamix.mixing.dga, "
            "dgamix.cli.main, pipeline, mixing; "
            "print(dgamix.__version__, dgamix.mixing.dga.__file__, dgamix.cli.main.__file__, pipeline.MINE, "
            "mixing.MINE)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=user, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    version, dga_file, cli_file, mine, mine2 = out.stdout.split()
    assert version == "0.1.0" and mine == mine2 == "True"
    assert dga_file.startswith(str(site)) and cli_file.startswith(str(site))
