"""Property-based fuzz of every stage's user-input readers and of the CLI's option parsing.

Each random input either works or fails with a DgamixError whose message is ONE line (the CLI
prints it as `error: ...` and exits 2): never another exception, never a traceback, never a
write outside the workspace, never a changed earlier output (a failing command may only add
the workspace's `.lock-*` files).

The readers are fuzzed in-process with many examples (cheap); the CLI with fewer, on inputs
that fail before the encoder loads or on small pre-built workspaces. Examples are derandomised
so CI is reproducible.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dgamix.pipeline.embed  # noqa: F401 - imported before encoder_as patches them
import dgamix.pipeline.target  # noqa: F401
from dgamix.pipeline.cluster import parse_levels
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.sources import TextReader
from dgamix.pipeline.corpus import CorpusSpec, load_corpus
from tests.helpers import one_line_error, run_cli

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
CLI = settings(FAST, max_examples=20)


def one_line(msg: str) -> bool:
    return len(msg.splitlines()) == 1 and msg.strip() == msg and bool(msg)


# ---------------------------------------------------------------------------------------------
# Random values, rows and files

CONTROL = "".join(map(chr, range(0, 32))) + "\x7f\x85\u2028\u2029\ufeff"
words = st.lists(st.sampled_from(["alpha", "beta", "river", "stone", "café", "数学", "x"]), min_size=1,
                 max_size=8).map(" ".join)
texts = st.one_of(
    words, words, words,
    st.text(max_size=40),
    st.text(alphabet=CONTROL + " ab", max_size=20),
    st.sampled_from(["", " ", "\n\t ", "hello world", "é\u00e9\u0301", "\u2028x\u2029", "\ud800", "a\x00b",
                     "x" * 5000]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                    st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["a", "b", "text"]), inner,
                                                                       max_size=3)), max_leaves=6)
KEYS = ["text", "id", "topic", "group", "body", "", "Text"]
good_rows = st.one_of(st.fixed_dictionaries({"text": texts}, optional={"topic": st.sampled_from(["a", "b", None])}),
                      st.fixed_dictionaries({"text": texts, "id": st.uuids().map(str)},
                                            optional={"topic": st.sampled_from(["a", "b"])}))
rows = st.one_of(
    good_rows, good_rows, good_rows, good_rows,
    st.dictionaries(st.sampled_from(KEYS), values, max_size=5),
    st.fixed_dictionaries({"text": texts}, optional={"id": scalars, "topic": scalars}),
    st.fixed_dictionaries({"text": texts, "id": st.integers(0, 3)}),
    values,  # a JSON line that is not an object: list, number, string, null
)


@st.composite
def jsonl_bytes(draw) -> bytes:
    lines = []
    for row in draw(st.lists(rows, max_size=6)):
        kind = draw(st.sampled_from(["json"] * 6 + ["json_utf8"] * 3 + ["garbage", "blank"]))
        if kind == "garbage":
            lines.append(draw(st.sampled_from(["{", "not json", "{'a': 1}", "[1,", "NaN", "{\"text\": \"a\"} x"])))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", " ", "\t"])))
        else:
            lines.append(json.dumps(row, ensure_ascii=kind == "json"))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    encoding = draw(st.sampled_from(["utf-8"] * 16 + ["utf-8-sig", "utf-16", "latin-1", "raw"]))
    if encoding == "raw":
        return draw(st.binary(max_size=60))
    data = text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace")
    if draw(st.integers(0, 9)) == 0 and data:  # invalid UTF-8 somewhere
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9"])) + data[cut:]
    return data


def _column(draw, n: int) -> pa.Array:
    kind = draw(st.sampled_from(["string"] * 20 + ["large_string", "binary", "int", "float", "bool", "null",
                                                   "list", "struct", "dict", "mixed_null"]))
    if kind in ("string", "large_string", "mixed_null"):
        vals = draw(st.lists(st.one_of(st.none(), texts), min_size=n, max_size=n))
        return pa.array([v.encode("utf-8", "replace").decode() if v is not None else None for v in vals],
                        pa.large_string() if kind == "large_string" else pa.string())
    if kind == "binary":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=n, max_size=n)),
                        pa.binary())
    if kind == "int":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=n, max_size=n)), pa.int64())
    if kind == "float":
        return pa.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), pa.float64())
    if kind == "bool":
        return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), pa.bool_())
    if kind == "null":
        return pa.nulls(n)
    if kind == "list":
        return pa.array(draw(st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=n, max_size=n)))
    if kind == "struct":
        return pa.array([{"a": v} for v in draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))])
    words = draw(st.lists(st.sampled_from(["a b", "c", "d e f"]), min_size=n, max_size=n))
    return pa.array(words).dictionary_encode()


@st.composite
def parquet_table(draw) -> pa.Table:
    n = draw(st.integers(0, 5))
    names = draw(st.one_of(*[st.lists(st.sampled_from(KEYS[1:]), max_size=4, unique=True).map(lambda c: ["text", *c])] * 5,
                           st.lists(st.sampled_from(KEYS), max_size=4)))  # duplicate names too
    cols = [_column(draw, n) for _ in names]
    if "id" in names and draw(st.booleans()):  # mostly unique ids
        cols[names.index("id")] = pa.array([f"p{i}-{draw(st.integers(0, 10 ** 9))}" for i in range(n)])
    return pa.Table.from_arrays(cols, names=names)


@st.composite
def corpus_file(draw, folder: Path, stem: str) -> Path:
    """One random input file in ``folder``: .jsonl, .parquet, .txt or a truncated Parquet file."""
    kind = draw(st.sampled_from(["jsonl"] * 6 + ["parquet"] * 6 + ["txt"] * 4 + ["broken_parquet", "json"]))
    if kind in ("jsonl", "json"):
        path = folder / f"{stem}.{kind}"
        path.write_bytes(draw(jsonl_bytes()))
    elif kind == "txt":
        path = folder / f"{stem}.txt"
        text = draw(texts)
        encoding = draw(st.sampled_from(["utf-8"] * 12 + ["utf-8-sig", "utf-16", "latin-1", "raw"]))
        path.write_bytes(draw(st.binary(max_size=30)) if encoding == "raw"
                         else text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace"))
    else:
        path = folder / f"{stem}.parquet"
        pq.write_table(draw(parquet_table()), path)
        if kind == "broken_parquet":
            data = path.read_bytes()
            path.write_bytes(data[:draw(st.integers(0, max(0, len(data) - 1)))])
    return path


@st.composite
def corpus(draw, root: Path) -> list[Path]:
    """A list of inputs under ``root``: files, folders (with same-named files in sub-folders), or
    paths that do not exist."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(["file"] * 12 + ["folder"] * 4 + ["missing"]))
        if where == "missing":
            out.append(root / f"missing{i}.jsonl")
        elif where == "file":
            out.append(draw(corpus_file(root, f"f{i}")))
        else:
            folder = root / f"dir{i}"
            for sub in draw(st.lists(st.sampled_from(["", "a", "b/c"]), min_size=1, max_size=3)):  # same stems
                (folder / sub).mkdir(parents=True, exist_ok=True)
                draw(corpus_file(folder / sub, draw(st.sampled_from(["doc", "doc", "other"]))))
            folder.mkdir(parents=True, exist_ok=True)
            out.append(folder)
    return out


