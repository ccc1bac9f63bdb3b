"""DGA in your own training loop: ``OnlineMixture``, one object that owns stage 3's state.

    mix = OnlineMixture.from_workspace("ws", clusters="k64-4", level=1, target="mmlu",
                                       basis="groups", collate=collate)   # collate(texts) -> batch
    for step in range(steps):
        mix.maybe_reweight(step, model)            # on reweighting steps: N + 1 backward passes
        batch = mix.next_batch(16)                 # .doc_ids, .domains, .texts
        loss = loss_fn(model, collate(batch.texts)); loss.backward(); opt.step()
    torch.save(mix.state_dict(), "mix.pt")         # plain types: loads with weights_only=True
    mix.write_run("mine", metrics=rows)            # then `dgamix report`, `dgamix schedule --run mine`

It owns the training sampler (weights -> documents), the probe sampler (its own seed: probes never
consume the training stream), the target batches (a seeded cycle over the target's "reweight"
examples), the mixer (DGA or a baseline) and the weight log. `dgamix train` runs on the same object
(mixing/testbed/trainer.py), with packed token windows instead of texts (``testbed.packing.PackedBatches``).

Cost of a reweighting: N + 1 backward passes (one per basis or domain, one for the target), i.e.
an overhead of (N * B_dom + B_spe) / (T_r * B) on a step of B sequences (B_dom = align_batch_size,
B_spe = target_batch_size, T_r = DGAConfig.reweight_every).

Data parallel (torch.distributed initialised): every rank draws the same global batch of
world_size x n documents and keeps its own slice, so ranks see disjoint documents; at a
reweighting every rank builds every probe (keeping the probe sampler in step), computes the
gradients of the bases j with j % world_size == rank, and the alignments are summed across ranks
(all_reduce of vectors holding zeros elsewhere: exact), so every rank applies the same update
and holds the same weights. Pass the unwrapped model or the DDP wrapper (its ``.module`` is used).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from dgamix.mixing.alignment import Alignments, gradient_alignments
from dgamix.mixing.dga import DGAConfig
from dgamix.mixing.inputs import mixture_inputs
from dgamix.mixing.sampler import MixtureSampler
from dgamix.mixing.state import STATE_FORMAT, from_plain, to_plain
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace, check_name

TARGET_SALT = 7919        # target cycle seed = seed + TARGET_SALT


# --------------------------------------------------------------------------- pieces

@dataclass
class Batch:
    """One draw: doc_ids (n,) int64 (docs.parquet's doc_id), domains (n,) int64 (domain ids at the
    mixture's level), texts (n strings; None when the mixture reads no texts)."""

    doc_ids: np.ndarray
    domains: np.ndarray
    texts: list[str] | None = None

    def __len__(self) -> int:
        return self.doc_ids.size


@dataclass
class Reweighting:
    """What one reweighting did: the step, the weights before and after (n,), the raw alignments
    (n,), gradient norms (n,), target gradient norm, and its wall time (seconds)."""

    step: int
    before: np.ndarray
    weights: np.ndarray
    alignments: np.ndarray
    grad_norms: np.ndarray
    target_norm: float
    seconds: float


class AlignmentError(ValueError):
    """A reweighting met a NaN / inf alignment or the mixer refused it; ``what`` says which."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"{what} at step {step}")
        self.what, self.step = what, step


class Batches(Protocol):
    """How the mixture turns documents into model batches for the alignments.

    n_target: number of target rows; target(rows) -> the target batch of those rows;
    probe(draw, size) -> one probe batch of documents drawn by ``draw(m)`` -> m doc ids.
    """

    n_target: int

    def target(self, rows: np.ndarray) -> Any: ...

    def probe(self, draw: Callable[[int], np.ndarray], size: int) -> Any: ...


class TextBatches:
    """Batches from texts: ``collate(list of texts) -> batch`` (the user's tokenizer and padding);
    a probe is ``size`` documents, a target batch ``len(rows)`` target examples."""

    def __init__(self, texts, target_texts: list[str], collate: Callable[[list[str]], Any]) -> None:
        self.texts, self.target_texts, self.collate = texts, list(target_texts), collate
        self.n_target = len(self.target_texts)

    def target(self, rows: np.ndarray) -> Any:
        return self.collate([self.target_texts[i] for i in rows])

    def probe(self, draw: Callable[[int], np.ndarray], size: int) -> Any:
        return self.collate(self.texts[draw(size)])


class Cycle:
    """Seeded rows of a fixed set: a fresh permutation per pass, no repeat within a pass."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the target has no 'reweight' examples to align with")
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.perm = self.rng.permutation(n)
        self.pos = 0

    def next(self, size: int) -> np.ndarray:
        out = []
        while size > 0:
            if self.pos == self.n:
                self.perm, self.pos = self.rng.permutation(self.n), 0
            take = min(size, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            size -= take
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "perm": self.perm.copy(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.perm = np.asarray(state["perm"]).copy()
        self.pos = int(state["pos"])


def default_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss`` for a mapping (a Hugging Face model with labels in the batch),
    else dgamix's next-token loss of a (rows, context + 1) token tensor."""
    if isinstance(batch, Mapping):
        return model(**batch).loss
    from dgamix.mixing.loss import lm_loss

    return lm_loss(model, batch)


def loss_weights(alpha: np.ndarray, q: np.ndarray, domains: np.ndarray) -> np.ndarray:
    """Per-example loss multipliers alpha_d / q_d (float64, shape of ``domains``), for data drawn
    from q while the mixture asks for alpha (both (K,) over the same dense domains, q > 0 where
    alpha > 0): E_{x~q}[(alpha_d(x) / q_d(x)) grad l(x)] = E_{x~alpha}[grad l(x)]."""
    alpha, q = np.asarray(alpha, np.float64), np.asarray(q, np.float64)
    d = np.asarray(domains, np.int64)
    if ((q <= 0) & (alpha > 0)).any():
        raise ValueError("the sampling distribution q is 0 on a domain the mixture weighs; "
                         "loss multipliers cannot reach it")
    out = np.zeros(d.shape, np.float64)
    np.divide(alpha[d], q[d], out=out, where=q[d] > 0)
    return out


def _dist() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- the object

class OnlineMixture:
    """Stage 3 in any training loop; see the module doc. Build it with ``from_workspace``.

    sampler / probe: MixtureSampler over the same index (and basis) with their own seeds;
    mixer: a Mixer (dga, dga-noema, doge, uniform, natural, is); batches: Batches (texts ->
    the model's batches); kind "basis" | "domain", ids (n,) and names (n,) of the mixer's entries;
    align_batch_size (B_dom, per probe), target_batch_size (B_spe); texts: doc id -> text reader
    (None: ``next_batch`` returns no texts); params: what ``write_run`` records.
    """

    def __init__(self, sampler: MixtureSampler, probe: MixtureSampler, mixer, batches: Batches, *,
                 kind: str, ids: np.ndarray, names: list[str], align_batch_size: int = 16,
                 target_batch_size: int = 16, seed: int = 0, texts=None, ws: Workspace | None = None,
                 params: dict | None = None, rank: int | None = None, world_size: int | None = None) -> None:
        if mixer.n != len(ids):
            raise ValueError(f"the mixer has {mixer.n} entries, ids name {len(ids)}")
        if align_batch_size < 1 or target_batch_size < 1:
            raise ValueError("align_batch_size and target_batch_size must be >= 1")
        self.sampler, self.probe, self.mixer, self.batches = sampler, probe, mixer, batches
        self.kind, self.ids, self.names = kind, np.asarray(ids, np.int64), list(names)
        self.align_batch_size, self.target_batch_size = int(align_batch_size), int(target_batch_size)
        self.texts, self.ws, self.params = texts, ws, dict(params or {})
        r, w = _dist()
        self._auto_dist = rank is None and world_size is None  # follow torch.distributed: checked on use
        self.rank, self.world_size = r if rank is None else int(rank), w if world_size is None else int(world_size)
        self.cycle = Cycle(batches.n_target, seed + TARGET_SALT) if batches.n_target else None
        self.log: list[dict] = []   # step, weights, alignment, grad_norm, target_norm, lr
        self.reweight_seconds, self.n_reweightings = 0.0, 0

    # ----- building from a workspace
    @classmethod
    def from_workspace(cls, ws: Workspace | str | Path, clusters: str, level: int, target: str,
                       basis: str | None = None, mixer: str = "dga", config: DGAConfig | None = None,
                       seed: int = 0, collate: Callable[[list[str]], Any] | None = None, *,
                       batches: Batches | None = None, align_batch_size: int = 16, target_batch_size: int = 16,
                       tokens_per_domain: int | None = None, general_holdout: float = 0.02,
                       eval_size: int = 64, rank: int | None = None, world_size: int | None = None) -> "OnlineMixture":
        """The mixture of a workspace's manifests, validated as `dgamix train` validates them.

        clusters / level: the clustering and tree level whose domains are mixed; target: the
        target set; basis: a basis file (distribution reweighting over its N bases; None = the k
        domains at ``level``); mixer: dga | dga-noema | doge | uniform | natural | is;
        config: DGA's settings (DGAConfig; its reweight_start / reweight_every decide when
        ``maybe_reweight`` works); seed: every sampler's and the target cycle's seed;
        collate(texts) -> a batch for ``loss_fn(model, batch)`` (needed by adaptive mixers);
        batches: instead of collate, any ``Batches`` (e.g. ``testbed.packing.PackedBatches``, what
        `dgamix train` aligns on);
        tokens_per_domain: limited-data budget (n_tokens of docs.parquet per domain);
        general_holdout / eval_size: the held-out generic slice never trained on (as in train);
        rank / world_size: default torch.distributed's (0 / 1 when it is not initialised).
        """
        ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        inp = mixture_inputs(ws, clusters, level, target, mixer, basis, config or DGAConfig(), seed,
                             tokens_per_domain, general_holdout, eval_size)
        from dgamix.pipeline.core.sources import DocTexts

        texts = DocTexts(ws)
        if collate is not None and batches is not None:
            raise ValueError("pass collate= or batches=, not both")
        if inp.adaptive and collate is None and batches is None:
            raise DgamixError(f"mixer {mixer!r} aligns gradients on batches of your model: pass collate= "
                              f"(a function from a list of texts to the batch your loss_fn takes).")
        batches = batches or TextBatches(texts, inp.reweight_texts, collate or (lambda t: t))
        return cls(inp.sampler, inp.probe, inp.mixer, batches, kind=inp.kind, ids=inp.ids, names=inp.names,
                   align_batch_size=align_batch_size, target_batch_size=target_batch_size, seed=seed,
                   texts=texts, ws=ws, rank=rank, world_size=world_size, params={**inp.params, "align_batch_size": align_batch_size,
                                               "target_batch_size": target_batch_size, "seed": seed})

    # ----- drawing training documents
    def weights(self) -> np.ndarray:
        """The mixer's current weights (n,), float64 on the simplex."""
        return self.mixer.weights()

    def domain_weights(self) -> np.ndarray:
        """The sampling distribution over the populated domains (K,) = alpha at the current weights."""
        return self.sampler.alpha(self.mixer.weights())

    def next_ids(self, n: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's next n training documents: (doc_ids (n,), domain ids (n,)), drawn with the
        current weights (or ``weights``). Ranks draw one global batch and keep disjoint slices."""
        self._check_dist()
        w = self.mixer.weights() if weights is None else weights
        docs, doms = self.sampler.sample(n * self.world_size, w)
        sl = slice(self.rank * n, (self.rank + 1) * n)
        return docs[sl], doms[sl]

    def next_batch(self, n: int, weights: np.ndarray | None = None) -> Batch:
        """This rank's next n training documents with their texts (when the mixture reads texts)."""
        docs, doms = self.next_ids(n, weights)
        return Batch(docs, doms, None if self.texts is None else self.texts[docs])

    def loss_weights(self, domains: np.ndarray, sampling: np.ndarray | None = None) -> np.ndarray:
        """Loss multipliers alpha_d / q_d for examples of ``domains`` (domain ids) when the data
        order cannot follow the weights: q = ``sampling`` over the populated domains (K,),
        default the natural distribution (every document equally likely). Multiply each example's
        loss by its multiplier and the expected gradient is the mixture's (``loss_weights``)."""
        index = self.sampler.index
        q = index.sizes / index.sizes.sum() if sampling is None else np.asarray(sampling, np.float64)
        pos = index.positions(np.asarray(domains, np.int64))
        if (pos < 0).any():
            raise ValueError(f"domain ids {np.asarray(domains)[pos < 0][:5].tolist()} have no documents here")
        return loss_weights(self.domain_weights(), q, pos)

    def _check_dist(self) -> None:
        if self._auto_dist and _dist() != (self.rank, self.world_size):
            raise DgamixError(f"the mixture was built as rank {self.rank} of {self.world_size} but torch.distributed "
                              f"now says rank {_dist()[0]} of {_dist()[1]}: build it after init_process_group.")

    # ----- reweighting
    def due(self, step: int) -> bool:
        """Whether ``maybe_reweight(step, ...)`` will align (DGAConfig.due for DGA; never for static)."""
        return self.mixer.needs_alignment(step)

    def log_weights(self, step: int, align: Alignments | None = None, lr: float | None = None) -> None:
        """Append the weights in force from ``step`` on to the log (with the alignments that made them)."""
        rec = {"step": int(step), "weights": self.mixer.weights().copy(), "alignment": None,
               "grad_norm": None, "target_norm": None, "lr": lr}
        if align is not None:
            rec.update(alignment=align.alignments.copy(), grad_norm=align.grad_norms.copy(),
                       target_norm=align.target_norm)
        self.log.append(rec)

    def _probes(self, owned: np.ndarray):
        """Every probe batch is built (the probe sampler advances the same on every rank); only
        the ones this rank owns are yielded."""
        n = self.mixer.n
        for j in range(n):
            onehot = np.zeros(n)
            onehot[j] = 1.0
            batch = self.batches.probe(lambda m: self.probe.sample(m, onehot)[0], self.align_batch_size)
            if owned[j]:
                yield batch

    def maybe_reweight(self, step: int, model: torch.nn.Module, loss_fn: Callable | None = None,
                       lr: float | None = None, device: str | torch.device | None = None) -> Reweighting | None:
        """On a reweighting step (``due(step)``): align every basis's gradient with the target's on
        ``model`` as it is now, update the weights, log them; returns what it did, else None.

        loss_fn(model, batch) -> scalar (default ``default_loss``); lr: the learning rate now
        (used by DGAConfig.eta_schedule="lr"); device: where batches go (default: the model's).
        The gradients are taken in eval mode (no dropout: deterministic, whatever ran before, and
        no draw from torch's RNG), and the model's mode is restored. A first call that does not
        reweight logs the starting weights (a first call that does logs the weights it makes).
        Raises AlignmentError on a NaN / inf alignment (weights unchanged).
        """
        if not self.due(step):
            if not self.log:
                self.log_weights(step, None, lr)
            return None
        t0 = time.perf_counter()
        self._check_dist()
        model = getattr(model, "module", model) if isinstance(
            model, torch.nn.parallel.DistributedDataParallel) else model
        loss_fn = loss_fn or default_loss
        dev = device if device is not None else next(model.parameters()).device
        if self.cycle is None:
            raise DgamixError("the mixture has no target examples to align with")
        target = _to(self.batches.target(self.cycle.next(self.target_batch_size)), dev)
        n = self.mixer.n
        owned = (np.arange(n) % self.world_size) == self.rank
        cfg = getattr(self.mixer, "config", None)
        was_training = model.training
        model.eval()
        try:
            align = gradient_alignments(model, loss_fn, target, (_to(b, dev) for b in self._probes(owned)),
                                        clip=None if cfg is None else cfg.clip,
                                        params=None if cfg is None else cfg.align_params)
        except ValueError as e:  # a loss_fn that is no scalar, an align_params matching nothing
            raise DgamixError(f"cannot align at step {step}: {e}.") from None
        finally:
            model.train(was_training)
        if self.world_size > 1:
            align = self._gather(align, owned, dev)
        if not (np.isfinite(align.alignments).all() and np.isfinite(align.target_norm)):
            raise AlignmentError("non-finite gradient alignment (NaN or inf)", step)
        before = self.mixer.weights()
        try:
            self.mixer.update(step, align.alignments, grad_norms=align.grad_norms,
                              target_norm=align.target_norm, lr=lr)
        except ValueError as e:
            raise AlignmentError(f"mixer update failed ({e})", step) from None
        self.log_weights(step, align, lr)
        seconds = time.perf_counter() - t0
        self.reweight_seconds += seconds
        self.n_reweightings += 1
        return Reweighting(int(step), before, self.mixer.weights(), align.alignments, align.grad_norms,
                           align.target_norm, seconds)

    def _gather(self, align: Alignments, owned: np.ndarray, dev) -> Alignments:
        """Every rank's owned alignments into one (n,) vector on all ranks (sum with zeros elsewhere)."""
        n = owned.size
        buf = torch.zeros(2 * n + 1, dtype=torch.float64,
                          device=dev if torch.distributed.get_backend() == "nccl" else "cpu")
        buf[:n][torch.from_numpy(owned)] = torch.from_numpy(align.alignments).to(buf.device)
        buf[n:2 * n][torch.from_numpy(owned)] = torch.from_numpy(align.grad_norms).to(buf.device)
        if self.rank == 0:
            buf[2 * n] = align.target_norm  # identical on every rank (same model, same target batch)
        torch.distributed.all_reduce(buf)
        out = buf.cpu().numpy()
        return Alignments(out[:n].copy(), out[n:2 * n].copy(), float(out[2 * n]))

    # ----- state
    def state_dict(self) -> dict:
        """Everything that decides the next batches and weights, as plain Python / torch values
        (``torch.load(..., weights_only=True)`` reads it): both samplers, the target cycle, the
        mixer, the weight log."""
        return to_plain({"format": STATE_FORMAT, "rank": self.rank, "world_size": self.world_size,
                         "sampler": self.sampler.state_dict(), "probe": self.probe.state_dict(),
                         "target": None if self.cycle is None else self.cycle.state_dict(),
                         "mixer": self.mixer.state_dict(), "log": self.log,
                         "reweight_seconds": self.reweight_seconds, "n_reweightings": self.n_reweightings})

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly from ``state_dict``: the next batch, weights and RNGs are restored."""
        state = from_plain(state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"mixture state format {state.get('format')!r}; this dgamix reads {STATE_FORMAT}")
        if state["world_size"] != self.world_size:
            raise ValueError(f"the state was saved with {state['world_size']} ranks, this run has {self.world_size}")
        self.sampler.load_state_dict(state["sampler"])
        self.probe.load_state_dict(state["probe"])
        if self.cycle is not None:
            self.cycle.load_state_dict(state["target"])
        self.mixer.load_state_dict(state["mixer"])
        self.log = [dict(r) for r in state["log"]]
        self.reweight_seconds, self.n_reweightings = state["reweight_seconds"], state["n_reweightings"]

    # ----- outputs
    def write_run(self, name: str, metrics: list[dict] | None = None, step: int | None = None,
                  repetitions: bool = True) -> Path:
        """Write WS/runs/NAME/ (weights.parquet, metrics.parquet, repetitions.parquet) like a
        `dgamix train` run, so `dgamix report` and `dgamix schedule --run NAME` read it.

        metrics: rows {step, split, loss[, tokens, seconds]} of the user's own evaluations (split
        e.g. "target", "general", "train"); step: the last step, logged as the final weights.
        """
        if self.ws is None:
            raise DgamixError("write_run needs a mixture built with OnlineMixture.from_workspace")
        check_name(name, "run", "name")
        from dgamix.mixing.runlog import write_outputs

        log = list(self.log)  # the final record goes to the file only: the mixture's own log is unchanged
        if step is not None and not (log and log[-1]["step"] == step):
            log.append({"step": int(step), "weights": self.mixer.weights(), "alignment": None, "grad_norm": None,
                        "target_norm": None, "lr": None})
        rows = [{"tokens": 0, "seconds": float("nan"), **m} for m in (metrics or [])]
        s = self.sampler
        reps = {"domain": s.index.domains, "n_docs": s.pool_sizes, "draws": s.draws, "epochs": s.epochs}
        write_outputs(self.ws, name, rows, log, self.kind, self.ids, self.names,
                      {**self.params, "run_by": "user loop"}, reps if repetitions else None)
        return self.ws.run_dir(name)


def _to(batch: Any, device) -> Any:
    """``batch`` (a tensor, or a mapping / list of tensors) on ``device``."""
    if hasattr(batch, "to"):  # a tensor, or a tokenizer's BatchEncoding
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch
