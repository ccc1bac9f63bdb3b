"""DGA in your own training loop: ``OnlineMixture``, one object that owns stage 3's state.

    mix = OnlineMixture.from_workspace("ws", clusters="k64-4", level=1, target="mmlu",
                                       basis="groups", collate=collate)   # collate(texts) -> batch
    for step in range(steps):
        mix.maybe_reweight(step, model)            # on reweighting steps: N + 1 backward passes
        batch = mix.next_batch(16)                 # .doc_ids, .domains, .texts
        loss = loss_fn(model, collate(batch.texts)); loss.backward(); opt.step()
    torch.save(mix.state_dict(), "mix.pt")         # plain types: loads with weights_only=True
    mix.write_run("mine", metrics=rows)            # then `dgamix report`, `dgamix schedule --run mine`

Your own domains instead of a workspace's clusters: ``OnlineMixture.from_arrays(doc_ids, domains,
texts, target_texts, collate=collate)`` (a domain label per document, a text reader, the target's
texts); the same sampler, DGA, state and resume.

A state knows its run (``state_dict()["identity"]``: the inputs' fingerprints, clustering and level,
target, basis, mixer, seed, DGA config, world size, batch size): ``load_state_dict`` refuses a state of
another run with one line naming every field that differs; ``strict=False`` accepts a deliberate
change of the DGA config or of the batch sizes.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from dgamix.mixing.alignment import Alignments, gradient_alignments, is_fsdp
from dgamix.mixing.dga import DGAConfig
from dgamix.mixing.inputs import MAX_DOMAIN_PROBES, PROBE_SALT, keyword, mixture_inputs, pool_definition, resolve_config
from dgamix.mixing.mixers import ADAPTIVE, make_mixer
from dgamix.mixing.sampler import DomainIndex, MixtureSampler
from dgamix.mixing.state import STATE_FORMAT, from_plain, to_plain
from dgamix.pipeline.core.errors import DgamixError, first_line
from dgamix.pipeline.core.workspace import Workspace, check_name

__all__ = ["OnlineMixture", "Batch", "Reweighting", "AlignmentError", "Batches", "TextBatches", "ArrayTexts",
           "loss_weights", "default_loss"]

TARGET_SALT = 7919        # target cycle seed = seed + TARGET_SALT
FROM_ARRAYS_MIXERS = ("dga", "dga-noema", "doge", "uniform", "natural")  # "is" needs a basis: from_arrays has none

# A state's identity (``OnlineMixture.identity``): RUN_FIELDS say which run it belongs to and are never
# accepted when they differ; CONFIG_FIELDS are settings a resume may change on purpose (strict=False).
RUN_FIELDS = ("inputs", "clusters", "level", "target", "basis", "mixer", "kind", "entries", "seed",
              "tokens_per_domain", "general_holdout", "eval_size", "world_size")
CONFIG_FIELDS = ("config", "batch_size", "align_batch_size", "target_batch_size")
# the inputs' fingerprints a mixture records (params keys): a workspace's manifests, or from_arrays' arrays
INPUT_KEYS = {"corpus": "corpus", "clusters_file": "clustering", "target_file": "target file",
              "basis_file": "basis file", "arrays": "doc ids and domains", "target_texts": "target texts"}


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


class ArrayTexts:
    """Texts by doc id from what you have: ``reader[doc_ids]`` -> a list of str.

    source: a callable (doc ids, an (m,) int64 array -> m strings), a numpy array of strings
    indexed by doc id, or a sequence (a list, a ``datasets`` column: ``source[i]`` is doc i's text).
    """

    def __init__(self, source) -> None:
        self.source = source
        if isinstance(source, np.ndarray):
            self.kind = "array"
        elif callable(source):
            self.kind = "callable"
        elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
            self.kind = "sequence"
        else:
            raise DgamixError(f"texts= takes a callable (doc ids -> list of str), a numpy array or a list of texts "
                              f"indexed by doc id; got a {type(source).__name__}.")

    @property
    def size(self) -> int | None:
        """Number of texts (doc ids 0..size-1 readable); None for a callable (unknown)."""
        return None if self.kind == "callable" else len(self.source)

    def __len__(self) -> int:
        if self.kind == "callable":
            raise TypeError("texts given as a callable have no length (pass a list or an array to have one)")
        return len(self.source)

    def __getitem__(self, doc_ids) -> list[str]:
        ids = np.asarray(doc_ids, np.int64)
        if self.kind == "array":
            out = self.source[ids].tolist()
        elif self.kind == "callable":
            out = list(self.source(ids))
        else:
            out = [self.source[int(i)] for i in ids]
        if len(out) != ids.size or not all(isinstance(t, str) for t in out):
            bad = next((type(t).__name__ for t in out if not isinstance(t, str)), f"{len(out)} values")
            raise DgamixError(f"the texts of {ids.size} doc ids came back as {bad}, not {ids.size} strings; "
                              f"texts= must give one str per doc id.")
        return out


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
    """Stage 3 in any training loop; see the module doc. Build it with ``from_workspace`` (a
    workspace's clusters) or ``from_arrays`` (domains you name).

    sampler / probe: MixtureSampler over the same index (and basis) with their own seeds;
    mixer: a Mixer (dga, dga-noema, doge, uniform, natural, is); batches: Batches (texts ->
    the model's batches); kind "basis" | "domain", ids (n,) and names (n,) of the mixer's entries;
    align_batch_size (B_dom, per probe), target_batch_size (B_spe); texts: doc id -> text reader
    (None: ``next_batch`` returns no texts); params: what ``write_run`` records (and the inputs'
    fingerprints the state's identity holds); fixed_batch: every draw takes the same number of
    documents (the first draw's, recorded in the state); False for a caller that draws as many as
    it needs (``testbed.packing.Packer``, what `dgamix train` does).
    """

    def __init__(self, sampler: MixtureSampler, probe: MixtureSampler, mixer, batches: Batches, *,
                 kind: str, ids: np.ndarray, names: list[str], align_batch_size: int = 16,
                 target_batch_size: int = 16, seed: int = 0, texts=None, ws: Workspace | None = None,
                 params: dict | None = None, rank: int | None = None, world_size: int | None = None,
                 fixed_batch: bool = True) -> None:
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
        self.fixed_batch = bool(fixed_batch)
        self.batch_size: int | None = None  # documents per draw: the first draw's (fixed_batch)
        self.seed = int(seed)

    @property
    def identity(self) -> dict:
        """Which run this mixture is (plain values): the inputs' fingerprints, clustering, level,
        target, basis, mixer, kind and number of entries, seed, token budget and held-out slice,
        world size (RUN_FIELDS), and its settings: DGA config, batch sizes (CONFIG_FIELDS)."""
        p = self.params
        cfg = getattr(self.mixer, "config", None)
        holdout, eval_size = pool_definition(p) if p.get("clusters") is not None else (None, None)
        return {"inputs": {k: p[k] for k in INPUT_KEYS if p.get(k) is not None},
                "clusters": p.get("clusters"), "level": p.get("level"), "target": p.get("target"),
                "basis": p.get("basis"), "mixer": p.get("mixer", getattr(self.mixer, "name", None)),
                "kind": self.kind, "entries": len(self.ids), "seed": self.seed,
                "tokens_per_domain": p.get("tokens_per_domain"), "general_holdout": holdout, "eval_size": eval_size,
                "world_size": self.world_size, "config": None if cfg is None else asdict(cfg),
                "batch_size": self.batch_size, "align_batch_size": self.align_batch_size,
                "target_batch_size": self.target_batch_size}

    # ----- building from a workspace
    @classmethod
    def from_workspace(cls, ws: Workspace | str | Path, clusters: str, level: int, target: str,
                       basis: str | None = None, mixer: str = "dga", config: DGAConfig | None = None,
                       seed: int = 0, collate: Callable[[list[str]], Any] | None = None, *,
                       batches: Batches | None = None, align_batch_size: int = 16, target_batch_size: int = 16,
                       tokens_per_domain: int | None = None, general_holdout: float = 0.02,
                       eval_size: int = 64, rank: int | None = None, world_size: int | None = None,
                       fixed_batch: bool = True) -> "OnlineMixture":
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
        rank / world_size: default torch.distributed's (0 / 1 when it is not initialised);
        fixed_batch: see the class doc. Errors name these parameters (``level=3``).
        """
        ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        inp = mixture_inputs(ws, clusters, level, target, mixer, basis, config or DGAConfig(), seed,
                             tokens_per_domain, general_holdout, eval_size, name=keyword)
        from dgamix.pipeline.core.sources import DocTexts

        texts = DocTexts(ws)
        batches = _text_batches(mixer, inp.adaptive, texts, inp.reweight_texts, collate, batches)
        return cls(inp.sampler, inp.probe, inp.mixer, batches, kind=inp.kind, ids=inp.ids, names=inp.names,
                   align_batch_size=align_batch_size, target_batch_size=target_batch_size, seed=seed,
                   texts=texts, ws=ws, rank=rank, world_size=world_size, fixed_batch=fixed_batch,
                   params={**inp.params, "align_batch_size": align_batch_size, "target_batch_size": target_batch_size,
                           "seed": seed})

    # ----- building from your own domains
    @classmethod
    def from_arrays(cls, doc_ids, domains, texts, target_texts: list[str], *, domain_names=None,
                    mixer: str = "dga", config: DGAConfig | None = None, seed: int = 0,
                    collate: Callable[[list[str]], Any] | None = None, batches: Batches | None = None,
                    align_batch_size: int = 16, target_batch_size: int = 16, rank: int | None = None,
                    world_size: int | None = None, fixed_batch: bool = True) -> "OnlineMixture":
        """The mixture of domains you name, without a workspace (domain reweighting over them).

        doc_ids (D,) ints >= 0, each once: the documents; domains (D,): each document's domain, as
        ints >= 0 (domain ids; names from ``domain_names[id]``, default str(id)) or strings (the
        names; ids are their positions in ``domain_names``, default the sorted distinct names);
        texts: doc id -> text (``ArrayTexts``: a callable taking an int64 array of doc ids and
        returning a list of str, a numpy array or a list indexed by doc id; only the drawn
        documents are read); target_texts: the target's examples, aligned with (needed by dga,
        dga-noema, doge); mixer: dga | dga-noema | doge | uniform | natural (natural = domain
        sizes); config, seed, collate, batches, align_batch_size, target_batch_size, rank,
        world_size, fixed_batch: as in ``from_workspace``. DGAConfig.init must be "uniform" (the
        target's domains are unknown here).

        The state's identity holds a fingerprint of doc_ids, domains, the names and target_texts
        (not of the texts: they are read, not stored). ``write_run`` needs ``workspace=``.
        """
        ids, dom, names = _labelled_docs(doc_ids, domains, domain_names)
        if mixer not in FROM_ARRAYS_MIXERS:
            raise DgamixError(f"from_arrays mixes your domains with {'|'.join(FROM_ARRAYS_MIXERS)}, not "
                              f"{keyword('mixer', mixer)} (importance sampling needs a workspace's basis).")
        config = resolve_config(mixer, config or DGAConfig(), keyword)
        adaptive = mixer in ADAPTIVE
        if adaptive and config.init != "uniform":
            raise DgamixError(f"{keyword('init', config.init)} needs the target's domains, which from_arrays does not "
                              f"know; use {keyword('init', 'uniform')}.")
        target_texts = [str(t) for t in target_texts]
        if adaptive and not target_texts:
            raise DgamixError(f"{keyword('mixer', mixer)} aligns with the target: target_texts is empty.")
        reader = texts if isinstance(texts, ArrayTexts) else ArrayTexts(texts)
        if reader.size is not None and int(ids.max()) >= reader.size:
            raise DgamixError(f"doc id {int(ids.max())} has no text: texts holds {reader.size} (doc ids index it).")
        index = DomainIndex.from_arrays(ids, dom, k=len(names))
        if adaptive and len(index) > MAX_DOMAIN_PROBES:
            raise DgamixError(f"domain reweighting over {len(index):,} domains needs {len(index) + 1:,} backward "
                              f"passes per reweighting; group your documents into fewer domains.")
        init = index.sizes.astype(np.float64) if mixer == "natural" else None
        mix = make_mixer(mixer, len(index), init=init, config=config)
        sampler = MixtureSampler(index, seed=seed)
        probe = MixtureSampler(index, seed=seed + PROBE_SALT, pool_seed=seed)  # as from_workspace's probes
        batches = _text_batches(mixer, adaptive, reader, target_texts, collate, batches)
        params = {"clusters": None, "level": None, "target": None, "mixer": mixer, "basis": None, **asdict(config),
                  "tokens_per_domain": None, "arrays": _arrays_fingerprint(ids, dom, names),
                  "target_texts": _texts_fingerprint(target_texts), "align_batch_size": align_batch_size,
                  "target_batch_size": target_batch_size, "seed": seed, "domains_from": "arrays"}
        return cls(sampler, probe, mix, batches, kind="domain", ids=index.domains.copy(),
                   names=[names[d] for d in index.domains], align_batch_size=align_batch_size,
                   target_batch_size=target_batch_size, seed=seed, texts=reader, ws=None, params=params, rank=rank,
                   world_size=world_size, fixed_batch=fixed_batch)

    # ----- drawing training documents
    def weights(self) -> np.ndarray:
        """The mixer's current weights (n,), float64 on the simplex."""
        return self.mixer.weights()

    def domain_weights(self) -> np.ndarray:
        """The sampling distribution over the populated domains (K,) = alpha at the current weights."""
        return self.sampler.alpha(self.mixer.weights())

    def next_ids(self, n: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's next n training documents: (doc_ids (n,), domain ids (n,)), drawn with the
        current weights (or ``weights``). Ranks draw one global batch and keep disjoint slices.
        With fixed_batch, n is the same on every draw: the first draw's, or the state's after
        ``load_state_dict`` (another n is refused here, on the first draw after the load)."""
        self._check_dist()
        if self.fixed_batch:
            if self.batch_size is None:
                self.batch_size = int(n)
            elif int(n) != self.batch_size:
                raise DgamixError(f"this mixture draws {self.batch_size} documents at a time (its first draw, or the "
                                  f"state it resumed from) but was asked for n={n}: keep the batch size of the run; "
                                  f"build the mixture with fixed_batch=False for draws of varying size; or, to change "
                                  f"it on resume, load the state with load_state_dict(state, strict=False).")
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
        Raises AlignmentError on a NaN / inf alignment (weights unchanged), DgamixError for a model
        without a trainable parameter.
        """
        if not self.due(step):
            if not self.log:
                self.log_weights(step, None, lr)
            return None
        t0 = time.perf_counter()
        self._check_dist()
        model = getattr(model, "module", model) if isinstance(
            model, torch.nn.parallel.DistributedDataParallel) else model
        if not any(p.requires_grad for p in model.parameters()):
            raise DgamixError(f"maybe_reweight at step {step}: the model has no trainable parameter (requires_grad is "
                              f"False for all of them), so there is no gradient to align and the weights could never "
                              f"move; pass the model you train.")
        loss_fn = loss_fn or default_loss
        dev = device if device is not None else next(model.parameters()).device
        if self.cycle is None:
            raise DgamixError("the mixture has no target examples to align with")
        target = _to(self.batches.target(self.cycle.next(self.target_batch_size)), dev)
        n = self.mixer.n
        sharded = is_fsdp(model)  # FSDP2: every rank aligns every basis, collectively (alignment.fsdp_alignments)
        owned = np.ones(n, bool) if sharded else (np.arange(n) % self.world_size) == self.rank
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
        if self.world_size > 1 and not sharded:
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
        (``torch.load(..., weights_only=True)`` reads it): the run's ``identity``, both samplers,
        the target cycle, the mixer, the weight log."""
        return to_plain({"format": STATE_FORMAT, "identity": self.identity, "rank": self.rank,
                         "world_size": self.world_size,
                         "sampler": self.sampler.state_dict(), "probe": self.probe.state_dict(),
                         "target": None if self.cycle is None else self.cycle.state_dict(),
                         "mixer": self.mixer.state_dict(), "log": self.log,
                         "reweight_seconds": self.reweight_seconds, "n_reweightings": self.n_reweightings})

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue exactly from ``state_dict``: the next batch, the weights and the mixture's own
        RNGs (samplers, target cycle) are restored; torch's RNG (dropout) is yours to save.

        The state must be this run's: a field of ``identity`` that differs is refused with one
        DgamixError line naming each (``seed 0 here, 1 in the state``). strict=False accepts
        different settings (CONFIG_FIELDS: the DGA config, which this mixture keeps, and the batch
        sizes), never another run (RUN_FIELDS). The batch size: a mixture that has not drawn yet
        takes the state's (strict) and refuses another n on its first draw; with strict=False the
        next draw sets it. A state of another format (an older dgamix) is refused.
        """
        state = from_plain(state)
        fmt = state.get("format") if isinstance(state, Mapping) else None
        if fmt != STATE_FORMAT or "identity" not in state:
            raise DgamixError(f"this mixture state has format {fmt} (an older dgamix, or not a state_dict of "
                              f"OnlineMixture); this dgamix reads format {STATE_FORMAT}, whose states record their "
                              f"run: start the mixture afresh, or resume with the dgamix that wrote it.")
        saved, here = state["identity"], self.identity
        run_diff = _differences(here, saved, RUN_FIELDS)
        config_diff = _differences(here, saved, CONFIG_FIELDS)
        if run_diff or (strict and config_diff):
            hint = ("" if run_diff else "; pass strict=False to continue it with the new settings")
            raise DgamixError(f"the state is from another run: {'; '.join(run_diff + (config_diff if strict else []))}"
                              f"{hint}.")
        config = getattr(self.mixer, "config", None)
        try:
            self.sampler.load_state_dict(state["sampler"])
            self.probe.load_state_dict(state["probe"])
            if self.cycle is not None:
                self.cycle.load_state_dict(state["target"])
            self.mixer.load_state_dict(state["mixer"])
        except (ValueError, KeyError, TypeError) as e:
            raise DgamixError(f"the state does not fit this mixture ({first_line(e)}); load the state of this "
                              f"run.") from None
        if config is not None:  # the mixer's settings are this mixture's (equal unless strict=False)
            self.mixer.config = config
        if self.batch_size is None and strict:
            self.batch_size = saved.get("batch_size")
        self.log = [dict(r) for r in state["log"]]
        self.reweight_seconds, self.n_reweightings = state["reweight_seconds"], state["n_reweightings"]

    # ----- outputs
    def write_run(self, name: str, metrics: list[dict] | None = None, step: int | None = None,
                  repetitions: bool = True, *, model: Mapping[str, Any] | None = None,
                  workspace: Workspace | str | Path | None = None) -> Path:
        """Write WS/runs/NAME/ (weights.parquet, metrics.parquet, repetitions.parquet) like a
        `dgamix train` run, so `dgamix report`, `dgamix weights` and `dgamix schedule --run NAME`
        read it. The params record the pool the run trained on (held-out slice, token budget), so
        a schedule replays it on the same documents.

        metrics: rows {step, split, loss[, tokens, seconds]} of the user's own evaluations (split
        e.g. "target", "general", "train"); step: the last step, logged as the final weights;
        model: the model's identity (``runlog.model_identity(model, tokenizer)``: tokenizer, vocab
        size, parameters), so that the report does not draw losses of different vocabularies on one
        axis; workspace: where a ``from_arrays`` mixture writes its run (required there; its schedule
        cannot be replayed by `dgamix schedule --run`: its domains are yours). A ``from_workspace``
        mixture writes to its own workspace.
        """
        ws = workspace if workspace is None or isinstance(workspace, Workspace) else Workspace(workspace)
        if ws is not None and self.ws is not None and ws.root.resolve() != self.ws.root.resolve():
            raise DgamixError(f"this mixture was built from workspace {self.ws.root}: its run goes there "
                              f"(drop workspace=).")
        ws = ws or self.ws
        if ws is None:
            raise DgamixError("write_run(name, workspace=FOLDER): a mixture built from_arrays has no workspace; pass "
                              "the folder whose runs/NAME/ gets the run (`dgamix report --workspace FOLDER` reads it).")
        if model is not None and not isinstance(model, Mapping):
            raise DgamixError(f"write_run(model=...) takes a dict such as runlog.model_identity(model, tokenizer), "
                              f"not a {type(model).__name__}.")
        check_name(name, "run", "name")
        from dgamix.mixing.runlog import write_outputs

        log = list(self.log)  # the final record goes to the file only: the mixture's own log is unchanged
        if step is not None and not (log and log[-1]["step"] == step):
            log.append({"step": int(step), "weights": self.mixer.weights(), "alignment": None, "grad_norm": None,
                        "target_norm": None, "lr": None})
        rows = [{"tokens": 0, "seconds": float("nan"), **m} for m in (metrics or [])]
        s = self.sampler
        reps = {"domain": s.index.domains, "n_docs": s.pool_sizes, "draws": s.draws, "epochs": s.epochs}
        write_outputs(ws, name, rows, log, self.kind, self.ids, self.names,
                      {**self.params, "run_by": "user loop"}, reps if repetitions else None,
                      model=None if model is None else dict(model))
        return ws.run_dir(name)


def _to(batch: Any, device) -> Any:
    """``batch`` (a tensor, or a mapping / list of tensors) on ``device``."""
    if hasattr(batch, "to"):  # a tensor, or a tokenizer's BatchEncoding
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _text_batches(mixer: str, adaptive: bool, texts, target_texts: list[str], collate, batches) -> Batches:
    """The Batches an adaptive mixer aligns on: ``batches``, or texts through ``collate``."""
    if collate is not None and batches is not None:
        raise DgamixError("pass collate= or batches=, not both.")
    if adaptive and collate is None and batches is None:
        raise DgamixError(f"mixer {mixer!r} aligns gradients on batches of your model: pass collate= "
                          f"(a function from a list of texts to the batch your loss_fn takes).")
    return batches or TextBatches(texts, target_texts, collate or (lambda t: t))


def _labelled_docs(doc_ids, domains, domain_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(doc ids (D,) int64, domain ids (D,) int64, names by domain id) of from_arrays' arguments."""
    ids = np.asarray(doc_ids)
    if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
        raise DgamixError(f"doc_ids must be a 1-d array of integers; got shape {ids.shape}, dtype {ids.dtype}.")
    ids = ids.astype(np.int64)
    if not ids.size:
        raise DgamixError("doc_ids is empty: no documents to mix.")
    if ids.min() < 0:
        raise DgamixError(f"doc ids must be >= 0; got {int(ids.min())}.")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DgamixError(f"doc ids {uniq[counts > 1][:5].tolist()} appear more than once (a document has one domain).")
    labels = np.asarray(domains)
    if labels.shape != ids.shape:
        raise DgamixError(f"domains has shape {labels.shape}, doc_ids {ids.shape}: one label per document.")
    if labels.dtype.kind in "iu":
        dom = labels.astype(np.int64)
        if dom.min() < 0:
            raise DgamixError(f"domain ids must be >= 0; got {int(dom.min())}.")
        k = int(dom.max()) + 1
        names = [str(d) for d in range(k)] if domain_names is None else [str(n) for n in domain_names]
        if len(names) < k:
            raise DgamixError(f"domain_names has {len(names)} names but the domain ids go up to {k - 1}.")
    elif labels.dtype.kind in "UO":
        text = labels.astype(str)
        names = sorted(set(text.tolist())) if domain_names is None else [str(n) for n in domain_names]
        pos = {n: i for i, n in enumerate(names)}
        missing = sorted(set(text.tolist()) - set(pos))
        if missing:
            raise DgamixError(f"domains {missing[:5]} are not in domain_names.")
        dom = np.array([pos[t] for t in text.tolist()], np.int64)
    else:
        raise DgamixError(f"domains must be ints (domain ids) or strings (domain names); got dtype {labels.dtype}.")
    if len(set(names)) != len(names):
        raise DgamixError("domain_names repeats a name: each domain needs its own.")
    return ids, dom, names


def _arrays_fingerprint(ids: np.ndarray, dom: np.ndarray, names: list[str]) -> str:
    """A short sha256 of the documents, their domains and the domain names."""
    import hashlib
    import json

    h = hashlib.sha256(np.ascontiguousarray(ids, "<i8").tobytes())
    h.update(np.ascontiguousarray(dom, "<i8").tobytes())
    h.update(json.dumps(names).encode())
    return h.hexdigest()[:16]


def _texts_fingerprint(texts: list[str]) -> str:
    """A short sha256 of a list of texts (each length-prefixed: no two lists collide by concatenation)."""
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:16]


def _show(v: Any) -> str:
    return "none" if v is None else repr(v) if isinstance(v, str) and " " in v else str(v)


def _differences(here: dict, saved: dict, fields: tuple[str, ...]) -> list[str]:
    """'FIELD X here, Y in the state' for each field of ``fields`` that differs (the DGA config and the
    inputs field by field; a batch size not yet known on either side is not a difference)."""
    out = []
    for f in fields:
        a, b = here.get(f), saved.get(f)
        if f == "batch_size" and (a is None or b is None):
            continue
        if f in ("config", "inputs") and isinstance(a, dict) and isinstance(b, dict):
            label = INPUT_KEYS if f == "inputs" else {}
            out += [f"{label.get(k, k)} {_show(a.get(k))} here, {_show(b.get(k))} in the state"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{f.replace('_', ' ')} {_show(a)} here, {_show(b)} in the state")
    return out
