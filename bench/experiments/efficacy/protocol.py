"""The pre-registered protocol of PROTOCOL.md, as one resumable command:

    python -m bench.experiments.efficacy protocol --out bench/experiments/results/protocol-a4 --jobs 2
    python -m bench.experiments.efficacy protocol --plan          # the runs and the time estimate only

Targets are split once, by the bench, with a fixed seed: ``test`` (TEST_SHARE of the rows, in
WS/splits/<t>-test.parquet, never in the workspace's target, so no mixer and no design choice can
see them), and the rest, which `dgamix target --holdout VAL_SHARE` splits into ``reweight`` (what
IS and DGA see) and ``holdout`` = validation (the in-run "target" curve). MMLU is the design
target: lambda, the regime-(b) budget and the choice between the DGA arms are made on its
validation split only. gsm8k and fables are the test targets; they are reported on their test
splits, evaluated after training from each run's final checkpoint (``final_losses``). Their
validation splits serve one check only (amendment 4): that uniform, which sees no target, learns
past unigram statistics on them too, for the testbed and for regime (b)'s budget.

Phases (each reuses every finished run whose stamp matches, see ``stamp``):
0. the testbed (``size``);
1. design grid on MMLU: the static mix lambda * IS + (1 - lambda) * natural for lambda in LAMBDAS
   (DESIGN_SEEDS seeds), and IS and uniform under the regime-(b) budgets of B_EPOCHS (seed 0);
2. regimes a and b: every arm x SEEDS x the three targets; uniform does not depend on the target,
   so one uniform run per seed (and regime) is evaluated on every target's test split;
3. tables (paired differences with 95% t-intervals), the primary criterion, plots, JSON.

Reuse: a run is read instead of trained only when its stamp (WS/runs/<name>/bench-stamp.json, or
the committed copy in <out>/runs/<name>.json, which survives a new machine) records the same code
version (``code_version``: the source of mixing/ and pipeline/core/, which decide training), the
same settings and the same input fingerprints (corpus, clustering, target, basis, tokens) as the
job would have now.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from dgamix.mixing.dga import DEFAULT_EMA_BETA, DGAConfig
from dgamix.mixing.testbed.config import TrainConfig

from .regimes import CLUSTERS, MINIPILE, RESULTS, ROOT

CODE_DIRS = ("mixing", "pipeline/core")  # the source that decides what a run trains (inputs: fingerprints)
# ... less the modules a reference run never calls while it trains: plots, the Trainer and DataLoader
# routes, and the exports made from a finished run (so fixing them keeps finished runs reusable)
NOT_TRAINING = ("mixing/report.py", "mixing/hf.py", "mixing/loader.py", "mixing/schedule.py")
DESIGN, TESTS = "mmlu", ("gsm8k", "fables")
SEEDS = (0, 1, 2, 3, 4)
DESIGN_SEEDS = (0, 1)
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
B_EPOCHS = (30, 50, 70, 100)  # regime b: budgets at which IS re-reads its domains this often (E = total sum a^2 / T)
RISE = 0.02               # regime b: IS's validation curve must rise this much from its minimum to its end
PRIMARY_MARGIN = 0.02     # primary criterion: DGA - static on test target loss <= this (mean, both test targets)
SPLIT_SEED, TEST_SHARE, VAL_SHARE = 1, 0.3, 0.3
TEST_WINDOWS = 256        # windows of each test split evaluated after training
LEVEL = 1                 # domain reweighting over the k = 64 level-1 clusters
ARMS = ("uniform", "is", "static", "dga", "dga-shrink")
# DGA "at the current defaults" is pinned to DGAConfig's defaults when the protocol was registered, so that the
# default this protocol decides can change without changing its arms
# (ema_beta None means DEFAULT_EMA_BETA, which the runs record as None: the guard below pins its value)
DGA_DEFAULTS = {"eta": 0.3, "ema_beta": None, "normalise": "standardise", "init": "uniform"}
DGA_ARMS = {"dga": DGA_DEFAULTS, "dga-shrink": {**DGA_DEFAULTS, "normalise": "shrink"}}
if DEFAULT_EMA_BETA != 0.1:
    raise RuntimeError(f"the protocol's DGA arms were registered with EMA beta 0.1 (ema_beta=None), and "
                       f"DEFAULT_EMA_BETA is {DEFAULT_EMA_BETA} now: pin ema_beta=0.1 in DGA_DEFAULTS (a new run set)")

# The testbed candidates (PROTOCOL.md: sizing), cheapest first: TrainConfig's fields the protocol sets (the rest
# are TrainConfig's) and DGA's reweighting period, chosen so that every candidate makes >= MIN_REWEIGHTINGS.
# Phase 0 (``Protocol.size``) picks the first candidate not RETIRED whose uniform run is UNIGRAM_MARGIN below the
# unigram baseline on every target's validation split (amendment 4).
COMMON = {"batch_size": 16, "vocab_size": 4096, "n_layer": 4, "lr": 3e-3, "warmup": 40, "eval_batches": 4,
          "eval_batch_size": 32, "align_batch_size": 4, "target_batch_size": 16, "checkpoint_every": 0, "threads": 1}
CANDIDATES = (  # projected protocol hours: PROTOCOL.md (sizing, amendments 1 and 4)
    {"name": "c64-s1200", "context": 64, "d_model": 128, "n_head": 4, "steps": 1200, "reweight_every": 25,
     "eval_every": 100},
    {"name": "c64-s1800", "context": 64, "d_model": 128, "n_head": 4, "steps": 1800, "reweight_every": 40,
     "eval_every": 150},
    {"name": "c128-s800", "context": 128, "d_model": 128, "n_head": 4, "steps": 800, "reweight_every": 18,
     "eval_every": 100},
)
UNIGRAM_MARGIN = 0.5      # uniform's validation loss on every target must be this far below the unigram cross-entropy
RETIRED = ("c64-s1200",)  # amendment 4: measured, it cannot meet the bar in both regimes (PROTOCOL.md)
MIN_REWEIGHTINGS = 40
BUDGET_HOURS = 8.0        # the whole protocol, on 2 cores (2 runs of 1 thread at a time)


def testbed_config(candidate: dict | None = None) -> TrainConfig:
    c = dict(candidate or CANDIDATES[0])
    c.pop("name")
    every = c.pop("reweight_every")
    return TrainConfig(**COMMON, **c, dga=DGAConfig(reweight_every=every, reweight_start=COMMON["warmup"]))


def reweightings(cfg: TrainConfig) -> int:
    """How many DGA updates a run of ``cfg`` makes (DGAConfig.due over its steps)."""
    return sum(cfg.dga.due(s) for s in range(cfg.steps))


def code_version(root: Path = ROOT, dirs: tuple[str, ...] = CODE_DIRS, skip: tuple[str, ...] = NOT_TRAINING) -> str:
    """sha256 of the relative path and bytes of every .py file under ``dirs`` (sorted) but ``skip``:
    changes when the code that trains a run changes, not when a plot or a comment elsewhere does."""
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted((root / d).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if rel not in skip:
                h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def split_rows(n: int, seed: int = SPLIT_SEED, test_share: float = TEST_SHARE) -> np.ndarray:
    """Boolean (n,) test mask: round(test_share * n) rows chosen by a seeded permutation."""
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:round(test_share * n)]] = True
    return mask


def ci95(values) -> dict:
    """Mean, sample std and the 95% t-interval half-width of ``values``."""
    from scipy.stats import t

    v = np.asarray([float(x) for x in values], dtype=np.float64)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    half = float(t.ppf(0.975, v.size - 1) * sd / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "std": sd, "ci95": half, "n": int(v.size), "values": v.tolist()}


def fmt(s: dict, sign: bool = False) -> str:
    return (f"{s['mean']:+.4f}" if sign else f"{s['mean']:.4f}") + (f" ± {s['ci95']:.4f}" if s["n"] > 1 else "")


def primary(static: dict, dga: dict, margin: float = PRIMARY_MARGIN) -> dict:
    """The primary criterion on one test target: paired (by seed) DGA - static on test target loss,
    mean <= margin, and on general loss, mean <= 0. ``static`` / ``dga``: seed -> (target, general)."""
    seeds = sorted(set(static) & set(dga))
    dt = ci95([dga[s][0] - static[s][0] for s in seeds])
    dg = ci95([dga[s][1] - static[s][1] for s in seeds])
    return {"seeds": seeds, "target_diff": dt, "general_diff": dg,
            "pass": bool(dt["mean"] <= margin and dg["mean"] <= 0.0)}


def curve_rises(losses: list[float], rise: float = RISE) -> bool:
    """Whether a loss curve ends at least ``rise`` above its minimum (it overfits late)."""
    return bool(losses) and losses[-1] - min(losses) >= rise


class Protocol:
    """The protocol on one workspace: prepares it, builds and runs (or reuses) the jobs, reports."""

    def __init__(self, workspace: Path, out: Path = RESULTS / "protocol-a4", base: TrainConfig | None = None,
                 pool: Path = MINIPILE / "pool.parquet", targets: Path = MINIPILE / "targets", tag: str = "p",
                 jobs: int = 1) -> None:
        self.ws, self.out, self.base = Path(workspace).resolve(), Path(out), base or testbed_config()
        self.pool, self.targets, self.prefix, self.jobs = pool, targets, tag, jobs
        self.tag = tag  # run names: <prefix>-<testbed candidate> once phase 0 has chosen one
        self.log: list[str] = []
        self.code = code_version()
        self._tokens_key: str | None = None
        self.futures: dict = {}  # run name -> Future, while ``protocol`` runs its pool
        self._unigram: dict = {}  # (target, lambda, testbed) -> ``unigram``'s baselines

    def __getstate__(self) -> dict:  # what a pool's worker gets: not the parent's futures
        return {k: v for k, v in self.__dict__.items() if k != "futures"}

    # ----------------------------------------------------------------- workspace
    def prepare(self, names: tuple[str, ...] = (DESIGN, *TESTS)) -> None:
        """Embeddings, clustering, every target split and registered, and its IS / natural basis."""
        from .workspace import dgamix, exists

        ws = self.ws
        if not (ws / "embeddings.parquet").exists():
            dgamix("embed", str(self.pool), "--workspace", str(ws), "--keep-columns", "src,domain,label",
                   "--max-seq-length", "128", "--precision", "int8", "--quiet", log=self.log)
        if not exists(ws / "clusters" / CLUSTERS / "tree.parquet", "tree"):
            dgamix("cluster", "--workspace", str(ws), "--levels", "64,64", "--name", CLUSTERS, "--quiet", log=self.log)
        for t in names:
            rv = self.split_files(t)[0]
            if not exists(ws / "targets" / t / "examples.parquet", "target"):
                dgamix("target", str(rv), "--workspace", str(ws), "--name", t, "--group-column", "group",
                       "--holdout", str(VAL_SHARE), log=self.log)
            if not (ws / "bases" / f"{self.basis(t)}.parquet").exists():
                dgamix("basis", "--workspace", str(ws), "--clusters", CLUSTERS, "--level", str(LEVEL), "--target", t,
                       "--by", "single", "--generic", "natural", "--name", self.basis(t), log=self.log)

    def split_files(self, t: str) -> tuple[Path, Path]:
        """(reweight + validation rows, test rows) of target ``t`` as parquet files in WS/splits/ (written once)."""
        import pyarrow.parquet as pq

        d = self.ws / "splits"
        rv, test = d / f"{t}-rv.parquet", d / f"{t}-test.parquet"
        if not (rv.exists() and test.exists()):
            d.mkdir(parents=True, exist_ok=True)
            table = pq.read_table(self.targets / f"{t}.parquet")
            mask = split_rows(table.num_rows)
            pq.write_table(table.filter(~mask), rv)
            pq.write_table(table.filter(mask), test)
        return rv, test

    @staticmethod
    def basis(t: str) -> str:
        """The 2-row basis of target ``t``: row 0 its IS histogram ("target"), row 1 natural cluster sizes."""
        return f"{t}-l{LEVEL}-single-natural"

    @staticmethod
    def blend_name(t: str, lam: float) -> str:
        return f"{t}-l{LEVEL}-blend{lam:g}"

    def blend(self, t: str, lam: float) -> str:
        """A one-row basis lam * IS + (1 - lam) * natural (written once): `--mixer is` trains on it."""
        import pyarrow as pa

        from dgamix.pipeline.core import manifest

        name = self.blend_name(t, lam)
        path = self.ws / "bases" / f"{name}.parquet"
        if path.exists():
            return name
        src = self.ws / "bases" / f"{self.basis(t)}.parquet"
        table, meta = manifest.read(src, "basis")
        b, dom, w = (np.asarray(table[c]) for c in ("basis", "domain", "weight"))
        mix = {}
        for j, weight in ((0, lam), (1, 1.0 - lam)):
            for d, x in zip(dom[b == j], w[b == j]):
                mix[int(d)] = mix.get(int(d), 0.0) + weight * float(x)
        doms = np.array(sorted(d for d, x in mix.items() if x > 0), np.int64)
        out = pa.table({"basis": pa.array(np.zeros(doms.size, np.int64)), "name": pa.array(["target"] * doms.size),
                        "domain": pa.array(doms), "weight": pa.array([mix[int(d)] for d in doms], pa.float64())})
        params = {**meta["params"], "by": "blend", "blend": lam, "names": ["target"]}
        manifest.write(path, out, "basis", params, manifest.fingerprint(params, meta.get("inputs")),
                       extra={k: v for k, v in meta.items() if k == "built_from"})
        return name

    # ----------------------------------------------------------------- jobs
    def job(self, regime: str, target: str, arm: str, seed: int, *, lam: float | None = None, epochs: int | None = None,
            tag: str | None = None) -> dict:
        """One run: regime a | b, target, arm (ARMS, or "blend" with ``lam``), seed; ``epochs``: regime b's budget."""
        tag = tag or self.tag
        cfg = replace(self.base, seed=seed)
        basis, mixer = None, arm
        if arm == "uniform":
            target = DESIGN  # trained once, evaluated on every target
        elif arm == "is":
            basis = self.basis(target)
        elif arm in ("static", "blend"):
            basis, mixer = self.blend_name(target, float(lam)), "is"
        elif arm in DGA_ARMS:
            cfg = replace(cfg, dga=replace(cfg.dga, **DGA_ARMS[arm]))
            mixer = "dga"
        else:
            raise ValueError(f"unknown arm {arm!r}")
        label = arm if arm != "blend" else f"blend{lam:g}"
        # the static arm is the blend at the chosen lambda: the same run as the design grid's, so it is reused
        run_label = f"blend{lam:g}" if arm in ("static", "blend") else arm
        name = f"{tag}-{regime}{'' if regime == 'a' else f'e{epochs}'}-{target}-{run_label}-s{seed}"
        return {"regime": regime, "target": target, "arm": arm, "label": label, "seed": seed, "mixer": mixer,
                "basis": basis, "config": cfg, "name": name, "lam": lam, "epochs": epochs}

    def resolved(self, job: dict) -> dict:
        """``job`` with what it needs from the workspace: its blend basis written, regime b's budget set."""
        if job["arm"] in ("static", "blend"):
            self.blend(job["target"], float(job["lam"]))
        if job["regime"] == "b" and job["config"].tokens_per_domain is None:
            job = {**job, "config": replace(job["config"], tokens_per_domain=self.budget(int(job["epochs"])))}
        return job

    def budget(self, epochs: int) -> int:
        """Regime b's tokens per domain, one for every target and arm: the budget at which IS on the design
        target, reading steps x batch x (context + 1) pieces, re-reads its domains ``epochs`` times on
        average: total * sum(alpha^2) / T = epochs (alpha: MMLU's IS histogram). IS on a target the pool
        holds less of concentrates more, so it re-reads its domains more often still."""
        import polars as pl

        b = pl.read_parquet(self.ws / "bases" / f"{self.basis(DESIGN)}.parquet")
        alpha = b.filter(pl.col("basis") == 0)["weight"].to_numpy()
        total = self.base.steps * self.base.batch_size * (self.base.context + 1)
        return max(1, int(total * float((alpha ** 2).sum()) / epochs))

    # ----------------------------------------------------------------- stamps and reuse
    def inputs(self, job: dict) -> dict:
        """Fingerprints of what ``job`` trains and is tested on, as the workspace holds them now."""
        from dgamix.pipeline.core import manifest, validate

        ws = self.ws
        fp = {"corpus": manifest.read_meta(ws / "docs.parquet", "docs").get("inputs"),
              "clusters": validate.tree_fingerprint(manifest.read_meta(ws / "clusters" / CLUSTERS / "tree.parquet",
                                                                       "tree")),
              "target": manifest.read_meta(ws / "targets" / job["target"] / "examples.parquet", "target").get("inputs"),
              "basis": None if job["basis"] is None else
              manifest.read_meta(ws / "bases" / f"{job['basis']}.parquet", "basis").get("inputs"),
              "tokens": self.tokens_key()}
        fp["tests"] = {t: manifest.file_checksum(self.split_files(t)[1]) for t in self.tested(job)}
        return fp

    def tokens_key(self) -> str:
        if self._tokens_key is None:
            from dgamix.mixing.testbed.tokens import cache_key, load_tokenizer
            from dgamix.pipeline.core.workspace import Workspace

            ws = Workspace(self.ws)
            _, model, model_fp = load_tokenizer(ws, self.base.model)
            self._tokens_key = cache_key(ws, model, model_fp, self.base.vocab_size)
        return self._tokens_key

    @staticmethod
    def tested(job: dict) -> tuple[str, ...]:
        return (DESIGN, *TESTS) if job["arm"] == "uniform" else (job["target"],)

    def stamp(self, job: dict) -> dict:
        """What a finished run of ``job`` must record to be reused: code version, settings, inputs."""
        from dgamix.mixing.testbed.train import recorded_params

        return {"code": self.code, "mixer": job["mixer"], "basis": job["basis"], "target": job["target"],
                "level": LEVEL, "clusters": CLUSTERS, "params": json.loads(json.dumps(recorded_params(job["config"]))),
                "inputs": self.inputs(job)}

    def record(self, name: str) -> Path:
        """Where a finished run's stamp and result are kept beside the protocol's results. The records are
        committed with them, so a fresh machine that rebuilds the same workspace (same fingerprints) reuses
        the runs instead of training them again; the workspace's copy (WS/runs/<name>/bench-stamp.json)
        serves when the records are not there."""
        return self.out / "runs" / f"{name}.json"

    def finished(self, job: dict) -> dict | None:
        """The stored result of ``job`` when a stamp kept for its run matches the job's stamp now; else None."""
        paths = [p for p in (self.ws / "runs" / job["name"] / "bench-stamp.json", self.record(job["name"]))
                 if p.exists()]
        if not paths:
            return None
        job = self.resolved(job)
        stamp = self.stamp(job)
        for path in paths:
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if saved.get("stamp") == stamp:
                return saved["result"]
        return None

    # ----------------------------------------------------------------- one run
    def run(self, job: dict) -> dict:
        """Train ``job`` (or reuse its finished run), evaluate its final model on the test splits,
        stamp it; returns its result (no curves of other runs, no arrays)."""
        job = self.resolved(job)
        got = self.finished(job)
        if got is not None:
            print(f"  reusing {job['name']} (same code, settings and inputs)", flush=True)
            return got
        self.check_code(job)
        from dgamix.mixing.testbed.train import train_run

        t0 = time.perf_counter()
        summary = train_run(self.ws, CLUSTERS, LEVEL, job["target"], job["mixer"], job["basis"], job["config"],
                            job["name"], overwrite=True, quiet=True)
        result = self.collect(job, summary, time.perf_counter() - t0)
        self.check_code(job)
        from dgamix.pipeline.core.files import atomic_file

        saved = json.dumps({"stamp": self.stamp(job), "result": result}) + "\n"
        for path in (self.ws / "runs" / job["name"] / "bench-stamp.json", self.record(job["name"])):
            with atomic_file(path) as tmp:
                tmp.write_text(saved)
        print(f"  {job['name']:<36} val {result['val']:.4f} general {result['final_general']:.4f} test "
              + " ".join(f"{t} {v:.4f}" for t, v in result["test"].items()) + f"  {result['seconds']:.0f} s", flush=True)
        return result

    def check_code(self, job: dict) -> None:
        """Stop when the training code on disk is no longer the version the protocol started with (and stamps its
        runs with): a run trained, or partly imported, from edited code would be recorded under a version that did
        not train it, and reused as such. Checked before a run trains and after, before its record is written."""
        now = code_version()
        if now != self.code:
            raise RuntimeError(f"{job['name']}: the code under {', '.join(CODE_DIRS)} changed while the protocol ran "
                               f"(version {self.code[:12]} at start, {now[:12]} now); its runs would be stamped with "
                               "code that did not train them. Stop the protocol and start it again.")

    def collect(self, job: dict, summary: dict, seconds: float) -> dict:
        import polars as pl

        from .stats import movement

        run = self.ws / "runs" / job["name"]
        m = pl.read_parquet(run / "metrics.parquet")
        curves = {s: m.filter(pl.col("split") == s).sort("step").select("step", "loss").to_dict(as_series=False)
                  for s in ("target", "general", "train")}
        w = pl.read_parquet(run / "weights.parquet")
        steps = sorted(set(w["step"].to_list()))
        W = [w.filter(pl.col("step") == s).sort("domain")["weight"].to_list() for s in steps]
        losses = self.final_losses(job)
        val_targets = losses["val"]
        if abs(val_targets[job["target"]] - curves["target"]["loss"][-1]) > 1e-3:
            raise RuntimeError(f"{job['name']}: its final model scores {val_targets[job['target']]:.5f} on "
                               f"{job['target']}'s validation windows, its own curve ends at "
                               f"{curves['target']['loss'][-1]:.5f}: val_windows are not the run's windows")
        reps = pl.read_parquet(run / "repetitions.parquet")
        draws, n_docs = reps["draws"].to_numpy(), reps["n_docs"].to_numpy()
        return {"name": job["name"], "regime": job["regime"], "target": job["target"], "arm": job["arm"],
                "label": job["label"], "seed": job["seed"], "lam": job["lam"], "epochs": job["epochs"],
                "tokens_per_domain": job["config"].tokens_per_domain,
                "val": curves["target"]["loss"][-1], "final_general": curves["general"]["loss"][-1],
                "test": losses["test"], "val_targets": val_targets, "curves": curves,
                "movement": movement(W) if len(W) > 1 else None,
                "final_weights": W[-1], "reweightings": summary.get("reweightings", 0),
                "mean_epochs": float((draws / np.maximum(n_docs, 1) * draws).sum() / max(1, draws.sum())),
                "seconds": round(seconds, 1), "seconds_per_step": summary.get("seconds_per_step"),
                "seconds_per_reweighting": summary.get("seconds_per_reweighting")}

    def test_windows(self, t: str):
        """The packed windows of target ``t``'s test split (TEST_WINDOWS at most, an equal share per example)."""
        import pyarrow.parquet as pq

        from dgamix.mixing.testbed.tokens import corpus_tokens, text_tokens
        from dgamix.mixing.testbed.train import eval_windows
        from dgamix.pipeline.core.workspace import Workspace

        _, vocab, tok, _ = corpus_tokens(Workspace(self.ws), self.base.vocab_size, model=self.base.model)
        texts = pq.read_table(self.split_files(t)[1], columns=["text"])["text"].to_pylist()
        pick = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(texts))[:2 * TEST_WINDOWS])
        pieces = text_tokens(tok, vocab, [texts[i] for i in pick])
        return eval_windows(pieces, np.arange(len(pieces)), self.base.context, TEST_WINDOWS), vocab

    def val_windows(self, t: str):
        """The packed windows of target ``t``'s validation split, as its runs evaluate them."""
        from dgamix.mixing.testbed.train import build_inputs
        from dgamix.pipeline.core.workspace import Workspace

        inp = build_inputs(Workspace(self.ws), CLUSTERS, LEVEL, t, "is", self.basis(t), self.base)
        return inp["data"].eval_sets["target"], inp["vocab"]

    def final_losses(self, job: dict) -> dict[str, dict[str, float]]:
        """Loss of the run's final model (its last checkpoint, loaded once) on the test and validation
        splits of every target it is tested on: {"test": {target: loss}, "val": {target: loss}}."""
        from dgamix.mixing.testbed.model import ModelConfig, TinyGPT
        from dgamix.mixing.testbed.trainer import CHECKPOINT, evaluate, load_checkpoint
        from dgamix.pipeline.core.runtime import torch_threads

        state = load_checkpoint(self.ws / "runs" / job["name"] / "checkpoint" / CHECKPOINT)
        cfg = job["config"]
        out, model = {"test": {}, "val": {}}, None
        with torch_threads(max(1, cfg.threads)):
            for t in self.tested(job):
                for split, (windows, vocab) in (("test", self.test_windows(t)), ("val", self.val_windows(t))):
                    if model is None:  # one corpus vocabulary for every target
                        model = TinyGPT(ModelConfig(vocab.size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
                        model.load_state_dict(state["model"])
                    out[split][t] = float(evaluate(model, windows, cfg.eval_batch_size))
        return out

    # ----------------------------------------------------------------- unigram baselines
    def unigram(self, target: str, lam: float | None = None) -> dict:
        """Cross-entropy of ``target``'s validation and test pieces under the unigram of uniform, IS,
        natural (and the static mix at ``lam``), and under the target's own (reweight split); computed
        once per target, lambda and testbed."""
        key = (target, lam, json.dumps(asdict(self.base), sort_keys=True, default=str))
        if key not in self._unigram:
            self._unigram[key] = self._unigram_baselines(target, lam)
        return self._unigram[key]

    def _unigram_baselines(self, target: str, lam: float | None) -> dict:
        from dgamix.mixing.testbed.train import build_inputs
        from dgamix.pipeline.core.workspace import Workspace

        from .unigram import baselines

        inp = build_inputs(Workspace(self.ws), CLUSTERS, LEVEL, target, "is", self.basis(target), self.base)
        index = inp["index"]
        docs = [index.docs[index.offsets[i]:index.offsets[i + 1]] for i in range(len(index.domains))]
        alphas = {"uniform": np.ones(len(docs)), "is": inp["mix"].weights(),
                  "natural": index.sizes.astype(np.float64)}
        if lam is not None:
            alphas["static"] = lam * alphas["is"] + (1 - lam) * alphas["natural"] / alphas["natural"].sum()
        test, vocab = self.test_windows(target)
        evaluated = {"val": inp["data"].eval_sets["target"], "test": test}
        return baselines(inp["data"].tokens, docs, alphas, inp["mix"].batches.target_windows, evaluated, vocab.size)

    # ----------------------------------------------------------------- phases
    @staticmethod
    def labelled(jobs: list[dict], results: dict[str, dict]) -> list[dict]:
        """The result of every job whose run is in ``results`` (name -> result). A run serves every job of its
        name (the static arm reuses the design grid's blend), so it is labelled as the job."""
        return [{**results[j["name"]], "arm": j["arm"], "label": j["label"], "lam": j["lam"]}
                for j in jobs if j["name"] in results]

    def finished_runs(self, jobs: list[dict]) -> list[dict]:
        """The results of the jobs whose runs are finished now (stamps matching), trained nothing."""
        found = {j["name"]: self.finished(j) for j in jobs}
        return self.labelled(jobs, {k: v for k, v in found.items() if v is not None})

    def size(self, candidates: tuple[dict, ...] | None = None) -> dict:
        """Phase 0: the testbed (amendment 4). For each candidate not RETIRED, cheapest first, a uniform and a DGA
        run on MMLU (seed 0), the unigram baselines on every target's validation split and the projected protocol
        time; the first candidate whose uniform run ends >= UNIGRAM_MARGIN below the uniform mixture's unigram
        cross-entropy on the validation split of every target (MMLU, gsm8k, fables), with >= MIN_REWEIGHTINGS,
        is chosen (else the one furthest below it). Figures go to sizing.json beside the protocol's results."""
        candidates = tuple(c for c in (CANDIDATES if candidates is None else candidates) if c["name"] not in RETIRED)
        rows = []
        chosen, met = None, False
        for cand in candidates:
            self.base = testbed_config(cand)
            self.tag = f"{self.prefix}-{cand['name']}"  # the chosen candidate's sizing runs are the protocol's
            uni_run = self.run(self.job("a", DESIGN, "uniform", 0))
            dga_run = self.run(self.job("a", DESIGN, "dga", 0))
            margins = self.unigram_margins(uni_run)
            margin = min(margins.values())
            hours = self.projected_hours(uni_run, dga_run)
            rows.append({"candidate": cand, "uniform_val": uni_run["val"], "dga_val": dga_run["val"],
                         "uniform_val_targets": uni_run["val_targets"],
                         "unigram_val": {t: self.unigram(t)["mixture:uniform"]["val"] for t in margins},
                         "own_unigram_val": {t: self.unigram(t)["own"]["val"] for t in margins},
                         "margins": margins, "margin": margin, "reweightings": dga_run["reweightings"],
                         "seconds_per_step": uni_run["seconds_per_step"],
                         "seconds_per_reweighting": dga_run["seconds_per_reweighting"],
                         "uniform_seconds": uni_run["seconds"], "dga_seconds": dga_run["seconds"],
                         "projected_hours": hours, "projected_hours_lambda_1": self.projected_hours(uni_run, dga_run, 1.0)})
            print(f"  sizing {cand['name']}: uniform below the unigram by "
                  + ", ".join(f"{t} {m:.3f}" for t, m in margins.items()) + f"; {dga_run['reweightings']} "
                  f"reweightings, projected {hours:.1f} h", flush=True)
            if margin >= UNIGRAM_MARGIN and dga_run["reweightings"] >= MIN_REWEIGHTINGS:
                chosen, met = cand, True
                break
        if chosen is None:
            chosen = candidates[max(range(len(rows)), key=lambda i: rows[i]["margin"])]
        self.base, self.tag = testbed_config(chosen), f"{self.prefix}-{chosen['name']}"
        out = {"rule": f"amendment 4: first candidate not in {list(RETIRED)} with uniform >= {UNIGRAM_MARGIN} nats "
                       f"below the unigram on every target's validation split and >= {MIN_REWEIGHTINGS} reweightings",
               "rows": rows, "chosen": chosen["name"], "met": met, "budget_hours": BUDGET_HOURS}
        (self.out / "sizing.json").write_text(json.dumps(out, indent=1) + "\n")
        return out

    def unigram_margins(self, uniform: dict) -> dict[str, float]:
        """How far a uniform run's final validation loss on every target lies below the cross-entropy of
        the same pieces under the uniform mixture's unigram distribution (the bar: >= UNIGRAM_MARGIN)."""
        return {t: self.unigram(t)["mixture:uniform"]["val"] - uniform["val_targets"][t] for t in (DESIGN, *TESTS)}

    def projected_hours(self, uniform: dict, dga: dict, lam: float = 0.5) -> float:
        """Hours of the whole protocol at these runs' costs: every distinct planned run (design, the DGA arms'
        design runs, regimes a and b at ``lam``: below 1 the IS and static rows are separate runs, so 0.5
        gives the upper bound) costs a uniform run's time, DGA runs a DGA run's, and ``jobs`` run side by
        side. Phase 0's runs train one at a time, faster than two side by side: a lower estimate per run."""
        names = {j["name"]: j["arm"] for j in self.design_jobs() + self.dga_jobs() + self.main_jobs(lam, B_EPOCHS[0])}
        n_dga = sum(a in DGA_ARMS for a in names.values())
        return ((len(names) - n_dga) * uniform["seconds"] + n_dga * dga["seconds"]) / max(1, self.jobs) / 3600

    def design_jobs(self) -> list[dict]:
        grid = [self.job("a", DESIGN, "blend", s, lam=lam) for lam in LAMBDAS for s in DESIGN_SEEDS]
        return grid + [j for e in B_EPOCHS for j in self.budget_jobs(e)]

    def budget_jobs(self, epochs: int) -> list[dict]:
        """The runs that decide whether regime b's budget ``epochs`` qualifies: IS and uniform on MMLU, seed 0
        (both are regime b's own runs at that budget)."""
        return [self.job("b", DESIGN, "is", 0, epochs=epochs), self.job("b", DESIGN, "uniform", 0, epochs=epochs)]

    def choose(self, design: list[dict]) -> dict:
        """lambda: the lowest mean MMLU validation loss of the grid (ties: smaller lambda)."""
        by_lam = {lam: np.mean([r["val"] for r in design if r["arm"] == "blend" and r["lam"] == lam]) for lam in LAMBDAS}
        lam = min(LAMBDAS, key=lambda x: (by_lam[x], x))
        return {"lambda": lam, "lambda_val": {str(k): float(v) for k, v in by_lam.items()}}

    def choose_budget(self, budgets: list[dict]) -> dict:
        """Regime b's budget (amendment 4): the smallest B_EPOCHS at which IS's MMLU validation curve rises by RISE
        and uniform still ends >= UNIGRAM_MARGIN below the unigram on every target's validation split. If none
        does, the smallest at which IS's curve rises (else the largest), and ``bar_met`` is False."""
        is_runs = {r["epochs"]: r for r in budgets if r["arm"] == "is"}
        uni_runs = {r["epochs"]: r for r in budgets if r["arm"] == "uniform"}
        rising = {e: curve_rises(r["curves"]["target"]["loss"]) for e, r in is_runs.items()}
        margins = {e: self.unigram_margins(r) for e, r in uni_runs.items()}
        both = [e for e in B_EPOCHS if rising.get(e) and e in margins and min(margins[e].values()) >= UNIGRAM_MARGIN]
        epochs = both[0] if both else next((e for e in B_EPOCHS if rising.get(e)), B_EPOCHS[-1])
        return {"epochs": epochs, "bar_met": bool(both), "is_rises": {str(k): v for k, v in rising.items()},
                "uniform_margins": {str(k): v for k, v in margins.items()}}

    def dga_jobs(self) -> list[dict]:
        """The runs that choose between the DGA arms: each arm on MMLU, regime a, the design seeds."""
        return [self.job("a", DESIGN, arm, s) for arm in DGA_ARMS for s in DESIGN_SEEDS]

    @staticmethod
    def choose_dga(runs: list[dict]) -> dict:
        """The DGA arm with the lowest mean MMLU validation loss over the design seeds (ties: the current
        default, listed first in DGA_ARMS). Made before any test-target run, as lambda is."""
        val = {a: float(np.mean([r["val"] for r in runs if r["arm"] == a])) for a in DGA_ARMS}
        return {"dga_chosen": min(DGA_ARMS, key=lambda a: (val[a], list(DGA_ARMS).index(a))), "dga_val": val}

    @staticmethod
    def priority(job: dict, chosen: str) -> int:
        """The order the protocol trains a main job in: 0, what the primary criterion needs (regime a, the test
        targets, the static arm and the chosen DGA arm); 1, the rest of regime a; 2, regime b. Only the order
        depends on it: the set of runs is the pre-registered one."""
        if job["regime"] == "a" and job["target"] in TESTS and job["arm"] in ("static", chosen):
            return 0
        return 1 if job["regime"] == "a" else 2

    @classmethod
    def ordered(cls, jobs: list[dict], chosen: str) -> list[dict]:
        """``jobs`` by ``priority``; the primary's runs seed by seed, so that a protocol stopped part-way
        leaves whole seeds (both arms, both test targets) to pair."""
        return sorted(jobs, key=lambda j: (cls.priority(j, chosen), j["seed"] if cls.priority(j, chosen) == 0 else 0))

    def main_jobs(self, lam: float, epochs: int, chosen: str = "dga") -> list[dict]:
        """Regimes a and b: uniform, IS, static and the chosen DGA arm x SEEDS x the three targets (amendment 2:
        the other DGA arm has its design runs only). At lambda = 1 the static mix is IS's histogram, weight for
        weight, so one run serves both rows: the IS job is the static run, labelled IS."""
        jobs = []
        for regime in ("a", "b"):
            e = epochs if regime == "b" else None
            jobs += [self.job(regime, DESIGN, "uniform", s, epochs=e) for s in SEEDS]
            for t in (DESIGN, *TESTS):
                for arm in ("is", "static", chosen):
                    for s in SEEDS:
                        if arm == "is" and lam == 1.0:
                            jobs.append({**self.job(regime, t, "static", s, lam=lam, epochs=e), "arm": "is",
                                         "label": "is"})
                        else:
                            jobs.append(self.job(regime, t, arm, s, lam=lam if arm == "static" else None, epochs=e))
        return jobs

    def plan(self) -> dict:
        """The runs the protocol trains (distinct run names; the static arm reuses the design grid's blend at
        seeds DESIGN_SEEDS on MMLU when lambda is on the grid), by arm, and DGA's reweightings per run. With
        design.json's lambda, DGA arm and budget once chosen (else lambda 0.5, dga and the first budget)."""
        path = self.out / "design.json"
        design = json.loads(path.read_text()) if path.exists() else {}
        lam, chosen = float(design.get("lambda", LAMBDAS[2])), design.get("dga_chosen", "dga")
        jobs = self.design_jobs() + self.dga_jobs() + self.main_jobs(lam, design.get("epochs") or B_EPOCHS[0], chosen)
        names = {j["name"]: j["arm"] for j in jobs}
        counts: dict[str, int] = {}
        for arm in names.values():
            counts[arm] = counts.get(arm, 0) + 1
        return {"runs": len(names), "lambda": lam, "dga_chosen": chosen, "by_arm": counts, "testbed_candidates": [c["name"] for c in CANDIDATES if c["name"] not in RETIRED],
                "reweightings": {c["name"]: reweightings(testbed_config(c)) for c in CANDIDATES}}

    def report(self, design: dict, runs: list[dict], planned: int | None = None) -> dict:
        """Tables per regime: every arm's test target loss and general loss (mean ± 95% CI over seeds), the
        unigram baselines, and the paired differences; the primary criterion. ``runs`` may be a part of the
        plan (``planned`` runs): cells show their seed counts, and the primary criterion is INCOMPLETE until
        both test targets have every seed of both of its arms."""
        def pick(regime, target, arm):
            rs = [r for r in runs if r["regime"] == regime and r["arm"] == arm
                  and (r["target"] == target or arm == "uniform")]
            return {r["seed"]: (r["test"][target], r["final_general"]) for r in rs}

        uni = {t: self.unigram(t, design["lambda"]) for t in (DESIGN, *TESTS)}
        chosen = design["dga_chosen"]
        out = {"design": design, "dga_chosen": chosen, "unigram": uni, "tables": {}, "primary": {},
               "runs_finished": len({r["name"] for r in runs}), "runs_planned": planned}
        lines = []
        for regime in ("a", "b"):
            if not any(r["regime"] == regime for r in runs):
                continue  # not started (a partial report)
            for t in (DESIGN, *TESTS):
                rows = {a: pick(regime, t, a) for a in ARMS}
                tab = {a: {"target": ci95([v[0] for v in r.values()]), "general": ci95([v[1] for v in r.values()])}
                       for a, r in rows.items() if r}
                diffs = {}
                for a in (chosen, *[x for x in DGA_ARMS if x != chosen]):
                    for ref in ("static", "uniform", "is"):
                        seeds = sorted(set(rows[a]) & set(rows[ref]))
                        if seeds:
                            diffs[f"{a} - {ref}"] = {
                                "target": ci95([rows[a][s][0] - rows[ref][s][0] for s in seeds]),
                                "general": ci95([rows[a][s][1] - rows[ref][s][1] for s in seeds])}
                out["tables"][f"{regime}:{t}"] = {"arms": tab, "diffs": diffs}
                if regime == "a" and t in TESTS:
                    both = sorted(set(rows["static"]) & set(rows[chosen]))
                    out["primary"][t] = ({**primary(rows["static"], rows[chosen]), "complete": both == list(SEEDS)}
                                         if both else {"seeds": [], "complete": False, "pass": None})
                u = uni[t]
                lines += [f"\n### regime {regime}, target {t} (test split; 95% t-intervals over seeds)\n",
                          f"unigram cross-entropy (test): uniform mixture {u['mixture:uniform']['test']:.4f}, "
                          f"IS {u['mixture:is']['test']:.4f}, static {u['mixture:static']['test']:.4f}, "
                          f"target's own {u['own']['test']:.4f}"
                          + (f"; uniform − unigram (uniform mixture) {tab['uniform']['target']['mean'] - u['mixture:uniform']['test']:+.3f} "
                             f"(bar: <= -{UNIGRAM_MARGIN})" if "uniform" in tab else "") + "\n",
                          "| arm | seeds | target loss | general loss |", "|---|---|---|---|"]
                lines += [f"| {a} | {v['target']['n']} | {fmt(v['target'])} | {fmt(v['general'])} |"
                          for a, v in tab.items()]
                lines += [f"| unigram (uniform mixture) | - | {u['mixture:uniform']['test']:.4f} | - |",
                          "", "| paired difference | target | general |", "|---|---|---|"]
                lines += [f"| {k} | {fmt(v['target'], True)} | {fmt(v['general'], True)} |" for k, v in diffs.items()]
        complete = set(out["primary"]) == set(TESTS) and all(p["complete"] for p in out["primary"].values())
        ok = all(p["pass"] for p in out["primary"].values())
        out["primary_pass"] = ok if complete else None
        head = ["# Efficacy protocol (PROTOCOL.md)\n",
                *([f"**Partial: {out['runs_finished']} of {planned} planned runs are finished.**\n"]
                  if planned and out["runs_finished"] < planned else []),
                f"lambda = {design['lambda']} (MMLU validation), regime b budget: "
                + (f"IS at {design['epochs']} epochs" + (
                    (" (no budget met both bars: uniform ends < 0.5 below the unigram on some target wherever IS's "
                     "curve rises; amendment 4); " if any(design.get("is_rises", {}).values()) else
                     " (IS's curve rose at no budget: amendment 4's fallback); ")
                    if design.get("bar_met") is False else "; ")
                   if design["epochs"] else "not chosen yet; ") +
                f"DGA arm chosen on MMLU validation (seeds {', '.join(map(str, DESIGN_SEEDS))}): {chosen}\n",
                *(["At lambda = 1 the static mix is IS's histogram: one run serves both rows (amendment 2).\n"]
                  if design["lambda"] == 1.0 else []),
                "Primary (regime a, both test targets, 5 seeds: DGA - static <= +0.02 on target loss, general no "
                "worse): " + (("PASS" if ok else "FAIL") if complete else "INCOMPLETE") + "; " + "; ".join(
                    f"{t}: target {fmt(p['target_diff'], True)}, general {fmt(p['general_diff'], True)} "
                    f"(seeds {len(p['seeds'])})" if p["seeds"] else f"{t}: no paired seed yet"
                    for t, p in out["primary"].items())]
        out["markdown"] = "\n".join(head + lines) + "\n"
        return out

    def protocol(self, train: bool = True) -> dict:
        """Phases 0-3; ``train=False`` trains nothing and reports the runs finished so far.

        Runs go to one pool in the order of PROTOCOL.md (amendment 1): the design grid (lambda); the DGA
        arms' design runs with the static arm's primary runs behind them (they need lambda only); once the
        DGA arm is chosen, its primary runs; protocol.md once the primary's runs are done; then the rest
        of regime a, regime b's budgets (E) and regime b."""
        t0 = time.perf_counter()
        self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        if not train:
            return self.partial_report(t0)
        print("phase 0: the testbed (uniform against the unigram on every target's validation split)", flush=True)
        sizing = self.size()
        print(f"  chose {sizing['chosen']}", flush=True)
        self.futures = {}
        with self.executor() as pool, _cancel_on_failure(pool):
            print("phase 1: design on MMLU validation (lambda, the DGA arm)", flush=True)
            grid = [j for j in self.design_jobs() if j["regime"] == "a"]
            budgets = [j for j in self.design_jobs() if j["regime"] == "b"]
            self.start(pool, grid + self.dga_jobs())
            design = self.choose(self.wait(pool, grid))
            statics = [j for j in self.main_jobs(design["lambda"], B_EPOCHS[0])
                       if j["regime"] == "a" and j["target"] in TESTS and j["arm"] == "static"]
            self.start(pool, self.ordered(statics, ""))  # they need lambda only
            design.update(self.choose_dga(self.wait(pool, self.dga_jobs())))
            chosen = design["dga_chosen"]
            print(f"  chose lambda {design['lambda']}, DGA arm {chosen}", flush=True)
            print("phase 2: the primary criterion's runs, then the rest of regime a, then regime b", flush=True)
            regime_a = self.ordered([j for j in self.main_jobs(design["lambda"], B_EPOCHS[0], chosen)
                                     if j["regime"] == "a"], chosen)
            first = [j for j in regime_a if self.priority(j, chosen) == 0]
            self.start(pool, regime_a)  # first-in first-out: the primary's runs, then the rest
            self.wait(pool, first)
            interim = {**design, "epochs": None}  # regime b's budget is chosen later
            (self.out / "design.json").write_text(json.dumps(interim, indent=1) + "\n")
            self.write_report(interim, self.finished_runs(regime_a), self.finished_runs(grid),
                              len(self.main_names(design["lambda"], chosen)), t0)
            design.update(self.choose_budget(self.wait(pool, budgets)))
            (self.out / "design.json").write_text(json.dumps(design, indent=1) + "\n")
            print(f"  chose regime b at {design['epochs']} IS epochs", flush=True)
            main = self.ordered(self.main_jobs(design["lambda"], design["epochs"], chosen), chosen)
            runs = self.wait(pool, main)
        print("phase 3: report", flush=True)
        design_runs = self.finished_runs(self.design_jobs())
        return self.write_report(design, runs, design_runs, len(self.main_names(design["lambda"], chosen)), t0)

    def executor(self):
        """The pool the runs train in: ``jobs`` processes (spawned: each run its own torch state)."""
        import multiprocessing as mp

        return ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"))

    def start(self, pool, jobs: list[dict]) -> None:
        """Queue the jobs whose runs are not finished (each run once, in order); finished ones are read."""
        from concurrent.futures import Future

        for j in jobs:
            if j["name"] in self.futures:
                continue
            got = self.finished(j)
            if got is None:
                self.futures[j["name"]] = pool.submit(_run_one, (self, j))
            else:
                self.futures[j["name"]] = f = Future()
                f.set_result(got)

    def wait(self, pool, jobs: list[dict]) -> list[dict]:
        """Queue ``jobs`` (``start``) and return their results once all are done."""
        self.start(pool, jobs)
        return self.labelled(jobs, {j["name"]: self.futures[j["name"]].result() for j in jobs})

    def main_names(self, lam: float, chosen: str) -> set[str]:
        """The distinct runs of regimes a and b once lambda and the DGA arm are chosen (the report's tables)."""
        return {j["name"] for j in self.main_jobs(lam, B_EPOCHS[0], chosen)}

    def partial_report(self, t0: float) -> dict:
        """The report of the runs finished so far, from design.json (written by phase 1)."""
        path = self.out / "design.json"
        if not path.exists():
            raise SystemExit(f"error: {path} is missing: phase 1 has not finished, so nothing can be reported yet")
        design = json.loads(path.read_text())
        design["lambda"] = float(design["lambda"])
        sizing = self.size_from_file()
        main = self.main_jobs(design["lambda"], design["epochs"] or B_EPOCHS[0], design["dga_chosen"])
        if design["epochs"] is None:  # regime b's budget is not chosen yet: its runs cannot exist
            main = [j for j in main if j["regime"] == "a"]
        return self.write_report(design, self.finished_runs(main), self.finished_runs(self.design_jobs()),
                                 len(self.main_names(design["lambda"], design["dga_chosen"])), t0, sizing)

    def size_from_file(self) -> dict:
        """Phase 0's choice, read from sizing.json (so a report trains nothing)."""
        sizing = json.loads((self.out / "sizing.json").read_text())
        cand = next(c for c in CANDIDATES if c["name"] == sizing["chosen"])
        self.base, self.tag = testbed_config(cand), f"{self.prefix}-{cand['name']}"
        return sizing

    def write_report(self, design: dict, runs: list[dict], design_runs: list[dict], planned: int, t0: float,
                     sizing: dict | None = None) -> dict:
        """protocol.json, protocol.md and the plots of ``runs`` (the finished part of ``planned`` runs)."""
        print(f"  report: {len({r['name'] for r in runs})} of {planned} runs finished", flush=True)
        rep = self.report(design, runs, planned)
        if sizing is None:
            sizing = json.loads((self.out / "sizing.json").read_text())
        rep.update(code=self.code, sizing=sizing, testbed={**asdict(self.base), "dga": asdict(self.base.dga)},
                   seconds=time.perf_counter() - t0, stage_commands=self.log,
                   runs=[{k: v for k, v in r.items() if k != "curves"} for r in runs],
                   curves={r["name"]: r["curves"]["target"] for r in design_runs + runs if r["arm"] == "is"})
        (self.out / "protocol.json").write_text(json.dumps(rep, indent=1) + "\n")
        (self.out / "protocol.md").write_text(rep["markdown"])
        from .plots import protocol_plots

        protocol_plots(rep, design_runs + runs, self.out)
        print(rep["markdown"], flush=True)
        return rep


@contextlib.contextmanager
def _cancel_on_failure(pool):
    """A failed run stops the protocol now: the queued runs are cancelled (the running ones finish)."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _run_one(arg):
    proto, job = arg
    return proto.run(job)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(prog="python -m bench.experiments.efficacy protocol", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=ROOT / "ws" / "minipile")
    ap.add_argument("--out", type=Path, default=RESULTS / "protocol-a4")
    ap.add_argument("--pool", type=Path, default=MINIPILE / "pool.parquet")
    ap.add_argument("--targets", type=Path, default=MINIPILE / "targets")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plan", action="store_true", help="print the runs it would train, train nothing")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: write protocol.md / .json and the plots from the runs finished so far")
    args = ap.parse_args(argv)
    if not args.pool.exists() and not (args.workspace / "embeddings.parquet").exists():
        print(f"skipped: the mini-Pile is not here ({args.pool}); pass --pool and --targets to use another copy.")
        return None
    proto = Protocol(args.workspace, args.out, pool=args.pool, targets=args.targets, jobs=args.jobs)
    if args.plan:
        p = proto.plan()
        print(json.dumps(p, indent=1))
        return p
    return proto.protocol(train=not args.report)
