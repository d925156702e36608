"""``--engine ray``: the studies of a cohort on a Ray cluster, one actor per worker.

Each worker is a Ray actor (a :class:`~PETDiffusionLib.batch.worker.StudyWorker` in its own
process) that declares its resources (``num_cpus``, ``num_gpus``: Ray places it on a node that has
them and, for a GPU, sets ``CUDA_VISIBLE_DEVICES`` to the one it was given), loads the task's model
once, then runs one study per method call. The driver hands the next study to whichever worker is
free, so slow and fast studies balance themselves, and rewrites summary.csv as each one finishes.

Without ``--address`` a private Ray instance is started on this machine, bound to 127.0.0.1 only
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray use the loopback address as the node address,
ray/_private/services.py ``get_node_ip_address``), without dashboard or usage statistics, and shut
down at the end. With ``--address HOST:PORT`` (or ``auto``) the driver joins that cluster, which
keeps running afterwards (docs/SCALE.md).

Ray is an optional dependency (``pip install .[cluster]``): it is imported only here, when this
engine runs, so that the rest of the library and ``--engine local`` work without it.
"""
from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import Any, Callable

from PETDiffusionLib.batch.cohort import Study
from PETDiffusionLib.batch.worker import StudyWorker, error_text
from PETDiffusionLib.errors import InputError, ModelError

log = logging.getLogger(__name__)

# A worker process that dies (killed for memory, a segfault in a native library) is restarted once
# by Ray, which re-runs its __init__ (the model loads again); the study it was running is reported
# failed, never silently retried (Ray's default max_task_retries=0 for actor methods).
ACTOR_MAX_RESTARTS = 1


class _RayStudyWorker:
    """What the Ray actor holds: a StudyWorker, or the reason its model did not load (reported by
    ``info`` so that the driver stops with that message instead of failing every study)."""

    def __init__(self, task_id: str, device: str | None, model_path: str | None):
        try:
            self.worker: StudyWorker | None = StudyWorker(task_id, device, model_path)
            self.error = None
        except Exception as exc:  # reported to the driver by info()
            self.worker, self.error = None, error_text(exc)

    def info(self) -> dict[str, Any]:
        if self.worker is None:
            return {"error": self.error}
        return self.worker.info()

    def run(self, study: dict, out_dir: str) -> dict[str, Any]:
        return self.worker.run(study, out_dir)


def _import_ray(local: bool):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics sent anywhere
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind 127.0.0.1 only
    try:
        import ray  # optional dependency, imported only when this engine runs (see module doc)
    except ModuleNotFoundError as exc:
        raise InputError("--engine ray needs Ray: pip install 'PETDiffusionLib[cluster]' "
                         "(or run with --engine local)") from exc
    return ray


def worker_resources(device: str | None, cluster: dict[str, float], cpus_per_worker: float,
                     gpus_per_worker: float | None) -> tuple[float, float, str]:
    """(CPUs, GPUs) each worker declares and the device it runs on.

    ``--device auto`` uses one GPU per worker when the cluster has GPUs, else the CPU; ``cuda``
    needs GPUs in the cluster; ``cpu`` declares none (and runs on the CPU even on a GPU node).
    """
    dev = (device or "auto").lower()
    has_gpu = cluster.get("GPU", 0) > 0
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if dev.startswith("cuda") or (dev == "auto" and has_gpu) else 0.0
    if dev.startswith("cuda") and not has_gpu:
        raise InputError(f"--device {device}: the Ray cluster has no GPU "
                         f"(its resources: {_fmt(cluster)})")
    if gpus_per_worker > 0 and not has_gpu:
        raise InputError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has no GPU")
    if dev == "auto":
        dev = "cuda" if gpus_per_worker > 0 else "cpu"
    if dev.startswith("cuda:"):
        dev = "cuda"  # Ray gives each GPU worker its own device as cuda:0 (CUDA_VISIBLE_DEVICES)
    return float(cpus_per_worker), float(gpus_per_worker), dev


