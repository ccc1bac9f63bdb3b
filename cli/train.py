"""`dgamix train`: train the reference LM on a mixture (uniform / natural / is / DGA / DoGE) (stage 3)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import WS_HELP, show, user_errors
from dgamix.mixing.dga import DEFAULT_EMA_BETA, DGAConfig
from dgamix.mixing.testbed.config import TrainConfig

_DGA = DGAConfig()  # the one home of DGA's defaults, and TrainConfig of the trainer's: the options show them
_T = TrainConfig()


@user_errors
def train(
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    clusters: str = typer.Option(..., help="Clustering name (a folder of WS/clusters/, see `dgamix cluster --list`)."),
    level: int = typer.Option(..., help="Tree level whose domains are mixed (1 = coarsest)."),
    target: str = typer.Option(..., help="Target name (WS/targets/T): 'reweight' examples drive the alignments, "
                                         "'holdout' examples give the target loss."),
    mixer: str = typer.Option(..., help="uniform | natural (cluster sizes) | is (static importance sampling, needs "
                                        "--basis; the recommended start, see docs/results.md) | dga | dga-noema "
                                        "(DGA without EMA) | doge."),
    name: str = typer.Option(..., "--name", help="Run name: outputs go to WS/runs/NAME/."),
    basis: Optional[str] = typer.Option(None, help="Basis name (WS/bases/B.parquet): dga/dga-noema/doge reweight its N "
                                                   "bases (distribution reweighting); without it they reweight the "
                                                   "domains. is: its basis named 'target' (else the first)."),
    steps: int = typer.Option(_T.steps, min=1, help="Training steps (optimiser updates)."),
    batch_size: int = typer.Option(_T.batch_size, min=1, help="Training windows per step (context+1 word pieces each, packed "
                                                   "from whole documents)."),
    lr: float = typer.Option(_T.lr, min=0.0, help="Peak learning rate (AdamW; linear warmup, then cosine decay to 10%)."),
    warmup: int = typer.Option(_T.warmup, min=0, help="Learning-rate warmup, in steps."),
    reweight_every: int = typer.Option(_DGA.reweight_every, min=1, help="Steps between DGA reweightings (T_r)."),
    reweight_start: int = typer.Option(_DGA.reweight_start, min=0, help="First step at which DGA may reweight (earlier steps keep the "
                                                       "initial weights; the default skips the lr warmup)."),
    eta: float = typer.Option(_DGA.eta, help="DGA step size, in 1 / alignment units (see --normalise)."),
    ema_beta: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="--mixer dga: EMA weight on the previous "
                                                                       f"weights (0 = no EMA, 1 = frozen) [default: "
                                                                       f"{DEFAULT_EMA_BETA}]; "
                                                                       "dga-noema runs with 0, the other mixers have no EMA."),
    normalise: str = typer.Option(_DGA.normalise, help="Alignment scale before the step: none (raw gradient dot "
                                                       "products) | cosine | mean_norm (divide by the mean probe norm "
                                                       "x target norm) | standardise (z-score over the update) | "
                                                       "shrink (z-score, then the mean over updates shrunk by its "
                                                       "standard error: steps only on alignments that persist)."),
    init: str = typer.Option(_DGA.init, help="DGA's starting weights: uniform | target (the mixture of the bases / "
                                             "domains that best explains the target's examples: where IS starts)."),
    clip: Optional[float] = typer.Option(_DGA.clip, min=0.0, help="Clip every alignment gradient to this L2 norm "
                                                                  "before the dot product (default: no clipping)."),
    align_params: Optional[str] = typer.Option(_DGA.align_params, help="Compare only the gradients of the parameters "
                                               "whose names match this regular expression (e.g. 'blocks\\.3\\.|ln_f' "
                                               "for the last block of the default 4-layer model: a shorter backward). "
                                               "Default: every parameter."),
    align_batch_size: int = typer.Option(_T.align_batch_size, min=1, help="Windows per basis/domain probe batch at each reweighting."),
    target_batch_size: int = typer.Option(_T.target_batch_size, min=1, help="Target windows per reweighting."),
    tokens_per_domain: Optional[int] = typer.Option(None, min=1, help="Limited-data budget: each domain keeps a seeded "
                                                                      "subset of its documents of at most this many "
                                                                      "tokens (encoder word pieces, all of which are "
                                                                      "trained on); repeats count as epochs."),
    eval_every: int = typer.Option(_T.eval_every, min=1, help="Steps between evaluations of the target / general / train losses."),
    eval_batches: int = typer.Option(_T.eval_batches, min=1, help="Evaluation set size, in batches of 32 windows, per split."),
    checkpoint_every: int = typer.Option(_T.checkpoint_every, min=0, help="Steps between checkpoints (0 = only at the end)."),
    context: int = typer.Option(_T.context, min=1, help="Word pieces per training window (model context)."),
    vocab_size: int = typer.Option(_T.vocab_size, min=1, help="Word pieces kept in the model's vocabulary (the most frequent "
                                                     "in the corpus; others become unk)."),
    d_model: int = typer.Option(_T.d_model, min=8, help="Model width."),
    n_layer: int = typer.Option(_T.n_layer, min=1, help="Transformer blocks."),
    seed: int = typer.Option(_T.seed, help="Seeds the model, the samplers and the target batches."),
    model: Optional[str] = typer.Option(None, "--model", help="The encoder folder the workspace was embedded with "
                                                               "(`dgamix embed --model PATH`), whose tokenizer the "
                                                               "run uses; a path found only in the workspace is never "
                                                               "loaded. Default: the packaged all-MiniLM-L6-v2."),
    device: str = typer.Option(_T.device, help="Torch device: cpu or cuda."),
    threads: int = typer.Option(_T.threads, min=0, help="Torch CPU threads (0 = torch's default); 1 is faster on a busy "
                                               "machine whose other cores are taken."),
    resume: bool = typer.Option(False, "--resume", help="Continue run NAME from its last checkpoint "
                                                        "(same parameters required)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run NAME."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train a small decoder-only LM on the mixture; writes WS/runs/NAME/{metrics,weights,repetitions}.parquet."""
    from dgamix.mixing.testbed.train import train_run
    from dgamix.pipeline.core.errors import DgamixError

    try:  # DGA's settings go into their one config; the trainer's into TrainConfig, which holds it
        dga = DGAConfig(eta=eta, ema_beta=ema_beta, reweight_every=reweight_every, reweight_start=reweight_start,
                        normalise=normalise, clip=clip or None, init=init, align_params=align_params)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, dga=dga,
                          align_batch_size=align_batch_size, target_batch_size=target_batch_size,
                          eval_every=eval_every, eval_batches=eval_batches, checkpoint_every=checkpoint_every,
                          tokens_per_domain=tokens_per_domain, seed=seed, device=device, threads=threads,
                          context=context, vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, model=model)
    except ValueError as e:
        raise DgamixError(f"invalid training option: {e}.") from None
    summary = train_run(workspace, clusters, level, target, mixer, basis, cfg, name, resume=resume,
                        overwrite=overwrite, quiet=quiet)
    show(summary)
