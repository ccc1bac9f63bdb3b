"""Stage 2a: embed a target set with the workspace's encoder and split it reweight / holdout.

WS/targets/T/examples.parquet holds, per target example: example_id, id, group, split
("reweight" | "holdout"), n_tokens, text (target sets are small, so their text is kept for
the trainer) and embedding. Assignments of the examples under a clustering are computed on
demand and cached in WS/targets/T/<clusters>/assignments.parquet.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pyarrow as pa

from dgamix.pipeline.core import manifest, validate
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.models import model_fingerprint, trusted_model
from dgamix.pipeline.core.params import TargetConfig  # noqa: F401 - its home; `dgamix.pipeline.target.TargetConfig` too
from dgamix.pipeline.core.stage import run_stage
from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.corpus import CorpusSpec, load_corpus
from dgamix.pipeline.embed import embed_shard
from dgamix.pipeline.encoder import EmbedConfig, Encoder, check_int8_export, count_tokens, load_encoder
from dgamix.pipeline.kmeans import Tree
from dgamix.pipeline.vectors import (
    UserVectors,
    VectorFile,
    check_same_encoder,
    describe,
    identity,
    read_vectors,
    summary_line,
)

SPLITS = ("reweight", "holdout")


def workspace_encoder(ws: Workspace, model: str | None = None) -> EmbedConfig:
    """The encoder settings the corpus was embedded with, read from embeddings.parquet; the model is the
    packaged default or ``model``, a folder the user passed (never a path found in the metadata alone)."""
    meta = manifest.read_meta(ws.require(ws.embeddings, "dgamix embed CORPUS --workspace WS"), "embeddings")
    p = meta["params"]
    use = trusted_model(str(p["model"]), p.get("model_fingerprint"), model, str(ws.embeddings))
    cfg = EmbedConfig(model=use, max_seq_length=p["max_seq_length"], precision=p["precision"],
                      dtype=p.get("dtype", "float32"), batch_size=p.get("batch_size", 64))
    if p.get("model_fingerprint") not in (None, "fake") and model_fingerprint(cfg.model) != p["model_fingerprint"]:
        raise DgamixError(f"the model '{cfg.model}' on this machine differs from the one that embedded "
                          f"{ws.root} (weights changed); re-embed the corpus or restore the model.")
    return cfg


def check_options(cfg: TargetConfig) -> None:
    """--holdout in [0, 1) and --seed >= 0, checked before anything is read or written."""
    if not (isinstance(cfg.holdout, (int, float)) and 0 <= cfg.holdout < 1):
        raise DgamixError(f"--holdout {cfg.holdout} must be in [0, 1) (the fraction of examples held out, e.g. 0.2).")
    if not isinstance(cfg.seed, (int, np.integer)) or cfg.seed < 0:
        raise DgamixError(f"--seed {cfg.seed!r} must be an integer >= 0.")


def holdout_split(n: int, frac: float, seed: int) -> np.ndarray:
    """Split labels (n,) with round(frac * n) 'holdout' examples chosen by a seeded permutation."""
    check_options(TargetConfig(holdout=frac, seed=seed))
    n_hold = int(round(frac * n))
    if n - n_hold < 1:
        raise DgamixError(f"--holdout {frac} leaves no example for reweighting out of {n}; lower it.")
    split = np.full(n, SPLITS[0], dtype=object)
    split[np.random.default_rng(seed).permutation(n)[:n_hold]] = SPLITS[1]
    return split


def _group_columns(path: str, column: str) -> dict[str, pa.Array]:
    """Per input file of ``path``: its --group-column as strings (checked before anything is embedded)."""
    from dgamix.pipeline.core.sources import read_table
    from dgamix.pipeline.corpus import expand_inputs, label_column

    out = {}
    for f in expand_inputs([path]):
        table = read_table(f)
        if column not in table.column_names:
            raise DgamixError(f"{f} has no group column {column!r} (columns: {table.column_names}); "
                              f"pass --group-column NAME or leave it out.")
        out[str(f)] = label_column(table, column, f, "--group-column", "labels", kind="group column")
    return out


def _groups(base: pa.Table, by_file: dict[str, pa.Array]) -> pa.Array:
    """The group of every kept example, looked up by (source, row)."""
    sources, rows = base["source"].to_pylist(), base["row"].to_pylist()
    return pa.array([by_file[s][r].as_py() for s, r in zip(sources, rows)], pa.string())


def build_target(ws: Workspace, path: str, name: str, cfg: TargetConfig = TargetConfig(),
                 overwrite: bool = False, encoder=None, model: str | None = None) -> dict:
    """Embed target examples from ``path`` into WS/targets/<name>/examples.parquet; returns a summary.
    ``model``: the encoder's folder when the corpus was embedded with one other than the packaged default.
    With ``cfg.vectors`` the examples' own vectors are read (checked and L2-normalised like the
    corpus's, :mod:`dgamix.pipeline.vectors`) instead of encoding; they must be of the encoder the
    corpus's --vectors were (name and dimension), and a corpus embedded with --vectors needs them."""
    check_options(cfg)
    emb_params = manifest.read_meta(ws.require(ws.embeddings, "dgamix embed CORPUS --workspace WS"),
                                    "embeddings")["params"]
    user = UserVectors(cfg.vectors, cfg.vectors_encoder) if cfg.vectors is not None else None
    if user is None:
        check_same_encoder(emb_params, None, str(ws.root))
    else:  # the name is known before the file is read: refuse another encoder at once
        check_same_encoder(emb_params, {"encoder": user.encoder, "dim": identity(emb_params)["dim"]}, str(ws.root))
        VectorFile(user.path, cfg.id_column)  # its columns and type, before the examples are read
    enc_cfg = workspace_encoder(ws, model)
    by_file = _group_columns(path, cfg.group_column) if cfg.group_column else None
    base, stats = load_corpus([path], CorpusSpec(cfg.text_column, cfg.id_column))
    n = base.num_rows
    split = holdout_split(n, cfg.holdout, cfg.seed)  # checked before the encoder loads
    groups = _groups(base, by_file) if by_file is not None else pa.nulls(n, pa.string())
    vecs = rec = None
    if user is not None:
        vecs, rec = read_vectors(user, base["id"], cfg.id_column)
        check_same_encoder(emb_params, rec, str(ws.root))
    out = ws.target_dir(name) / "examples.parquet"
    params = {**asdict(cfg), "source": stats["files"], "encoder": asdict(enc_cfg)}
    if rec is not None:
        params["vectors_identity"] = {"encoder": rec["encoder"], "dim": rec["dim"]}
    fp = manifest.fingerprint(stats["checksums"], params, rec and rec["checksum"])
    if out.exists() and not overwrite and manifest.read_meta(out).get("inputs") == fp:
        return summarise(ws, name)
    exists = f"target '{name}' already exists in {ws.root} from other inputs; pass --overwrite or choose another --name."
    # --overwrite embeds into a staging folder: the complete old target stays until the new one is complete
    with run_stage(ws, f"target-{name}", [f"targets/{name}"], overwrite=overwrite, exists=exists) as st:
        out = st.ws.target_dir(name) / "examples.parquet"
        texts = stats["texts"].to_pylist()
        if vecs is not None:
            enc = Encoder(cfg=enc_cfg)  # its tokenizer only: n_tokens
            embedding = manifest.embedding_array(vecs, enc_cfg.dtype)
        else:
            enc = encoder or load_encoder(enc_cfg)
            if enc_cfg.precision == "int8":  # target and corpus vectors are compared: the same export
                check_int8_export(enc, enc_cfg, emb_params.get("int8_recipe"), texts, str(ws.embeddings),
                                  f"re-embed the corpus (`dgamix embed ... --workspace {ws.root} --overwrite`), then "
                                  f"rerun `dgamix target`.")
            embedding = embed_shard(enc, texts, np.arange(n), enc_cfg)["embedding"]
        table = pa.table({"example_id": pa.array(np.arange(n), pa.int64()), "id": base["id"], "group": groups,
                          "split": pa.array(split.tolist(), pa.string()),
                          "n_tokens": pa.array(count_tokens(enc, texts), pa.int64()),
                          "text": pa.array(texts, pa.large_string()), "embedding": embedding})
        built = {"encoder": validate.encoder_fingerprint(emb_params)}
        extra = {"skipped_empty": stats["skipped_empty"], "built_from": built}
        if rec is not None:
            extra["vectors"] = rec
        manifest.write(out, table, "target", params, fp, extra=extra)
    out = summarise(ws, name)
    if rec is not None:
        out["vectors"] = summary_line(rec)
    return out