COLUMN_NAMES = st.sampled_from(["text", "id", "topic", "body", "missing", "", "a\nb", "source", "row"])
KEEP = st.sampled_from(["topic", "group", "id", "source", "row", "n_chars", "doc_id", "missing", "text"])
specs = st.one_of(
    st.just(CorpusSpec()), st.just(CorpusSpec()), st.just(CorpusSpec(keep_columns=("topic",))),
    st.builds(CorpusSpec, text_column=COLUMN_NAMES, id_column=COLUMN_NAMES,
              keep_columns=st.lists(KEEP, max_size=2).map(tuple)))


def check_loaded(docs: pa.Table, stats: dict, spec: CorpusSpec) -> None:
    """What load_corpus returns for any input it accepts."""
    n = docs.num_rows
    assert n >= 1 and stats["n_docs"] == n and len(stats["texts"]) == n
    assert docs.schema.field("id").type == pa.string() and docs["id"].null_count == 0
    assert len(set(docs["id"].to_pylist())) == n
    assert docs["source"].null_count == 0 and docs["row"].null_count == 0
    got = stats["texts"].to_pylist()
    assert all(isinstance(t, str) and t.strip() for t in got)
    assert docs["n_chars"].to_pylist() == [len(t) for t in got]
    for c in spec.keep_columns:
        assert c in docs.column_names
    # later stages read the text back from (source, row): it must be the same text
    back = TextReader(spec.text_column).read(docs["source"].to_pylist(), docs["row"].to_pylist())
    assert back == got


