"""Where the per-shard work of a stage runs: in this process (``local``) or on Ray (``ray``).

A stage describes its shard work as a *factory*: a picklable callable that builds the heavy
object once per worker (the encoder, the centroid tree) and returns ``work(job, tick) -> dict``.
``work`` reads the job's input shard, computes, writes the output shard atomically
(:mod:`dgamix.pipeline.core.manifest`) and returns a small summary; ``tick(n)`` (local only) moves the bar.

- :func:`map_shards` runs the jobs: locally a plain loop over one ``work``; on Ray a Ray Data
  ``map_batches`` over the jobs with an actor pool (``ActorPoolStrategy``), each actor calling
  the factory once. Actors write the output files themselves (no shard data flows back through
  the driver), so on a cluster the workspace must be on storage every node mounts at the same path.
  Results come back in job order. Which shards to run (resume) is decided by the stage before.
- :func:`map_tasks` runs independent calls of a pure function (the k-means nodes of a level)
  as Ray tasks, results in call order; locally a plain loop.
- :func:`session` starts (or connects to) Ray for the duration of a stage and shuts down what
  it started. A driver that already called ``ray.init`` (a notebook, the tests) keeps its instance.

Ray is an optional dependency (``pip install -e '.[ray]'``); it is imported only for ``ray``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from dgamix.pipeline.core.errors import DgamixError, first_line

ENGINES = ("local", "ray")
INSTALL_HINT = "pip install -e '.[ray]'"


def require_device(device: str) -> None:
    """A CUDA device is visible to this process when ``device`` is cuda[:N] (other torch devices,
    e.g. mps, are left to torch)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DgamixError(f"--device {device}: torch sees no CUDA device here (torch.cuda.is_available() is "
                              f"False); use --device cpu, or install a CUDA build of torch.")


@dataclass(frozen=True)
class EngineConfig:
    """How shard work is scheduled. Does not change any result (manifests are the same)."""

    name: str = "local"              # local (this process) | ray
    address: str | None = None       # Ray: cluster address ("auto", "HOST:6379", "ray://HOST:10001"); None: start a local instance
    num_workers: int | None = None   # Ray: actors in the pool; None: as many as the cluster's CPUs (GPUs) allow
    gpus_per_worker: float = 0.0     # Ray: GPUs reserved per actor (use with --device cuda)
    cpus_per_worker: float = 1.0     # Ray: CPUs reserved per actor (its intra-op threads)

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"

    def check(self) -> "EngineConfig":
        """Validate the options; for ``ray`` also that Ray is installed. Returns self."""
        if self.name not in ENGINES:
            raise DgamixError(f"--engine {self.name!r} is unknown; use --engine local or --engine ray.")
        if self.num_workers is not None and self.num_workers < 1:
            raise DgamixError(f"--num-workers {self.num_workers} must be at least 1 (or left out: all the cluster's CPUs).")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise DgamixError("--gpus-per-worker must be >= 0 and the CPUs per worker > 0.")
        if not self.is_ray and (self.address or self.num_workers or self.gpus_per_worker):
            raise DgamixError("--ray-address, --num-workers and --gpus-per-worker need --engine ray.")
        if self.is_ray:
            require_ray()
        return self


LOCAL = EngineConfig()
LOCAL_DEVICE = "cpu"  # where a stage computes unless told (--device)


