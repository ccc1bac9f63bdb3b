"""The command line: parse the options, then one regime (its runs, table and plot), the ablations
(Pareto plot), or one of the analyses that train nothing."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import __doc__ as DOC
from .analyses import persistence_report, source_share
from .params import DGA_OPTIONS, PROBE_EVAL_OPTIONS, TRAIN_OPTIONS, add_options
from .plots import pareto, plot
from .regimes import ABLATIONS, CLUSTERS, MINIPILE, REGIMES, RESULTS, ROOT, regime_of
from .runs import make_jobs, run_jobs, strip
from .stats import aggregate, table
from .workspace import prepare

COMMAND = "python -m bench.experiments.efficacy"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=COMMAND, description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", choices=sorted(REGIMES), default="a")
    ap.add_argument("--quick", action="store_true", help="regime a, seed 0, 60 steps, into efficacy-quick.json")
    ap.add_argument("--ablate", action="store_true", help="run the ABLATIONS list (1 seed) and draw the Pareto plot")
    ap.add_argument("--only", default="", help="with --ablate: comma-separated labels to run")
    ap.add_argument("--workspace", type=Path, default=ROOT / "ws" / "minipile")
    ap.add_argument("--pool", type=Path, default=MINIPILE / "pool.parquet")
    ap.add_argument("--targets", type=Path, default=MINIPILE / "targets")
    ap.add_argument("--mixers", default="", help="default: the regime's mixers")
    ap.add_argument("--basis-by", default="", help="regimes c / c-few: another basis builder for DGA (e.g. kmeans:8)")
    ap.add_argument("--temper", default="", help="regimes c*: DGA's bases tempered by these exponents (`dgamix basis "
                                                 "--temper`, e.g. 0,1,2; default: the regime's)")
    ap.add_argument("--target", default="", help="another target of --targets (default: the regime's, mmlu)")
    ap.add_argument("--seeds", default="0,1,2")
    # `dgamix train`'s options, with its defaults (TrainConfig, DGAConfig) but where params.BENCH says otherwise
    add_options(ap, TRAIN_OPTIONS)
    ap.add_argument("--tokens-per-domain", type=int, default=0, help="override the regime's budget (0 = regime's)")
    add_options(ap, DGA_OPTIONS)
    add_options(ap, PROBE_EVAL_OPTIONS)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--tag", default="eff", help="run-name prefix in WS/runs/")
    ap.add_argument("--reuse", action="store_true", help="read a finished run of WS/runs/ trained with the same "
                                                         "settings instead of training it again")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default bench/experiments/results/efficacy-<regime>.json)")
    ap.add_argument("--persistence", nargs="+", default=None, metavar="GLOB",
                    help="only report alignment_persistence of the finished runs WS/runs/GLOB (no training)")
    ap.add_argument("--source-share", default=None, metavar="BASIS",
                    help="only report, per row of WS/bases/BASIS, the share of drawn documents whose pool src is "
                         "--source (no training)")
    ap.add_argument("--source", default="mmlu", help="with --source-share: the pool src value to count")
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["protocol"]:  # the pre-registered protocol (protocol.py), its own options
        from .protocol import main as protocol_main

        return protocol_main(argv[1:])
    args = parser().parse_args(argv)
    if args.source_share:
        return source_share(args.workspace.resolve(), args.source_share, args.source)
    if args.persistence:
        return persistence_report(args.workspace.resolve(), args.persistence)
    if args.quick:
        args.regime, args.seeds, args.steps, args.eval_every = "a", "0", 60, 20
        args.tag = "quick" if args.tag == "eff" else args.tag  # not over the 300-step runs of the same names
        args.out = args.out or RESULTS / "efficacy-quick.json"
    if not args.pool.exists() and not (args.workspace / "embeddings.parquet").exists():
        print(f"skipped: the mini-Pile is not here ({args.pool}); it lives in ../shared/data/minipile, which a "
              f"user's clone has no copy of. Pass --pool and --targets to use another copy.")
        return None
    args.workspace = args.workspace.resolve()
    args.target_names = [args.target] if args.target else sorted({r["target"] for r in REGIMES.values()})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    log: list[str] = []
    prep = prepare(args, log)
    stem = "efficacy-ablations" if args.ablate else f"efficacy-{args.regime}" + (f"-{args.target}" if args.target else "")
    out = args.out or RESULTS / f"{stem}.json"
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"command": f"{COMMAND} " + " ".join(argv),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": [round(x, 2) for x in os.getloadavg()]},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "workspace": prep}
    if args.ablate:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        chosen = [a for a in ABLATIONS if not only or a[0] in only]
        jobs = [j for label, regime, over in chosen
                for j in make_jobs(args, regime, ["dga"], seeds[:1], log, label, over)]
        regimes = sorted({j["regime_name"] for j in jobs})
        ref_jobs = [j for rg in regimes for j in make_jobs(args, rg, [m for m in REGIMES[rg]["mixers"]
                                                                      if not m.startswith("dga")], seeds[:1], log)]
        runs = run_jobs(args, ref_jobs + jobs)
        refs = {rg: [r for r in runs[:len(ref_jobs)] if r["regime"] == rg] for rg in regimes}
        runs = runs[len(ref_jobs):]
        pareto(runs, refs, png, f"DGA ablations, seed {seeds[0]}, {args.steps} steps x {args.batch_size} windows "
                                f"of {args.context + 1}; one point per setting (defaults: eta {args.eta}, "
                                f"beta {args.ema_beta}, T_r {args.reweight_every}, normalise {args.normalise})")
        print("\n| setting | regime | target loss | general loss | weight TV (total / max step) |\n|---|---|---|---|---|")
        for rg, rs in refs.items():
            for r in rs:
                print(f"| {r['mixer']} (reference) | {rg} | {r['final_target']:.4f} | {r['final_general']:.4f} | - |")
        for r in runs:
            w = r["weights"]
            print(f"| {r['label']} | {r['regime']} | {r['final_target']:.4f} | {r['final_general']:.4f} | "
                  f"{w['tv_total']:.3f} / {w['tv_max_step']:.3f} |")
        res.update(runs=[strip(r) for r in runs], references={k: [strip(r) for r in v] for k, v in refs.items()})
    else:
        regime = regime_of(args, args.regime)
        mixers = [m.strip() for m in args.mixers.split(",") if m.strip()] or list(regime["mixers"])
        jobs = make_jobs(args, args.regime, mixers, seeds, log)
        print(f"\nregime {args.regime}: {len(jobs)} runs ({', '.join(mixers)} x seeds {seeds}); {args.steps} steps x "
              f"{args.batch_size} windows of {args.context + 1}; tokens per domain {jobs[0]['tpd'] or 'all'}; "
              f"{CLUSTERS} level {regime['level']}; target {regime['target']}", flush=True)
        runs = run_jobs(args, jobs)
        agg = aggregate(runs, mixers)
        print()
        print(table(agg))
        plot(runs, mixers, png, f"regime {args.regime}: target {regime['target']}, {CLUSTERS} level {regime['level']}, "
                                f"{jobs[0]['tpd'] or 'all'} tokens/domain, {args.steps} steps, seeds {seeds}; dga: "
                                f"eta {args.eta}, beta {args.ema_beta}, T_r {args.reweight_every}, {args.normalise}")
        res.update(aggregate=agg, table=table(agg), runs=[strip(r) for r in runs])
    res.update(stage_commands=log, seconds=time.perf_counter() - t0,
               plot=str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png))
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out} and {png} in {res['seconds']:.0f} s")
    return res