# ---------------------------------------------------------------------------------------------
# The readers, in-process

@pytest.mark.slow
@FAST
@given(data=st.data(), spec=specs)
def test_load_corpus_works_or_fails_with_one_line(tmp_path_factory, data, spec):
    root = tmp_path_factory.mktemp("c")
    paths = data.draw(corpus(root))
    try:
        docs, stats = load_corpus(paths, spec)
    except DgamixError as e:
        assert one_line(str(e)), str(e)
        return
    check_loaded(docs, stats, spec)


@pytest.mark.slow
@FAST
@given(levels=st.one_of(
    st.lists(st.one_of(st.integers(-3, 70), st.sampled_from(["", " ", "x", "3.0", "1e2", "+4", "٣", "2 2", "nan",
                                                                "9" * 30, "1_0", "\n2"])), max_size=5)
    .map(lambda xs: ",".join(map(str, xs))),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-2, 2 ** 70), st.floats(), st.booleans()), max_size=4)))
def test_parse_levels_works_or_fails_with_one_line(levels):
    try:
        out = parse_levels(levels)
    except DgamixError as e:
        assert one_line(str(e)), str(e)
        return
    assert out and all(isinstance(b, int) and b >= 2 for b in out) and math.prod(out) < 2 ** 62


# ---------------------------------------------------------------------------------------------
# The CLI: one line `error: ...` and exit 2, nothing outside the workspace written, earlier
# outputs unchanged

def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_cli(r, root: Path, ws: Path, before: dict[str, str]) -> bool:
    """A command either worked (True) or failed cleanly (False): exit 2, exactly one `error:` line
    (click's own rejections too), nothing in ``root`` changed but new .lock-* files in the workspace root."""
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.exception, r.output)
    if r.exit_code == 0:
        return True
    one_line_error(r)
    after = snapshot(root)
    lock_prefix = str(ws.relative_to(root) / ".lock-")
    added = {k for k in after if k not in before}
    assert all(k.startswith(lock_prefix) for k in added), (added, r.output)
    assert {k: v for k, v in after.items() if k in before} == before, r.output
    return False