def load_target(ws: Workspace, name: str) -> tuple[pa.Table, dict]:
    """(examples table, metadata) of target ``name``; a clear error naming `dgamix target` when
    absent or embedded with other settings than the corpus is now (dgamix.pipeline.core.validate),
    or with vectors of another encoder than the corpus's now (a corpus re-embedded with --vectors)."""
    meta = validate.target(ws, name)
    emb_params = validate.embeddings(ws)["params"]
    have = identity(emb_params)
    was = (meta.get("params") or {}).get("vectors_identity")
    if (was is not None or have["user"]) and (was is None or {**was, "user": True} != have):
        what = "dgamix's model" if was is None else describe({**was, "user": True})
        raise DgamixError(f"targets/{name} was embedded with {what} but {ws.root} is now embedded with "
                          f"{describe(have)}; rebuild it with `{validate.target_command(ws, name, meta.get('params', {}))}`"
                          f"{'' if have['user'] else ' without --vectors'}.")
    return manifest.read(validate.target_path(ws, name), "target")


def summarise(ws: Workspace, name: str) -> dict:
    t, meta = load_target(ws, name)
    split = t["split"].to_pylist()
    groups = t["group"].drop_null()
    return {"target": name, "examples": t.num_rows, "reweight": split.count("reweight"),
            "holdout": split.count("holdout"), "groups": len(set(groups.to_pylist())),
            "skipped_empty": meta.get("skipped_empty", 0), "path": str(ws.target_dir(name) / "examples.parquet")}