def _fit(cluster: dict[str, float], cpus: float, gpus: float) -> int:
    fits = [math.floor(cluster.get("CPU", 0) / cpus + 1e-9)] if cpus > 0 else []
    if gpus > 0:
        fits.append(math.floor(cluster.get("GPU", 0) / gpus + 1e-9))
    return min(fits) if fits else 1


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU")) or "none"


def run_ray(task_id: str, studies: list[Study], out_dir: str, on_row: Callable[[dict], None],
            on_worker: Callable[[dict], None], *, device: str | None = None,
            model_path: str | None = None, workers: int | None = None,
            address: str | None = None, cpus_per_worker: float = 1.0,
            gpus_per_worker: float | None = None, quiet_workers: bool = False) -> dict[str, Any]:
    """Run ``studies`` on Ray; calls ``on_row(row)`` as each study finishes. Returns the engine's
    description (address, resources, workers) for the log and the summary."""
    ray = _import_ray(local=address is None)
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            want = (workers or os.cpu_count() or 1) * cpus_per_worker
            ray.init(address="local", num_cpus=max(int(math.ceil(want)), os.cpu_count() or 1),
                     include_dashboard=False, log_to_driver=not quiet_workers,
                     _node_ip_address="127.0.0.1")
        else:
            try:
                ray.init(address=address, log_to_driver=not quiet_workers)
            except (ConnectionError, ray.exceptions.RayError) as exc:
                raise InputError(
                    f"--address {address}: cannot join the Ray cluster ({exc}); check the address "
                    "that `ray start --head` printed and, on a cluster with token authentication, "
                    "set RAY_AUTH_MODE=token and the cluster's token here (docs/SCALE.md)") from exc
    actors: list = []
    try:
        cluster = ray.cluster_resources()
        cpus, gpus, dev = worker_resources(device, cluster, cpus_per_worker, gpus_per_worker)
        fit = _fit(cluster, cpus, gpus)
        n = min(workers or fit, len(studies))
        if n > fit and address is None:  # a local instance never grows: they would wait forever
            raise InputError(f"--workers {n}: each worker needs {gpus:g} GPU, this machine has "
                             f"{_fmt(cluster)}: {fit} fit; lower --workers")
        if n > fit:  # never start workers the cluster cannot place: their studies would wait
            log.warning("--workers %d: each worker needs %g CPU and %g GPU, the cluster has %s: "
                        "running %d", n, cpus, gpus, _fmt(cluster), fit)
            n = fit
        log.info("ray: %s, %d worker(s) of %g CPU / %g GPU on %s", address or "local instance", n,
                 cpus, gpus, _fmt(cluster))
        actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus,
                               max_restarts=ACTOR_MAX_RESTARTS)(_RayStudyWorker)
        actors = [actor_cls.remote(task_id, dev, model_path) for _ in range(n)]
        # Each worker gets one study at once (it runs when its model has loaded: an actor runs
        # its calls in order), then the next study goes to whichever worker is free.
        starting = {a.info.remote(): a for a in actors}
        queue = deque(studies)
        running: dict[Any, tuple[Any, Study]] = {}

        def submit(actor) -> None:
            study = queue.popleft()
            running[actor.run.remote(study.to_dict(), out_dir)] = (actor, study)

        for actor in actors:
            submit(actor)  # n <= len(studies)
        def started(ref) -> None:
            info = ray.get(ref)
            if info.get("error"):
                raise ModelError(f"a Ray worker could not load the {task_id} model: {info['error']}")
            on_worker(info)

        while running:
            done, _ = ray.wait([*starting, *running], num_returns=1)
            ref = done[0]
            if ref in starting:
                started(ref)
                del starting[ref]
                continue
            actor, study = running.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker process died during this study
                row = {"id": study.id, "status": "failed", "worker": "",
                       "error": f"the Ray worker running it died: {error_text(exc).splitlines()[0]}"}
            on_row(row)
            if queue:
                submit(actor)
        for ref in starting:  # ready by now: an actor answers info() before its first study
            started(ref)
        return {"address": address or "local", "resources": _fmt(cluster), "workers": n,
                "cpus_per_worker": cpus, "gpus_per_worker": gpus, "device": dev}
    finally:
        for a in actors:
            ray.kill(a)
        if started_here:
            ray.shutdown()