def options(valid: dict[str, str], bad: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Valid option values with (mostly) one or two of them replaced by a random, often hostile, value."""
    @st.composite
    def draw_options(draw):
        out = dict(valid)
        for key in draw(st.lists(st.sampled_from(sorted(bad)), min_size=0, max_size=2, unique=True)):
            out[key] = str(draw(bad[key]))
        return [a for kv in out.items() for a in kv]
    return draw_options()


@contextmanager
def encoder_as(model):
    """dgamix.pipeline.embed/target.load_encoder returns ``model`` (or, for None, fails like a missing model)."""
    def load(cfg):
        if model is None:
            raise DgamixError("fuzz: the model is not loaded in this test.")
        return model
    with mock.patch("dgamix.pipeline.embed.load_encoder", load), mock.patch("dgamix.pipeline.target.load_encoder", load):
        yield


EMBED_OPTIONS = st.fixed_dictionaries({}, optional={
    "--text-column": COLUMN_NAMES, "--id-column": COLUMN_NAMES,
    "--keep-columns": st.sampled_from(["topic", "topic,group", ",", "id", "source", " topic ", "missing"]),
    "--batch-size": st.sampled_from(["-1", "0", "1", "x"]), "--shard-size": st.sampled_from(["0", "-5", "2"]),
    "--max-seq-length": st.sampled_from(["0", "1", "-1"]), "--dedup-threshold": st.sampled_from(["nan", "-1", "1.5", "0.5"]),
    "--precision": st.sampled_from(["fp8", "auto", "int8", "fp16", ""]), "--dtype": st.sampled_from(["float64", "float16"]),
    "--engine": st.sampled_from(["spark", "local"]), "--num-workers": st.sampled_from(["0", "-1"]),
})


@CLI
@given(data=st.data(), options=EMBED_OPTIONS)
def test_embed_cli_fails_cleanly_before_the_model(tmp_path_factory, data, options):
    root = tmp_path_factory.mktemp("e")
    paths = data.draw(corpus(root / "in"))
    ws = root / "ws"
    ws.mkdir()
    (ws / "earlier.parquet").write_bytes(b"an earlier output")
    before = snapshot(root)
    args = [a for kv in options.items() for a in kv]
    with encoder_as(None):  # every input that gets as far as the model fails there: nothing is embedded
        r = run_cli("embed", *paths, "--workspace", ws, "-q", *args)
    assert not check_cli(r, root, ws, before), r.output


@pytest.fixture(scope="module")
def blob_ws(tmp_path_factory):
    from tests.helpers import fake_workspace, sphere_blobs

    root = tmp_path_factory.mktemp("blobs")
    fake_workspace(root / "ws", sphere_blobs(60, 4, d=16, seed=1)[0], shard_size=25)
    return root


INTS = st.one_of(st.integers(-3, 3), st.sampled_from([2 ** 31, 2 ** 63, 2 ** 70, -(2 ** 63)]))


@CLI
@given(levels=st.one_of(st.sampled_from(["3,2", "2", "4", "70", "2,2,2,2,2,2,2", "0", "3,,2", "a", "1e2", " 3 ",
                                         "-2", "99999999999999999999,2"]),
                        st.text(alphabet="0123456789,-. x", max_size=8)),
       options=st.fixed_dictionaries({}, optional={"--seed": INTS, "--niter": INTS, "--max-points-per-centroid": INTS,
                                                   "--sample-memory": INTS, "--init": st.sampled_from(["random", "x"])}))
def test_cluster_cli_options(blob_ws, levels, options):
    ws = blob_ws / "ws"
    before = snapshot(blob_ws)
    args = [str(a) for kv in options.items() for a in kv]
    r = run_cli("cluster", "--workspace", ws, "--levels", levels, "--name", "fz", "--overwrite", "-q", *args)
    if check_cli(r, blob_ws, ws, before):
        check_clustering(ws / "clusters" / "fz", list(parse_levels(levels)), n_docs=60)
        shutil.rmtree(ws / "clusters" / "fz")


def check_clustering(folder: Path, levels: list[int], n_docs: int) -> None:
    """What a successful `dgamix cluster` wrote: a tree with one level per branching factor, and
    every document assigned once at every level, to a node of that level whose parent is the
    document's node one level up; the tree's sizes count the assigned documents."""
    import polars as pl

    from dgamix.pipeline.core import manifest

    tree = pl.read_parquet(folder / "tree.parquet")
    assert manifest.read_meta(folder / "tree.parquet", "tree")["params"]["levels"] == levels
    assert sorted(tree["level"].unique().to_list()) == list(range(1, len(levels) + 1))
    a = pl.read_parquet(folder / "assignments" / "*.parquet").sort("doc_id")
    assert a["doc_id"].to_list() == list(range(n_docs))
    parent = {(lv, d): p for lv, d, p in tree.select("level", "domain", "parent").iter_rows()}
    for lv in range(1, len(levels) + 1):
        col = a[f"level_{lv}"].to_list()
        assert all((lv, d) in parent for d in col), (lv, col)
        up = a[f"level_{lv - 1}"].to_list() if lv > 1 else [-1] * n_docs
        assert [parent[(lv, d)] for d in col] == up
        sizes = {d: s for d, s in tree.filter(pl.col("level") == lv).select("domain", "size").iter_rows()}
        counts = {d: col.count(d) for d in set(col)}
        assert {d: s for d, s in sizes.items() if s} == counts, (lv, sizes, counts)


@pytest.fixture(scope="module")
def ws_copy(real_ws, tmp_path_factory):
    """A private copy of the session's real workspace (this module writes targets and bases into it)."""
    root = tmp_path_factory.mktemp("fuzzws")
    shutil.copytree(real_ws, root / "ws")
    return root


@st.composite
def target_file(draw, folder: Path) -> Path:
    """A small target file: mostly good rows with a group column, sometimes hostile ones."""
    n = draw(st.integers(1, 6))
    good = [{"id": f"t{i}", "text": draw(words), "subject": draw(st.sampled_from(["a", "b", None, 1]))}
            for i in range(n)]
    path = folder / f"t{draw(st.integers(0, 10 ** 6))}.jsonl"
    if draw(st.integers(0, 3)):
        if draw(st.booleans()):
            for row in good:
                row["subject"] = str(row["subject"]) if row["subject"] is not None else None
        lines = [json.dumps(r) for r in good]
    else:
        lines = [json.dumps(draw(rows)) for _ in range(n)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.slow
@CLI
@given(data=st.data(), args=options({"--holdout": "0.2", "--group-column": "subject"}, {
    "--holdout": st.sampled_from(["nan", "inf", "-inf", "-0.1", "1", "0", "0.5", "0.99", "1e-300", "x"]),
    "--seed": INTS,
    "--text-column": st.sampled_from(["text", "subject", "missing", "id"]),
    "--id-column": st.sampled_from(["id", "missing", "subject", "text"]),
    "--group-column": st.sampled_from(["subject", "missing", "id", "source", "text", "row"])}))
def test_target_cli_inputs_and_options(ws_copy, encoder, data, args):
    ws = ws_copy / "ws"
    src = ws_copy / "in"
    src.mkdir(exist_ok=True)
    path = data.draw(target_file(src))
    before = snapshot(ws_copy)
    with encoder_as(encoder):
        r = run_cli("target", path, "--workspace", ws, "--name", "fz", "--overwrite", *args)
    if check_cli(r, ws_copy, ws, before):
        import polars as pl

        ex = pl.read_parquet(ws / "targets" / "fz" / "examples.parquet")
        assert ex["id"].n_unique() == ex.height >= 1 and ex.filter(pl.col("split") == "reweight").height >= 1


@pytest.mark.slow
@CLI
@given(args=options({"--by": "single", "--level": "2", "--target": "recipes"}, {
    "--by": st.sampled_from(["single", "group", "levels", "kmeans:2", "kmeans:0", "kmeans:x", "kmeans:", "kmeans:10**9",
                             "bogus", "", "kmeans:-1", "Single", "kmeans:99999999999999999999"]),
    "--level": st.sampled_from(["1", "2", "0", "3", "-1"]), "--target": st.sampled_from(["gsm8k", "recipes"]),
    "--generic": st.sampled_from(["natural", "uniform", "none", "x"]),
    "--smoothing": st.sampled_from(["nan", "inf", "-inf", "-1", "0", "0.5", "1e308", "-0.0"]),
    "--seed": INTS, "--pocket-min": st.sampled_from(["-1", "0", "5", "x"]),
    "--temper": st.sampled_from(["0", "0,1", "8", "8.5", "-1", "nan", "1,1", "x", ""])}))
def test_basis_cli_options(ws_copy, args):
    ws = ws_copy / "ws"
    before = snapshot(ws_copy)
    r = run_cli("basis", "--workspace", ws, "--clusters", "k3x2", "--name", "fz", "--overwrite", *args)
    if check_cli(r, ws_copy, ws, before):
        import polars as pl

        b = pl.read_parquet(ws / "bases" / "fz.parquet")
        w = b["weight"].to_numpy()
        assert np.isfinite(w).all() and (w > 0).all()
        for _, g in b.group_by("basis"):
            assert abs(g["weight"].sum() - 1) < 1e-9


@pytest.mark.slow
@CLI
@given(args=options({"--steps": "3", "--batch-size": "4", "--level": "2", "--mixer": "natural"}, {
    # not fuzzed: huge --steps / --batch-size (e.g. 2**40): export_schedule allocates steps x batch-size rows
    # without a bound (mixing/schedule.py, not part of this fix; see the report)
    "--steps": st.sampled_from(["0", "-1", "1", "3", "x"]),
    "--batch-size": st.sampled_from(["-1", "0", "1", "4"]),
    "--level": st.sampled_from(["1", "2", "0", "9", "-1"]), "--mixer": st.sampled_from(["uniform", "natural", "dga", "x"]),
    "--seed": INTS}))
def test_schedule_cli_numeric_options(ws_copy, args):
    ws = ws_copy / "ws"
    before = snapshot(ws_copy)
    r = run_cli("schedule", "--workspace", ws, "--clusters", "k3x2", "--name", "fz", "--overwrite", *args)
    if check_cli(r, ws_copy, ws, before):
        import polars as pl

        opts = dict(zip(args[::2], args[1::2]))
        steps, batch, level = int(opts["--steps"]), int(opts["--batch-size"]), int(opts["--level"])
        s = pl.read_parquet(ws / "schedules" / "fz.parquet")
        # one row per (step, position), each a real document with its domain at --level and its id
        assert sorted(zip(s["step"].to_list(), s["position"].to_list())) == \
            [(i, j) for i in range(steps) for j in range(batch)]
        a = pl.read_parquet(ws / "clusters" / "k3x2" / "assignments" / "*.parquet")
        domain = dict(zip(a["doc_id"].to_list(), a[f"level_{level}"].to_list()))
        docs = pl.read_parquet(ws / "docs.parquet")
        ids = dict(zip(docs["doc_id"].to_list(), docs["id"].to_list()))
        assert all(domain[d] == c and ids[d] == i for d, c, i in s.select("doc_id", "domain", "id").iter_rows())


def test_usage_errors_are_one_line():
    """click's own rejections (missing option, value out of range, unknown option or command) are one
    `error:` line with exit 2, like every dgamix error; help still prints help."""
    for args, needle in ((("train",), "Missing option '--workspace'"),
                         (("train", "--workspace", "w", "--clusters", "c", "--level", "1", "--target", "t",
                           "--mixer", "uniform", "--name", "r", "--steps", "0"), "Invalid value for '--steps'"),
                         (("train", "--bogus"), "No such option: --bogus"),
                         (("nosuch",), "No such command 'nosuch'")):
        one_line_error(run_cli(*args), needle)
    r = run_cli("train", "--help")
    assert r.exit_code == 0 and "--ema-beta" in r.output


def test_schedule_sizes_are_bounded(tmp_path):
    """--steps 2**63 used to run for ever (10 minutes at 1.2 GB and growing when it was stopped)."""
    for steps, batch in ((2 ** 63, 2), (10, 2 ** 40)):
        r = run_cli("schedule", "--workspace", tmp_path / "ws", "--clusters", "c", "--level", 1, "--mixer", "uniform",
                    "--steps", steps, "--batch-size", batch, "--name", "s")
        one_line_error(r, "more than a schedule holds")
    assert not (tmp_path / "ws").exists()