def require_ray():
    """The ``ray`` module (with Ray Data), or a DgamixError naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DgamixError(f"--engine ray needs Ray (with Ray Data), which is not installed; {INSTALL_HINT} "
                          f"(or `pip install 'ray[data]'`), or use --engine local.") from None
    return ray


@contextlib.contextmanager
def session(engine: EngineConfig):
    """Ray connected for the block (no-op for ``local``); shuts down only an instance it started."""
    if not engine.is_ray:
        yield
        return
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        try:
            ray.init(address=engine.address or "local", **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"at --ray-address {engine.address}" if engine.address else "locally"
            raise DgamixError(f"cannot start or reach Ray {where} ({first_line(e)}); start a "
                              f"cluster with `ray start --head` and pass --ray-address auto, or leave out "
                              f"--ray-address to start a local instance.") from None
        started = True
    # the stage shows its own bar: Ray Data's bars and logs are off for the session, then as they were
    log = logging.getLogger("ray.data")
    ctx = ray.data.DataContext.get_current()
    before = (log.level, ctx.enable_progress_bars, ctx.print_on_execution_start)
    log.setLevel(logging.ERROR)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield
    finally:
        log.setLevel(before[0])
        ctx.enable_progress_bars, ctx.print_on_execution_start = before[1:]
        if started:
            ray.shutdown()


def pool_size(engine: EngineConfig, jobs: int) -> int:
    """Actors for ``jobs`` jobs: --num-workers, else what the cluster's CPUs (and GPUs) hold; <= jobs."""
    import ray

    n = engine.num_workers
    if n is None:
        res = ray.cluster_resources()
        n = int(res.get("CPU", 1) // engine.cpus_per_worker)
        if engine.gpus_per_worker:
            n = min(n, int(res.get("GPU", 0) // engine.gpus_per_worker))
        if n < 1:
            raise DgamixError(f"the Ray cluster has {res.get('CPU', 0)} CPUs and {res.get('GPU', 0)} GPUs, not enough "
                              f"for one worker ({engine.cpus_per_worker} CPU, {engine.gpus_per_worker} GPU); lower "
                              f"--gpus-per-worker or add nodes.")
    return max(1, min(n, jobs))


def threads_per_worker(engine: EngineConfig) -> int:
    """Intra-op threads a worker may use: its reserved CPUs (at least 1)."""
    return max(1, int(math.floor(engine.cpus_per_worker)))


class _Failure:
    """A user error (DgamixError) raised in a worker, carried back as a value: Ray Data keeps only
    the text of exceptions raised in actors, so the driver re-raises it as a one-line DgamixError."""

    def __init__(self, message: str):
        self.message = message


class _ShardActor:
    """A Ray Data actor: builds the factory's work once, then runs one job per row.

    The factory (small: configuration and paths, no model or data) is a class attribute of a
    per-call subclass (see :func:`map_shards`), so it travels with the actor's class."""

    factory: Callable[[], Callable] | None = None

    def __init__(self):
        try:
            self.work, self.failed = type(self).factory(), None
        except DgamixError as e:
            self.work, self.failed = None, _Failure(str(e))

    def _run(self, blob: bytes) -> Any:
        if self.failed is not None:
            return self.failed
        try:
            return self.work(pickle.loads(blob), None)
        except DgamixError as e:
            return _Failure(str(e))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [pickle.dumps(self._run(blob)) for blob in batch["job"]]
        return {"i": np.asarray(batch["i"], np.int64), "result": np.array(out, dtype=object)}


def _check(result: Any) -> Any:
    if isinstance(result, _Failure):
        raise DgamixError(result.message)
    return result


def map_shards(factory: Callable[[], Callable[[Any, Callable | None], dict]], jobs: list, engine: EngineConfig = LOCAL,
               tick: Callable[[int], None] | None = None, weight: Callable[[Any], int] = lambda job: 1) -> Iterator[dict]:
    """Run ``work(job, tick)`` for every job; yields the results in job order.

    local: ``work = factory()`` in this process, jobs one after the other (work ticks itself).
    ray: an actor pool of :func:`pool_size` actors, each with ``engine.cpus_per_worker`` CPUs and
    ``engine.gpus_per_worker`` GPUs, calls ``factory()`` once; ``tick(weight(job))`` as each job ends.
    """
    if not jobs:
        return
    if not engine.is_ray:
        work = factory()
        for job in jobs:
            yield work(job, tick)
        return
    ray = require_ray()
    items = [{"i": i, "job": pickle.dumps(job)} for i, job in enumerate(jobs)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    actor = type("ShardActor", (_ShardActor,), {"factory": staticmethod(factory)})
    ds = ds.map_batches(actor, batch_size=1, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=pool_size(engine, len(jobs))),
                        num_cpus=engine.cpus_per_worker, num_gpus=engine.gpus_per_worker or None)
    done: dict[int, dict] = {}
    nxt = 0
    for row in ds.iter_rows():
        i = int(row["i"])
        done[i] = _check(pickle.loads(row["result"]))
        if tick is not None:
            tick(weight(jobs[i]))
        while nxt in done:
            yield done.pop(nxt)
            nxt += 1


def _call(fn: Callable, args: tuple) -> Any:
    from dgamix.pipeline.core.runtime import numpy_blas_single_thread

    try:
        with numpy_blas_single_thread():
            return fn(*args)
    except DgamixError as e:
        return _Failure(str(e))


def map_tasks(fn: Callable, calls: Iterable[tuple], engine: EngineConfig = LOCAL) -> Iterator[Any]:
    """``fn(*args)`` for every args tuple, yielded in order: locally lazily one by one; on Ray as
    tasks of 1 CPU (numpy BLAS single-threaded inside, like the local fit), at most
    TASKS_PER_CPU x the cluster's CPUs in flight, so that ``calls`` (which may make each task's
    arguments, e.g. read a shard's texts, only when asked for the next one) is drawn from lazily."""
    if not engine.is_ray:
        for args in calls:
            yield fn(*args)
        return
    import collections

    ray = require_ray()
    remote = ray.remote(num_cpus=1)(_call)
    window = max(2, TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    calls, pending = iter(calls), collections.deque()
    for args in calls:
        pending.append(remote.remote(fn, args))
        if len(pending) >= window:
            break
    while pending:
        out = _check(ray.get(pending.popleft()))
        nxt = next(calls, None)
        if nxt is not None:
            pending.append(remote.remote(fn, nxt))
        yield out


TASKS_PER_CPU = 2  # map_tasks on Ray: tasks in flight per CPU (enough to keep every CPU busy)
