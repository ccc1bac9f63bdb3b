"""Stage 1a: embed the corpus, shard by shard, resumable.

`embed_shard` is the per-shard work (texts in -> Arrow shard out), a plain function that the
local loop here and a Ray actor pool (`ShardEmbedder`) both run. `embed_corpus` is the stage:
corpus files -> docs.parquet (+ near-duplicate marks) -> embeddings/part-NNNNN.parquet ->
embeddings.parquet. The encoder and its precision choice are `dgamix.pipeline.encoder`'s; the
precision used, its measured cosine to fp32 and the model fingerprint are recorded here in the
embeddings manifests, so a resumed run keeps them. ``auto``'s decision itself is remembered per
machine, model and settings outside the workspace (`precision.cached_decision`), so a new workspace
on the same machine does not measure again.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from dgamix.pipeline.core import files, manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.models import model_fingerprint
from dgamix.pipeline.core.progress import progress_bar
from dgamix.pipeline.core.sources import DocTexts, TextReader, TextRefs, portable_source
from dgamix.pipeline.core.stage import StageRun, run_stage
from dgamix.pipeline.core.textstore import SUFFIX
from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.corpus import CorpusSpec, load_corpus, scan_inputs
from dgamix.pipeline.dedup import DedupConfig, near_duplicates_sharded
from dgamix.pipeline.encoder import (
    CONCRETE,
    EMBED_STAGE,
    VALIDATION_DOCS,
    EmbedConfig,
    Encoder,
    _spread,
    check_int8_export,
    check_precision,
    count_tokens,
    encode,
    load_encoder,
    weights_fingerprint,
)
from dgamix.pipeline.engine import LOCAL, EngineConfig, map_shards, session, threads_per_worker
from dgamix.pipeline.precision import PrecisionReport, measure_precision, small_corpus_precision
from dgamix.pipeline.vectors import RowFile, UserVectors, VectorFile, record, summary_line

AUTO_MIN_DOCS = 1000        # embed stage: auto measures (exporting int8 if needed) from this many documents;
                            # below, this machine's cached decision is reused, else fp32 (see _auto_small_corpus)


def _auto_small_corpus(enc: Encoder, cfg: EmbedConfig, n_docs: int, sample: list[str]
                       ) -> tuple[PrecisionReport, str] | None:
    """``auto`` on fewer than AUTO_MIN_DOCS documents (None otherwise): (report, where the choice came
    from): this machine's cached decision when there is one, else fp32 without measuring (a one-off
    int8 export and measurement would not be repaid on so few documents)."""
    if cfg.precision != "auto" or n_docs >= AUTO_MIN_DOCS:
        return None
    rep = small_corpus_precision(enc, cfg, sample, n_docs, AUTO_MIN_DOCS)
    return rep, rep.cached or rep.skipped["all"]


def embed_shard(enc: Encoder, texts: list[str], doc_ids: np.ndarray, cfg: EmbedConfig, tick=None) -> pa.Table:
    """Per-shard work: texts of ``doc_ids`` -> table (doc_id int64, embedding fixed_size_list).

    The whole shard is tokenised once and length-bucketed globally (see ``encode``); ``tick(n)``
    is called after each batch so the progress bar moves within a shard.
    """
    emb = encode(enc, texts, cfg, tick)
    if not np.isfinite(emb).all():
        raise DgamixError(f"the encoder returned vectors that are not finite (NaN or infinite) for the shard "
                          f"starting at doc_id {doc_ids[0]}: the model's files may be corrupted, or --precision "
                          f"{cfg.precision} overflowed; reinstall the model or pass another --model, or try "
                          f"--precision fp32.")
    return pa.table({"doc_id": pa.array(doc_ids, pa.int64()), "embedding": manifest.embedding_array(emb, cfg.dtype)})


def _docs_table(base: pa.Table, dup_of: np.ndarray, n_tokens: np.ndarray, root: Path) -> pa.Table:
    n = base.num_rows
    # sources relative to the workspace where possible (sources.portable_source): a moved project still reads
    src = base["source"].combine_chunks().dictionary_encode()
    portable = pa.array([portable_source(s, root) for s in src.dictionary.to_pylist()], pa.string())
    source = portable.take(src.indices)
    cols = {"doc_id": pa.array(np.arange(n, dtype=np.int64)), "id": base["id"], "source": source,
            "row": base["row"], "n_chars": base["n_chars"], "n_tokens": pa.array(n_tokens, pa.int64()),
            "dup_of": pa.array(dup_of, pa.int64(), mask=dup_of < 0)}
    for c in base.column_names:
        cols.setdefault(c, base[c])
    return pa.table(cols)


# what the embed stage writes, relative to the workspace root (texts/: row-indexed copies of compressed inputs)
TEXTS = "texts"
OUTPUTS = ("docs.parquet", "embeddings.parquet", "embeddings", TEXTS)
EMBEDDING_OUTPUTS = ("embeddings.parquet", "embeddings")
VECTORS_PRECISION = "vectors"  # embeddings params' precision when the user's vectors were written (none computed)


def _same_or_replace(st: StageRun, path: Path, want: str, what: str, overwrite: bool, outputs: tuple[str, ...]
                     ) -> bool:
    """True when ``path`` exists and was made from the same inputs; under --overwrite a different one
    is replaced: ``outputs`` are staged from now on, the complete old ones kept until the end."""
    if not path.exists():
        return False
    try:
        have = manifest.read_meta(path).get("inputs")
    except DgamixError:
        if not overwrite:
            raise
        have = None
    if have == want:
        return True
    if not overwrite:
        raise DgamixError(f"{st.base.root} already holds {what} made from other inputs or parameters ({path}); "
                          f"pass --overwrite to rebuild it, or use another --workspace.")
    st.replace(outputs)
    return False


@dataclass
class ShardEmbedder:
    """The embed stage's shard work for :func:`dgamix.pipeline.engine.map_shards`.

    Called once per worker it returns ``work(job, tick)``, which embeds the job's texts with
    :func:`embed_shard` and writes the part atomically. Locally it reuses the driver's ``encoder``;
    a Ray actor loads its own (not pickled) and checks that it has the driver's weights.
    """

    cfg: EmbedConfig                # with the precision already resolved
    inputs: str                     # the embeddings fingerprint, recorded in every part
    params: dict                    # the embeddings params; int8_recipe / model_fingerprint are checked
    threads: int | None = None      # intra-op threads of a worker (None: all cores it may use)
    encoder: Encoder | None = None  # the driver's encoder (local engine)
    text_column: str = "text"       # of the corpus files the jobs' TextRefs point at
    reader: TextReader | None = None  # the driver's cached reader (local engine)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "encoder": None, "reader": None}

    def __call__(self):
        enc = self.encoder
        if enc is None:
            enc = load_encoder(self.cfg)
            if weights_fingerprint(enc, self.cfg) != self.params["model_fingerprint"]:
                raise DgamixError(f"the model '{self.cfg.model}' on this Ray node has other weights than on the "
                                  f"driver; install the same model on every node (or pass --model with a path on "
                                  f"shared storage).")
            enc.threads = self.threads
            if self.cfg.precision == "int8":  # before any shard: the driver checked its own export
                check_int8_export(enc, self.cfg, self.params.get("int8_recipe"), [], "the driver's workspace",
                                  "copy the driver's int8 cache (pipeline/onnx_int8.py) to every Ray node.")

        # a worker's cached reader: a file that is read whole (JSON Lines, large row groups) once, not per shard
        reader = self.reader or TextReader(self.text_column)

        def work(job: dict, tick=None) -> dict:
            texts = job["texts"].read(reader) if isinstance(job["texts"], TextRefs) else job["texts"]
            table = embed_shard(enc, texts, job["doc_ids"], self.cfg, tick)
            manifest.write(job["part"], table, "embeddings-part", job["params"], self.inputs)
            return {"rows": table.num_rows, "checksum": manifest.file_checksum(job["part"])}

        return work


def embed_corpus(ws: Workspace, inputs: list[str], spec: CorpusSpec = CorpusSpec(),
                 cfg: EmbedConfig = EMBED_STAGE, dedup: DedupConfig | None = DedupConfig(),
                 overwrite: bool = False, quiet: bool = False, engine: EngineConfig = LOCAL,
                 vectors: UserVectors | None = None) -> dict:
    """The embed stage. Returns a summary dict (docs, duplicates, empty, shards embedded/skipped,
    precision and where its choice came from, seconds of set-up before the shards and of the shards).

    The precision actually used (auto resolved), its cosine to fp32 on a validation sample of
    the corpus and the model fingerprint are recorded in the embeddings manifests' params; a
    rerun (resume) reuses the recorded choice instead of measuring again, and ``auto`` on a new
    workspace reuses this machine's cached decision (see ``precision.resolve_precision``). The
    shards still to do run on ``engine`` (see :mod:`dgamix.pipeline.engine`); the files do not
    depend on it.

    ``vectors``: your own vectors (:mod:`dgamix.pipeline.vectors`), checked and L2-normalised, are
    written as the embeddings parts instead of encoding; ``cfg.model``'s tokenizer still counts
    n_tokens and near-duplicates are still found on the texts. Parquet and JSON Lines inputs get a
    row-indexed copy of their texts in WS/texts/ (compressed ones always, others unless
    ``spec.text_store`` is off; ``text_copies_mib`` in the summary): training reads documents from it.
    """
    t0 = time.perf_counter()
    if vectors is None:
        check_precision(cfg.precision, cfg.device)
    engine.check()
    if cfg.shard_size < 1 or cfg.batch_size < 1 or cfg.max_seq_length < 1:
        raise DgamixError("--shard-size, --batch-size and --max-seq-length must be positive integers.")
    vfile = VectorFile(vectors.path, spec.id_column) if vectors is not None else None  # its columns: checked first
    base_ws = ws
    with run_stage(ws, "embed", OUTPUTS, overwrite=overwrite, replace_now=False) as st:
        scanned = scan_inputs(inputs)
        model_fp = model_fingerprint(cfg.model)  # of the tokenizer's model too (n_tokens; the trainer's pieces)
        # where training reads the texts (spec.text_store) does not change the documents: not in docs' identity
        docs_params = {"corpus": [str(f) for f in scanned.files],
                       **{k: v for k, v in asdict(spec).items() if k != "text_store"},
                       "dedup": asdict(dedup) if dedup else None, "tokenizer": model_fp}
        docs_fp = manifest.fingerprint(scanned.checksums, docs_params)
        same_docs = _same_or_replace(st, ws.docs, docs_fp, "a corpus", overwrite, OUTPUTS)
        if not same_docs:
            ws = st.ws  # embeddings of another corpus are void: all staged when replacing
            if not st.replacing and ws.embeddings.exists() and not overwrite:
                raise DgamixError(f"{ws.root} holds embeddings but no docs.parquet; pass --overwrite to rebuild "
                                  f"them, or use another --workspace.")
        # the texts stay in their files: every shard's job reads its own (TextRefs), so the driver holds
        # at most one shard's texts and its reader's cache (files without a row index), not the corpus;
        # texts of Parquet / JSON Lines files are copied to WS/texts/ with a row index while read here
        if st.replacing:  # made again even if empty, so that it replaces the old copies
            files.make_dir(ws.at(TEXTS), base_ws.root)
        base, stats = load_corpus(inputs, spec, keep_texts=False, scanned=scanned, copies=ws.at(TEXTS))
        copies = {portable_source(src, base_ws.root): f"{TEXTS}/{Path(copy).name}"
                  for src, copy in stats["copies"].items()}
        if not same_docs:  # a run that fails before docs.parquet names them leaves none behind
            st.discard_on_failure(stats["copies_written"])
        corpus = DocTexts.of_table(base, spec.text_column, group_rows=2 * cfg.shard_size, stamps=stats["stamps"],
                                   copies=stats["copies"])
        n = base.num_rows
        user = None
        if vfile is not None:  # every vector checked before the near-duplicate pass and the parts
            user = _user_vectors(base_ws, vfile, vectors, base["id"])
            st.discard_on_failure([user["path"]])
        if vectors is not None:
            enc = Encoder(cfg=cfg)  # its tokenizer only (no model is run)
            enc.fingerprint = (cfg.model, model_fp)
        else:
            enc = load_encoder(cfg)
            enc.fingerprint = (cfg.model, model_fp)  # kept on the encoder: the int8 cache key reuses it

        if same_docs:
            docs, meta = manifest.read(ws.docs, "docs")
            if meta.get("text_copies") != copies:  # the text store turned on or off, or an older version's copies
                manifest.write(ws.docs, docs, "docs", docs_params, docs_fp,
                               extra={"skipped_empty": meta.get("skipped_empty", 0), "text_column": spec.text_column,
                                      "text_copies": copies})
        else:
            if not st.replacing:  # parts of an interrupted first run, or embeddings replaced under --overwrite
                for p in (ws.embeddings, ws.embeddings_dir):
                    files.remove(p, ws.root)
            refs = [corpus.refs(np.arange(i, min(i + cfg.shard_size, n))) for i in range(0, n, cfg.shard_size)]
            with progress_bar("dedup", n, quiet) as tick:
                dup_of = _near_duplicates(ws, refs, corpus.reader, n, dedup, engine, tick)
            n_tokens = np.concatenate([count_tokens(enc, r.read(corpus.reader)) for r in refs]) \
                if n else np.zeros(0, np.int64)
            docs = _docs_table(base, dup_of, n_tokens, ws.root)
            manifest.write(ws.docs, docs, "docs", docs_params, docs_fp,
                           extra={"skipped_empty": stats["skipped_empty"], "text_column": spec.text_column,
                                  "text_copies": copies})
            st.keep(stats["copies_written"])  # named by docs.parquet now: a later failure keeps them
        _drop_stale_copies(ws, stats["copies"])

        kept = np.asarray(docs["doc_id"])[np.asarray(docs["dup_of"].is_null())]
        if user is not None:
            run_cfg, emb_params, emb_fp = cfg, *_vector_params(cfg, model_fp, docs_fp, user["record"])
        else:
            rep, source, run_cfg, emb_params, emb_fp = _encoder_params(ws, cfg, enc, model_fp, docs_fp, corpus,
                                                                       kept, overwrite)
        recorded = _recorded_checksums(ws, emb_fp)
        _same_or_replace(st, ws.embeddings, emb_fp, "embeddings", overwrite, EMBEDDING_OUTPUTS)
        ws = st.ws

        shards = [kept[i:i + cfg.shard_size] for i in range(0, len(kept), cfg.shard_size)]
        rows, jobs, skipped = [], [], 0
        t1 = time.perf_counter()
        with progress_bar("embed", len(kept), quiet, unit="docs") as tick:
            for s, ids in enumerate(shards):
                part = ws.embedding_part(s)
                shard_params = {"shard": s, "first_doc_id": int(ids[0]), "last_doc_id": int(ids[-1]), "rows": len(ids)}
                rows.append({**shard_params, "path": ws.relative(part)})
                if part.exists() and _part_is_complete(part, emb_fp, shard_params, overwrite, recorded.get(s)):
                    skipped += 1
                    tick(len(ids))
                else:  # absolute paths: a Ray actor may run in another folder (or on another node)
                    jobs.append({"part": str(part.absolute()), "texts": corpus.refs(ids), "doc_ids": ids,
                                 "params": {**emb_params, **shard_params}})
            if user is not None:  # the vectors are there already: each part is written here
                for job in jobs:
                    table = pa.table({"doc_id": pa.array(job["doc_ids"], pa.int64()),
                                      "embedding": manifest.embedding_array(user["matrix"][job["doc_ids"]], cfg.dtype)})
                    manifest.write(job["part"], table, "embeddings-part", job["params"], emb_fp)
                    rows[job["params"]["shard"]]["checksum"] = manifest.file_checksum(job["part"])
                    tick(len(job["doc_ids"]))
            else:
                work = ShardEmbedder(run_cfg, emb_fp, emb_params,
                                     threads_per_worker(engine) if engine.is_ray else None,
                                     None if engine.is_ray else enc, spec.text_column, corpus.reader)
                with session(engine):
                    for k, res in enumerate(map_shards(work, jobs, engine, tick,
                                                       weight=lambda job: len(job["doc_ids"]))):
                        rows[jobs[k]["params"]["shard"]]["checksum"] = res["checksum"]  # read by the worker
        done, t2 = len(jobs), time.perf_counter()
        if user is not None:
            user["discard"]()
        for row in rows:
            if "checksum" not in row:  # a part kept from an earlier run, verified by _part_is_complete
                row["checksum"] = manifest.file_checksum(ws.embedding_part(row["shard"]))
        for stale in sorted(ws.embeddings_dir.glob("part-*.parquet"))[len(shards):]:
            files.remove(stale, ws.root)  # left by an earlier, larger corpus
        extra = {"n_docs": int(len(kept)), "built_from": {"docs": docs_fp}}
        manifest.write(ws.embeddings, pa.Table.from_pylist(rows), "embeddings", emb_params, emb_fp, extra=extra)
        n_dup = int(docs.num_rows - len(kept))
    out = {"workspace": str(base_ws.root), "docs": docs.num_rows, "embedded": int(len(kept)), "duplicates": n_dup,
           "skipped_empty": int(manifest.read_meta(base_ws.docs).get("skipped_empty", 0)),
           "shards": len(shards), "shards_embedded": done, "shards_skipped": skipped, "engine": engine.name}
    if stats["copies"]:
        out["text_copies"] = f"{len(stats['copies'])} files' texts, row-indexed, in {base_ws.root / TEXTS}"
        out["text_copies_mib"] = round(stats["copy_bytes"] / 2**20, 1)
    if user is not None:
        out["vectors"] = summary_line(user["record"])
    else:
        out.update({"precision": rep.precision, "precision_cosine_mean": round(rep.cosine_mean, 4),
                    "precision_source": source})
    out.update({"setup_s": round(t1 - t0, 1), "embed_s": round(t2 - t1, 1)})
    return out


def _encoder_params(ws: Workspace, cfg: EmbedConfig, enc: Encoder, model_fp: str, docs_fp: str, corpus: DocTexts,
                    kept: np.ndarray, overwrite: bool):
    """(precision report, where its choice came from, the run's config, embeddings params, their
    fingerprint) when the encoder makes the vectors: ``auto`` resolved as the module docstring says."""
    sample = corpus.refs(_spread(kept.tolist(), VALIDATION_DOCS)).read(corpus.reader)
    rep, source = _recorded_precision(ws, cfg, model_fp), "recorded in the workspace"
    if rep is None:
        rep, source = _auto_small_corpus(enc, cfg, len(kept), sample) or (None, source)
    if rep is None:  # auto: this machine's cached decision, else measured (precision.resolve_precision)
        rep = measure_precision(enc, cfg, sample, cfg.precision)
        source = "requested" if cfg.precision != "auto" else (
            rep.cached or f"measured on {rep.sample} documents in {rep.seconds:.1f} s"
            + (" (fp32 timed on its ONNX export)" if rep.fp32_runner == "onnx-export" else ""))
    elif rep.precision == "int8":  # recorded: is this dgamix's int8 export the one that made the parts?
        rep.recipe = check_int8_export(enc, cfg, None if overwrite else rep.recipe, sample,
                                       str(ws.embeddings_dir), "pass --overwrite to re-embed, or use another "
                                       "--workspace.")
    run_cfg = replace(cfg, precision=rep.precision)
    emb_params = {**asdict(run_cfg), "model_fingerprint": model_fp, "dim": enc.dim, "normalized": True}
    if rep.precision == "int8":
        emb_params["int8_recipe"] = rep.recipe
    emb_params.pop("device")  # the device does not change the vectors beyond float tolerance
    emb_fp = manifest.fingerprint(docs_fp, emb_params)  # of what makes the vectors, not of measurements
    emb_params.update(rep.params())
    if rep.choice():  # in every part too, so a resumed run records the same choice (not fingerprinted)
        emb_params["precision_choice"] = rep.choice()
    return rep, source, run_cfg, emb_params, emb_fp


def _vector_params(cfg: EmbedConfig, model_fp: str, docs_fp: str, record: dict) -> tuple[dict, str]:
    """(embeddings params, fingerprint) of user vectors: ``precision`` "vectors" (dgamix computed
    none), ``model`` the tokenizer's (n_tokens, the trainer's pieces), ``vectors`` their identity."""
    emb_params = {**asdict(cfg), "precision": VECTORS_PRECISION, "model_fingerprint": model_fp, "dim": record["dim"],
                  "normalized": True, "vectors": record}
    emb_params.pop("device")
    # of the vectors' bytes and identity, not of where the file lies
    return emb_params, manifest.fingerprint(docs_fp, {**emb_params, "vectors": {**record, "file": None}})


def _user_vectors(ws: Workspace, vfile: VectorFile, vectors: UserVectors, ids: pa.ChunkedArray) -> dict:
    """Every document's vector from ``vfile``, checked and normalised into a float32 :class:`RowFile`
    under WS/cache/ (disk: documents x dim x 4 bytes while the stage runs; memory: one batch;
    removed by ``discard``)."""
    rows = vfile.match(ids.combine_chunks())
    dim = vfile.dimension()
    folder = files.make_dir(ws.root / "cache", ws.root)
    for old in folder.glob(".vectors-*"):  # a killed run's (we hold the embed lock)
        files.remove(old, ws.root)
    path = folder / f".vectors-{uuid.uuid4().hex[:8]}.f32"
    matrix = None
    try:
        matrix = RowFile(path, rows.size, dim)
        renormalised = vfile.scatter(rows, matrix)
    except BaseException:
        if matrix is not None:
            matrix.close()
        files.discard(path)
        raise

    def discard() -> None:
        matrix.close()
        files.discard(path)
    return {"matrix": matrix, "path": path, "record": record(vfile, vectors, renormalised, rows.size),
            "discard": discard}


def _drop_stale_copies(ws: Workspace, used: dict[str, str]) -> None:
    """Remove copies in WS/texts/ of inputs no longer in the corpus (and Parquet copies of earlier versions)."""
    folder = ws.at(TEXTS)
    keep = {Path(p).name for p in used.values()}
    if folder.is_dir():
        for f in folder.iterdir():
            if f.name not in keep and f.suffix in (".parquet", SUFFIX):
                files.remove(f, ws.root)


class _ReadInTurn:
    """Shards' texts read by this process through ``reader`` as the engine asks for the next shard
    (locally one at a time; Ray keeps a bounded number of tasks in flight, see ``map_tasks``), each
    whole-read file read once per pass (the reader keeps it). With ``keep_cheap`` a shard whose
    files are indexed stays TextRefs: its Ray task reads its own rows."""

    def __init__(self, refs: list[TextRefs], reader: TextReader, keep_cheap: bool = False) -> None:
        self.refs, self.reader, self.keep_cheap = refs, reader, keep_cheap

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self):
        return (r if self.keep_cheap and r.cheap else r.read(self.reader) for r in self.refs)


def _near_duplicates(ws: Workspace, refs: list[TextRefs], reader: TextReader, n: int, dedup: DedupConfig | None,
                     engine: EngineConfig, tick) -> np.ndarray:
    """dup_of of each of the ``n`` documents (-1: kept): MinHash signatures per shard on ``engine``,
    written under WS/cache/ (shared storage on a cluster) and removed after. Locally the shards'
    texts are read in turn here; a Ray task reads its own shard's where that is cheap (indexed
    Parquet), else this process reads them for it (a task would read whole files, once per shard)."""
    if dedup is None:
        return np.full(n, -1, np.int64)
    shards = _ReadInTurn(refs, reader, keep_cheap=engine.is_ray)
    for old in (ws.root / "cache").glob(".dedup-*"):  # a killed run's signatures (we hold the embed lock)
        files.remove(old, ws.root)
    folder = (ws.root / "cache" / f".dedup-{uuid.uuid4().hex[:8]}").absolute()
    try:
        # its own engine session: a local Ray instance is gone again before auto times the precisions
        with session(engine):
            return near_duplicates_sharded(shards, dedup, folder, engine, tick)
    finally:
        files.discard(folder)


def _part_is_complete(part: Path, emb_fp: str, shard_params: dict, overwrite: bool, checksum: str | None) -> bool:
    """A part written atomically by a run with the same inputs and shard bounds is complete, if its
    bytes are intact: equal to the sha256 embeddings.parquet recorded, or (a part of an interrupted
    run, none recorded yet) readable with every page checksum verified. A damaged part is re-embedded."""
    try:
        meta = manifest.read_meta(part, "embeddings-part")
    except DgamixError:
        return False  # unreadable: rewrite it
    same = meta.get("inputs") == emb_fp and all(meta["params"].get(k) == v for k, v in shard_params.items())
    if not same and not overwrite:
        raise DgamixError(f"{part} was written with other parameters; pass --overwrite to re-embed.")
    if not same:
        return False
    if checksum is not None:
        return manifest.file_checksum(part) == checksum
    try:
        manifest.read(part, "embeddings-part")
    except DgamixError:
        return False
    return True


def _recorded_checksums(ws: Workspace, emb_fp: str) -> dict[int, str]:
    """shard -> sha256 that a complete embeddings.parquet of the same inputs recorded (else empty)."""
    try:
        table, meta = manifest.read(ws.embeddings, "embeddings")
    except DgamixError:
        return {}
    if meta.get("inputs") != emb_fp or "checksum" not in table.column_names:
        return {}
    return dict(zip(table["shard"].to_pylist(), table["checksum"].to_pylist()))


def _recorded_precision(ws: Workspace, cfg: EmbedConfig, model_fp: str) -> PrecisionReport | None:
    """The precision choice recorded by an earlier run on this workspace with the same request
    (any, for auto), model and sequence length (embeddings.parquet, else any finished part: Ray
    finishes parts out of order), so a rerun does not measure again and a resumed ``auto`` run
    cannot choose differently half-way."""
    for path in (ws.embeddings, *sorted(ws.embeddings_dir.glob("part-*.parquet"))):
        if not path.exists():
            continue
        try:
            p = manifest.read_meta(path)["params"]
        except (DgamixError, KeyError):
            continue
        # auto keeps whatever precision the workspace was embedded at, so a rerun or resume of a
        # workspace made with an explicit precision (or the older fp32 default) does not switch
        same = (p.get("precision_requested") == cfg.precision or cfg.precision == "auto") and (
            p.get("model_fingerprint") == model_fp and p.get("max_seq_length") == cfg.max_seq_length
            and p.get("batch_size") == cfg.batch_size)
        if same and p.get("precision") in CONCRETE and "precision_cosine_mean" in p:
            choice = p.get("precision_choice") or {}
            return PrecisionReport(cfg.precision, p["precision"], p["precision_cosine_mean"], p["precision_cosine_min"],
                                   p.get("precision_sample", 0), p.get("int8_recipe"), choice.get("docs_per_s", {}),
                                   choice.get("cosine", {}), choice.get("skipped", {}), choice.get("cached"),
                                   fp32_runner=choice.get("fp32_runner", "torch"))
    return None
