"""The documentation: the README stays short and its links resolve, every docs page is in the site's
nav, no commit hash or dated run log is left in the prose, and the site builds strictly offline."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def nav_pages(nav) -> list[str]:
    """Every page file named in mkdocs.yml's nav (nested sections included)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def load_config() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 350


def test_readme_relative_links_resolve():
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert targets, "the README links to the docs"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing


def test_every_docs_page_is_in_the_nav():
    pages = set(nav_pages(load_config()["nav"]))
    files = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert files - pages == set()
    assert pages - files == set()


def test_changelog_exists_and_the_prose_has_no_commit_hashes_or_dates():
    changelog = ROOT / "CHANGELOG.md"
    assert changelog.is_file() and changelog.read_text().strip()
    hashlike = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
    dated = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    for path in [README, changelog, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        assert not hashlike.findall(text), path
        assert not dated.findall(text), path


@pytest.mark.slow  # a whole mkdocs build: 7-12 s on 2 busy cores
def test_site_builds_strictly_offline(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module} (pip install -e '.[dev]')")
    # a proxy that refuses every connection: a build that tried to fetch anything would fail
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("dgamix.mixing.online.OnlineMixture", "dgamix.mixing.dga.DGAConfig",
                 "dgamix.mixing.testbed.config.TrainConfig", "dgamix.pipeline.core.params.ClusterParams"):
        assert f'id="{name}"' in api, name
    for page in nav_pages(load_config()["nav"]):
        assert (tmp_path / "site" / (page[:-3] + "/index.html" if page != "index.md" else "index.html")).is_file()
