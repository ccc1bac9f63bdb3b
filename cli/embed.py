"""`dgamix embed`: corpus files -> docs.parquet + embeddings (stage 1a)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import (
    ENGINE_HELP,
    GPUS_HELP,
    NUM_WORKERS_HELP,
    RAY_ADDRESS_HELP,
    WS_HELP,
    engine_config,
    show,
    split_csv,
    user_errors,
)
from dgamix.pipeline.corpus import CorpusSpec
from dgamix.pipeline.dedup import DedupConfig
from dgamix.pipeline.encoder import EMBED_STAGE
from dgamix.pipeline.engine import LOCAL
from dgamix.pipeline.vectors import UserVectors

_E, _S, _D, _V = EMBED_STAGE, CorpusSpec(), DedupConfig(), UserVectors("")  # the one home of the defaults shown below


@user_errors
def embed(
    corpus: list[Path] = typer.Argument(..., help="Corpus files or folders: .parquet, .jsonl / .json / .ndjson (also gzip "
                                        ".gz or zstd .zst compressed), .arrow, a Hugging Face dataset saved with "
                                        "save_to_disk, or .txt files (one document per file). A folder is read "
                                        "recursively in sorted path order, each file one source."),
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    text_column: str = typer.Option(_S.text_column, help="Column holding the document text."),
    id_column: str = typer.Option(_S.id_column, help="Column holding your document ids (generated as <file>:<row> when absent)."),
    keep_columns: Optional[str] = typer.Option(None, help="Comma-separated input columns to carry into docs.parquet (e.g. topic)."),
    text_store: bool = typer.Option(_S.text_store, "--text-store/--no-text-store",
                                    help="Copy the texts of Parquet and JSON Lines inputs once into WS/texts/, indexed "
                                    "by row, so that training reads any document in one disk read without holding "
                                    "text in memory. Disk: about the uncompressed text (the summary prints MiB). "
                                    "Without it training reads the input files in place (whole text columns, kept "
                                    "in a 1 GiB cache per process). Compressed JSON Lines is always copied."),
    dedup: bool = typer.Option(_D is not None, "--dedup/--no-dedup", help="Mark near-duplicates (MinHash LSH on word 5-shingles) and skip them."),
    dedup_threshold: float = typer.Option(_D.threshold, min=0.0, max=1.0, help="Jaccard similarity at which two documents are near-duplicates."),
    vectors: Optional[Path] = typer.Option(None, help="Your own vectors instead of encoding: a Parquet file with the "
                                           "--id-column and a 'vector' column (list of float32/float16, one dimension), "
                                           "a vector for every document (extra ids are ignored). dgamix L2-normalises "
                                           "every vector and prints how many were not of unit norm; NaN/infinite or "
                                           "all-zero vectors are refused. --model then only tokenises (n_tokens); "
                                           "targets need --vectors of the same encoder."),
    vectors_encoder: str = typer.Option(_V.encoder, help="Name of the model that made --vectors, recorded in the "
                                        "workspace; a target's --vectors must name the same."),
    model: str = typer.Option(_E.model, help="sentence-transformers model name or local path; the default is packaged (offline)."),
    max_seq_length: int = typer.Option(_E.max_seq_length, min=1, help="Word pieces per document seen by the encoder; longer documents are truncated."),
    batch_size: int = typer.Option(_E.batch_size, min=1, help="Documents per forward pass."),
    shard_size: int = typer.Option(_E.shard_size, min=1, help="Documents per embeddings part file (the unit of resume)."),
    precision: str = typer.Option(_E.precision, help="Encoder arithmetic: fp32 (torch); bf16 (torch autocast; fast only on GPUs and CPUs "
                                  "with bf16 units); int8 (ONNX Runtime, dynamic per-channel quantisation, CPU; needs "
                                  "`pip install onnxruntime onnx`, exported once and cached); fp16 (torch autocast "
                                  "float16, --device cuda only); auto (the fastest that keeps "
                                  "mean cosine >= 0.99 to fp32 on a sample of the corpus; measured once per machine, model and "
                                  "settings (the decision is cached in auto/ under $DGAMIX_CACHE, default ~/.cache/dgamix); "
                                  "under 1,000 documents after de-duplication: this machine's cached decision, else fp32 unmeasured; "
                                  "the summary prints which). The choice and its cosine are "
                                  "recorded in embeddings.parquet; pass fp32 for byte-identical reruns on other machines."),
    dtype: str = typer.Option(_E.dtype, help="Storage dtype of the vectors: float32 or float16."),
    device: str = typer.Option(_E.device, help="Torch device for the encoder: cpu or cuda (with --precision fp16: "
                               "autocast float16, the fast choice on GPUs)."),
    engine: str = typer.Option(LOCAL.name, help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help=RAY_ADDRESS_HELP),
    num_workers: Optional[int] = typer.Option(None, help=NUM_WORKERS_HELP),
    gpus_per_worker: float = typer.Option(LOCAL.gpus_per_worker, help=GPUS_HELP),
    overwrite: bool = typer.Option(False, help="Rebuild when the workspace holds a different corpus or parameters."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Embed a corpus: docs.parquet, embeddings/part-*.parquet and embeddings.parquet (or write your own
    --vectors there). Rerun to resume."""
    from dgamix.pipeline.core.workspace import Workspace
    from dgamix.pipeline.embed import embed_corpus
    from dgamix.pipeline.encoder import EmbedConfig
    from dgamix.pipeline.engine import require_device

    eng = engine_config(engine, ray_address, num_workers, gpus_per_worker, device)
    require_device(device)  # the driver loads the model on it too (token counts, precision check)
    spec = CorpusSpec(text_column, id_column, split_csv(keep_columns), text_store)
    cfg = EmbedConfig(model, max_seq_length, batch_size, shard_size, precision, dtype, device)
    user = UserVectors(str(vectors), vectors_encoder) if vectors is not None else None
    summary = embed_corpus(Workspace(workspace), [str(c) for c in corpus], spec, cfg,
                           DedupConfig(threshold=dedup_threshold) if dedup else None, overwrite, quiet, eng, user)
    show(summary)
