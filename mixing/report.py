"""`dgamix report`: plots and a markdown report of a workspace's clusterings and runs.

Pictures where a picture beats a table: cluster-size distributions per level, each run's
weight trajectory (stacked area, as Fig. 3 of the DGA paper), and the specialised (target)
and general held-out losses of all runs on one figure, so uniform vs IS vs DGA are side by side.
Losses (nats per token) are comparable only between runs with the same tokenizer and vocabulary
(``runlog.comparable_key`` of the model identity a run records): runs of different ones, or of an
unrecorded one, get one loss figure per group, and the report says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dgamix.mixing.runlog import comparable_key
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.stage import run_stage
from dgamix.pipeline.core.workspace import Workspace, valid_name

TOP = 8  # weight trajectories show the top entries by peak weight, the rest as "other"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def cluster_sizes_plot(ws: Workspace, clusters: str, out: Path) -> Path:
    """Histogram (log-x) of documents per domain at each level of a clustering."""
    plt = _plt()
    tree, meta = manifest.read(ws.tree(clusters), "tree", columns=["level", "size"])
    df = pl.from_arrow(tree).drop_nulls()
    levels = sorted(df["level"].unique().to_list())
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.2), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        s = df.filter(pl.col("level") == lv)["size"].to_numpy()
        s = s[s > 0]
        bins = np.logspace(0, np.log10(max(s.max(), 2)), 30)
        ax.hist(s, bins=bins, color="#4472c4")
        ax.set_xscale("log")
        ax.set_title(f"{clusters} level {lv}: {len(s)} domains")
        ax.set_xlabel("documents per domain")
        ax.set_ylabel("domains")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _run(ws: Workspace, run: str) -> tuple[pl.DataFrame, pl.DataFrame | None, dict]:
    d = ws.run_dir(run)
    if not (d / "metrics.parquet").exists():
        raise DgamixError(f"run '{run}' has no metrics in {d}; train it with `dgamix train --name {run}` first.")
    m, meta = manifest.read(d / "metrics.parquet")
    w = pl.from_arrow(manifest.read(d / "weights.parquet")[0]) if (d / "weights.parquet").exists() else None
    return pl.from_arrow(m), w, meta


def weights_plot(run: str, w: pl.DataFrame, out: Path) -> Path:
    """Stacked area of the weight trajectory: top entries by peak weight, the rest as 'other'."""
    plt = _plt()
    key = "basis" if "basis" in w.columns and w["basis"].null_count() < w.height else "domain"
    label = "name" if "name" in w.columns else key
    wide = w.pivot(on=key, index="step", values="weight", aggregate_function="first").sort("step").fill_null(0.0)
    cols = [c for c in wide.columns if c != "step"]
    x = wide["step"].to_numpy()
    y = wide.select(cols).to_numpy().T
    names = dict(w.select(pl.col(key).cast(pl.String), pl.col(label).cast(pl.String)).unique().iter_rows())
    order = np.argsort(-y.max(1))
    top = order[:TOP]
    stack = [y[i] for i in top] + ([y[order[TOP:]].sum(0)] if len(order) > TOP else [])
    labels = [f"{key} {cols[i]}" + (f" ({names.get(cols[i])})" if names.get(cols[i]) not in (None, cols[i]) else "")
              for i in top] + (["other"] if len(order) > TOP else [])
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.stackplot(x, *stack, labels=labels, step="post", alpha=0.9)
    ax.set_xlim(x.min(), x.max() if x.max() > x.min() else x.min() + 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("weight")
    ax.set_title(f"{run}: mixture weights")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def losses_plot(runs: dict[str, pl.DataFrame], out: Path) -> Path:
    """Target (specialised) and general held-out loss vs step, every run on the same axes."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, split, title in zip(axes, ("target", "general"), ("specialised loss (target holdout)", "general loss (corpus holdout)")):
        late = []  # losses after the first tenth of training: the runs differ there, not at step 0
        for run, m in runs.items():
            s = m.filter(pl.col("split") == split).sort("step")
            if s.height:
                ax.plot(s["step"], s["loss"], marker=".", label=run)
                late += s.filter(pl.col("step") >= 0.1 * s["step"].max())["loss"].to_list()
        if len(late) > 1:  # zoom on the end of training; the initial plunge is cut off
            lo, hi = min(late), max(late)
            pad = 0.05 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
            title += " (y zoomed after 10% of steps)"
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:  # e.g. a user's own loop that logged no held-out loss of this split
            ax.text(0.5, 0.5, f"no run logged a {split} loss", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def loss_groups(loaded: dict) -> list[tuple[tuple | None, list[str]]]:
    """Runs grouped by the vocabulary their losses are measured in (``comparable_key`` of the
    model identity in their metadata; None: not recorded), in order of first appearance."""
    groups: dict = {}
    for r, (_, _, meta) in loaded.items():
        groups.setdefault(comparable_key(meta.get("model")), []).append(r)
    return list(groups.items())


def describe(key: tuple | None) -> str:
    """A loss group in words."""
    if key is None:
        return "model not recorded (`OnlineMixture.write_run(..., model=model_identity(model, tokenizer))` records it)"
    tokenizer, vocab, vocabulary = key
    return f"tokenizer {tokenizer}, vocabulary of {vocab} tokens" + (f" ({vocabulary})" if vocabulary else "")


def write_report(ws: Workspace, runs: list[str] | None = None) -> Path:
    """Writes WS/report/*.png and WS/report/report.md; returns the markdown path."""
    clusters = ws.clusterings()
    if runs is None:
        runs = sorted(p.name for p in (ws.root / "runs").glob("*")
                      if valid_name(p.name) and (p / "metrics.parquet").exists()) if (ws.root / "runs").exists() else []
    if not clusters and not runs:
        raise DgamixError(f"nothing to report in {ws.root}: no clusterings or runs yet; run the stages first.")
    loaded = {r: _run(ws, r) for r in runs}  # every run readable before anything is written

    # the report folder is rebuilt whole and replaces the old one at the end, under the report's lock
    with run_stage(ws, "report", ["report"], replace_now=True) as st:
        out = st.ws.at("report")
        _write(ws, out, clusters, loaded)
    return ws.root / "report" / "report.md"


def _write(ws: Workspace, out: Path, clusters: list[str], loaded: dict) -> None:
    """report.md and its plots into the folder ``out``."""
    runs = list(loaded)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# dgamix report: {ws.root}", ""]
    if runs:
        groups = loss_groups(loaded)
        if len(groups) == 1:
            md += ["## Runs", "", "![losses](losses.png)", ""]
            losses_plot({r: m for r, (m, _, _) in loaded.items()}, out / "losses.png")
        else:  # nats per token of different vocabularies share no axis
            md += ["## Runs", "", f"The runs measure their losses with {len(groups)} different tokenizers or "
                   f"vocabularies, whose losses (nats/token) are not comparable: each group has its own loss plot.", ""]
            for i, (key, members) in enumerate(groups, 1):
                losses_plot({r: loaded[r][0] for r in members}, out / f"losses-{i}.png")
                md += [f"### Losses {i}: {describe(key)}", "", f"Runs: {', '.join(members)}.", "",
                       f"![losses {i}](losses-{i}.png)", ""]
        md += ["| run | trained by | mixer | steps | final target loss | final general loss | best target loss |",
               "|---|---|---|---|---|---|---|"]
        for r, (m, w, meta) in loaded.items():
            def final(split):
                s = m.filter(pl.col("split") == split).sort("step")
                return (f"{s['loss'][-1]:.4f}", f"{s['loss'].min():.4f}") if s.height else ("-", "-")
            (tl, tb), (gl, _) = final("target"), final("general")
            by = meta["params"].get("run_by", "dgamix train")  # OnlineMixture.write_run: "user loop"
            if meta.get("state", "complete") != "complete":  # the logs beside a checkpoint of a run still training
                by += " (partial: not finished)"
            md.append(f"| {r} | {by} | {meta['params'].get('mixer', '?')} | {m['step'].max()} | {tl} | {gl} | {tb} |")
        md.append("")
        for r, (m, w, meta) in loaded.items():
            if w is not None and w.height:
                weights_plot(r, w, out / f"weights-{r}.png")
                md += [f"### {r}", "", f"![weights of {r}](weights-{r}.png)", ""]
    if clusters:
        md += ["## Clusterings", ""]
        for c in clusters:
            cluster_sizes_plot(ws, c, out / f"clusters-{c}.png")
            md += [f"### {c}", "", f"![cluster sizes of {c}](clusters-{c}.png)", ""]
    (out / "report.md").write_text("\n".join(md) + "\n")