def target_assignments(ws: Workspace, target: str, clusters: str, tree: Tree | None = None) -> pa.Table:
    """example_id, split, group, level_1..level_L of the target under ``clusters`` (cached).

    The examples descend the same tree as the corpus. The cache in WS/targets/T/<clusters>/
    is rebuilt when the tree or the target changed (fingerprints in its metadata). ``tree``:
    the clustering's tree when the caller has loaded it already (at 262,144 leaves its
    centroids are 400 MB), else it is loaded here.
    """
    from dgamix.pipeline.cluster import load_tree

    examples, tmeta = load_target(ws, target)
    if tree is None:
        tree, _ = load_tree(ws, clusters)
    fp = manifest.fingerprint(tmeta.get("inputs"), tree.checksum())
    path = ws.target_dir(target) / clusters / "assignments.parquet"
    if path.exists() and manifest.read_meta(path).get("inputs") == fp:
        return manifest.read(path, "target-assignments")[0]
    x = manifest.embedding_matrix(examples["embedding"])
    if x.shape[1] != tree.dim:
        raise DgamixError(f"target '{target}' has {x.shape[1]}-d embeddings but clustering '{clusters}' has "
                          f"{tree.dim}-d centroids; embed the target with the workspace's model.")
    labels, _ = tree.descend(x)
    cols = {"example_id": examples["example_id"], "split": examples["split"], "group": examples["group"]}
    cols.update({f"level_{i + 1}": pa.array(labels[:, i], pa.int64()) for i in range(labels.shape[1])})
    table = pa.table(cols)
    manifest.write(path, table, "target-assignments", {"target": target, "clusters": clusters}, fp)
    return table
