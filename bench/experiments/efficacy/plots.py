"""Plots: loss curves and DGA's weights of one regime; the ablations' Pareto plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .regimes import COLOURS


def plot(runs: list[dict], mixers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dga_runs = [r for r in runs if r["mixer"] == "dga" and r["weights"]]
    fig, axes = plt.subplots(1, 3 if dga_runs else 2, figsize=(15 if dga_runs else 10, 4.2))
    for ax, split, label in ((axes[0], "target", "target loss (target holdout examples)"),
                             (axes[1], "general", "general loss (held-out pool documents)")):
        for m in mixers:
            rs = [r for r in runs if r["mixer"] == m]
            if not rs:
                continue
            steps = np.asarray(rs[0]["curves"][split]["step"])
            ys = np.asarray([r["curves"][split]["loss"] for r in rs])
            mean, std = ys.mean(0), ys.std(0)
            line, = ax.plot(steps, mean, label=f"{m} (n={len(rs)})", color=COLOURS.get(m), lw=1.8)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
        late = [v for r in runs for s, v in zip(r["curves"][split]["step"], r["curves"][split]["loss"])
                if s >= r["curves"][split]["step"][-1] // 3]
        if late:
            ax.set_ylim(min(late) - 0.05, max(late) + 0.1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / word piece)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if dga_runs:
        ax = axes[2]
        steps = dga_runs[0]["weights"]["steps"]
        W = np.mean([r["weights"]["weights"] for r in dga_runs], axis=0)   # (steps, N)
        top = np.argsort(-W.max(axis=0))[:8]
        names = dga_runs[0]["weights"]["names"]
        for j in top:
            ax.step(steps, W[:, j], where="post", label=str(names[j])[:24], lw=1.5)
        if W.shape[1] > 8:
            ax.step(steps, W[:, [j for j in range(W.shape[1]) if j not in set(top)]].sum(axis=1), where="post",
                    color="k", ls=":", label="all others")
        ax.set_xlabel("step")
        ax.set_ylabel("weight")
        ax.set_title(f"dga weights, {'top 8 of ' if W.shape[1] > 8 else 'all '}{W.shape[1]} (mean over seeds)",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pareto(runs: list[dict], refs: dict, path: Path, title: str) -> None:
    """Target loss vs general loss, one point per setting; the static mixers of the same regime as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(refs), figsize=(6.5 * len(refs), 5), squeeze=False)
    for ax, (regime, ref_runs) in zip(axes[0], refs.items()):
        for r in ref_runs:
            ax.scatter(r["final_general"], r["final_target"], marker="s", s=60, zorder=3,
                       color="k" if r["mixer"] == "uniform" else COLOURS.get(r["mixer"], "tab:blue"))
            ax.annotate(r["mixer"], (r["final_general"], r["final_target"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        for r in (r for r in runs if r["regime"] == regime):
            ax.scatter(r["final_general"], r["final_target"], color="tab:red", s=30, zorder=2)
            ax.annotate(r["label"], (r["final_general"], r["final_target"]), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
        ax.set_xlabel("general loss (held-out pool documents)")
        ax.set_ylabel("target loss (target holdout examples)")
        ax.set_title(f"regime {regime}: lower-left is better", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def protocol_plots(rep: dict, runs: list[dict], out: Path) -> list[Path]:
    """The protocol's figures: per regime, a Pareto plot of test target loss vs general loss (arm means with
    95% intervals, one panel per target, the unigram baseline as a line), and regime b's IS validation curves
    (every budget of the design grid and every seed of the chosen budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    targets = sorted({k.split(":")[1] for k in rep["tables"]}, key=lambda t: (t != "mmlu", t))
    for regime in ("a", "b"):
        fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4.2), squeeze=False)
        for ax, t in zip(axes[0], targets):
            tab = rep["tables"].get(f"{regime}:{t}", {}).get("arms", {})
            for arm, v in tab.items():
                ax.errorbar(v["general"]["mean"], v["target"]["mean"], xerr=v["general"]["ci95"],
                            yerr=v["target"]["ci95"], fmt="o", capsize=3, label=arm, color=COLOURS.get(arm))
            u = rep["unigram"][t]["mixture:uniform"]["test"]
            ax.axhline(u, color="k", ls=":", lw=1, label="unigram (uniform mixture)")
            ax.set_xlabel("general loss (held-out pool documents)")
            ax.set_ylabel(f"{t} test loss (nats / piece)")
            ax.set_title(f"regime {regime}: {t}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"pareto-{regime}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in runs:
        if r["regime"] == "b" and r["arm"] == "is" and r["target"] == "mmlu":
            c = r["curves"]["target"]
            ax.plot(c["step"], c["loss"], lw=1.2, label=f"IS, {r['epochs']} epochs, seed {r['seed']}")
    ax.set_xlabel("step")
    ax.set_ylabel("MMLU validation loss")
    ax.set_title("regime b: IS under a limited budget per domain", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "regime-b-is-curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths + [path]
