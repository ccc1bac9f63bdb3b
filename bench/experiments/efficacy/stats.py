"""Statistics of the runs: mean +- sample std over seeds, differences paired by seed, weight movement."""
from __future__ import annotations

import numpy as np

from .regimes import STATIC_TEMPERED


def movement(weights: list[list[float]]) -> dict:
    """Total variation of a weight trajectory (rows = logged steps): sum and max of the
    step-to-step 0.5 |w_t - w_t-1|_1, and 0.5 |w_end - w_0|_1."""
    W = np.asarray(weights, dtype=np.float64)
    steps = 0.5 * np.abs(np.diff(W, axis=0)).sum(axis=1) if len(W) > 1 else np.zeros(1)
    return {"tv_total": float(steps.sum()), "tv_max_step": float(steps.max()),
            "tv_mean_step": float(steps.mean()), "start_to_end": float(0.5 * np.abs(W[-1] - W[0]).sum())}


def stats(v) -> dict:
    v = [float(x) for x in v]
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v}


def ms(s: dict, sign: bool = False) -> str:
    return f"{s['mean']:+.4f} ± {s['std']:.4f}" if sign else f"{s['mean']:.4f} ± {s['std']:.4f}"


def aggregate(runs: list[dict], mixers: list[str]) -> dict:
    """Per mixer: stats over seeds of its final losses, repetitions and weight movement, and its
    differences to IS, uniform and each static is-tG paired by seed."""
    agg = {}
    by = {m: sorted((r for r in runs if r["mixer"] == m), key=lambda r: r["seed"]) for m in mixers}
    statics = tuple(m for m in mixers if m.startswith(STATIC_TEMPERED))
    refs = {ref: {r["seed"]: r for r in by.get(ref, [])} for ref in ("is", "uniform", *statics)}
    for m, rs in by.items():
        if not rs:
            continue
        row = {k: stats([r[k] for r in rs]) for k in ("final_target", "final_general", "best_target", "max_epochs",
                                                       "mean_epochs", "repeated_draw_share", "seconds")}
        for ref, by_seed in refs.items():
            pairs = [(r, by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed and m != ref]
            if pairs:
                row[f"target_minus_{ref}"] = stats([a["final_target"] - b["final_target"] for a, b in pairs])
                row[f"general_minus_{ref}"] = stats([a["final_general"] - b["final_general"] for a, b in pairs])
        if rs[0]["weights"] is not None:
            for k in ("tv_total", "tv_max_step", "tv_mean_step", "start_to_end"):
                row[k] = stats([r["weights"][k] for r in rs])
            row["final_weights"] = dict(zip(rs[0]["weights"]["names"],
                                            np.mean([r["weights"]["weights"][-1] for r in rs], axis=0).tolist()))
        agg[m] = row
    return agg


def table(agg: dict) -> str:
    """aggregate's rows as a Markdown table."""
    statics = [m for m in agg if m.startswith(STATIC_TEMPERED)]
    head = ["mixer", "target loss", "general loss", "target − IS", "target − uniform",
            *(f"target − {m}" for m in statics), "epochs (mean / max)", "weight TV (total / max step)"]
    rows = []
    for m, a in agg.items():
        diffs = [a.get(f"target_minus_{ref}") for ref in ("is", "uniform", *statics)]
        rows.append([m, ms(a["final_target"]), ms(a["final_general"]), *("-" if d is None else ms(d, True) for d in diffs),
                     f"{a['mean_epochs']['mean']:.1f} / {a['max_epochs']['mean']:.0f}",
                     f"{a['tv_total']['mean']:.3f} / {a['tv_max_step']['mean']:.3f}" if "tv_total" in a else "-"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
