"""The compute engine: where jobs run. `LocalEngine` runs them one after another in this process (Ray is
never imported); `RayEngine` runs each as a Ray core task, on a GPU when the job asks for one.

Both answer the same three calls: `submit(job)`, `wait() -> Outcome` (the next job to finish) and
`close()`. A job is a picklable record; `body(job)` is a library function returning a dict. A worker
process that dies (killed, OOM, node lost) is retried by Ray up to `max_retries` times; a Python
exception is not retried but handed back in the outcome, so the driver can finish the other jobs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from carvana.errors import WorkbenchError
from workbench.config import ComputeConfig

__all__ = ["LocalEngine", "Outcome", "RayEngine", "make_engine", "parallel_backend"]

FORWARDED_ENV_PREFIX = "WORKBENCH_"  # driver environment variables handed to every Ray task
LOOPBACK = "127.0.0.1"  # the only interface a local Ray started by the workbench listens on


@dataclass(frozen=True)
class Outcome:
    """A finished job: its result dict, or the error that ended it (a message, for the driver's report)."""

    job: Any
    result: dict | None = None
    error: str | None = None  # one line: the exception's type and message
    detail: str = ""  # the whole traceback, for stderr


class LocalEngine:
    """Jobs in this process, in submission order (today's sequential behaviour)."""

    name = "local"

    def __init__(self, compute: ComputeConfig, body: Callable[[Any], dict]) -> None:
        self.compute, self.body = compute, body
        self.queue: deque[Any] = deque()

    def n_gpus(self) -> int:
        import torch

        return torch.cuda.device_count()

    def n_cpus(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def submit(self, job: Any, gpus: int = 0, cpus: int = 1) -> None:
        self.queue.append(job)

    def pending(self) -> int:
        return len(self.queue)

    def wait(self) -> Outcome:
        job = self.queue.popleft()
        try:
            return Outcome(job, result=self.body(job))
        except Exception as error:  # reported by the driver, which goes on with the other jobs
            return Outcome(job, error=_describe(error), detail=traceback.format_exc())

    def close(self) -> None:
        self.queue.clear()


class RayEngine:
    """Jobs as Ray core tasks: `num_gpus` per job (Ray sets CUDA_VISIBLE_DEVICES), a fresh worker process
    for every GPU job (GPU memory is freed between jobs), retries on worker death only."""

    name = "ray"

    def __init__(self, compute: ComputeConfig, body: Callable[[Any], dict]) -> None:
        try:
            import ray
        except ImportError:
            raise WorkbenchError("compute.engine is ray but Ray is not installed: pip install -e '.[ray]'") from None
        self.ray, self.compute = ray, compute
        self.refs: dict[Any, Any] = {}
        self.owns_cluster = not ray.is_initialized()
        if self.owns_cluster:
            try:
                _start_ray(compute.address)
            except ConnectionError as error:
                raise WorkbenchError(
                    f"compute.address {compute.address!r}: no Ray cluster there ({error}); "
                    "start one with `ray start --head`, or leave address empty"
                ) from None
        self.remote_cpu = ray.remote(_run_body)
        # One job per process for GPU jobs: TF and torch give GPU memory back only when the process exits.
        self.remote_gpu = ray.remote(max_calls=1)(_run_body)
        self.body = body
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
        self.runtime_env = {"env_vars": env} if env else None

    def n_gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def n_cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def submit(self, job: Any, gpus: int = 0, cpus: int = 1) -> None:
        options = {
            "num_gpus": gpus,
            "num_cpus": cpus,
            "max_retries": self.compute.max_retries,
            "retry_exceptions": False,
            "name": str(job),
        }
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        remote = self.remote_gpu if gpus else self.remote_cpu
        self.refs[remote.options(**options).remote(self.body, job)] = job

    def pending(self) -> int:
        return len(self.refs)

    def wait(self) -> Outcome:
        (ref,), _ = self.ray.wait(list(self.refs), num_returns=1)
        job = self.refs.pop(ref)
        try:
            return Outcome(job, result=self.ray.get(ref))
        except self.ray.exceptions.RayTaskError as error:  # a Python exception inside the job
            return Outcome(job, error=_describe(error.cause or error), detail=str(error))
        except self.ray.exceptions.RayError as error:  # retries used up: the worker kept dying
            return Outcome(job, error=f"{type(error).__name__}: {str(error).splitlines()[0]}", detail=str(error))

    def close(self) -> None:
        for ref in self.refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owns_cluster:
            self.ray.shutdown()


def _start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start Ray on this machine for the command (no dashboard), with
    every service, the driver and the workers listening on the loopback interface only: nothing of it can
    be reached from the network (a cluster of several machines is started by the user: `ray start`)."""
    import ray

    if address:
        ray.init(address=address)
        return
    from ray._private import ray_constants

    # Ray binds its gRPC servers to loopback only when its node address is 127.0.0.1, and resolves any address
    # given for it to the network one unless clusters are off (its own setting on macOS and Windows).
    clusters = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(include_dashboard=False, _node_ip_address=LOOPBACK)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters
    node = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node).is_loopback:  # another Ray version: refuse rather than serve the network
        ray.shutdown()
        raise WorkbenchError(
            f"the local Ray started on {node}, not on the loopback interface only ({LOOPBACK}); start a cluster "
            "yourself (`ray start --head`) and pass --address auto, or use --engine local"
        )


def _run_body(body: Callable[[Any], dict], job: Any) -> dict:
    """The task Ray runs: the job's body, with the engine's task id and attempt made visible to it."""
    import ray

    context = ray.get_runtime_context()
    os.environ["WORKBENCH_ENGINE"] = "ray"
    os.environ["WORKBENCH_TASK_ID"] = context.get_task_id() or ""
    return body(job)


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def make_engine(compute: ComputeConfig, body: Callable[[Any], dict]) -> LocalEngine | RayEngine:
    """The engine `compute.engine` names (Ray is imported only for `ray`)."""
    return RayEngine(compute, body) if compute.engine == "ray" else LocalEngine(compute, body)


@contextlib.contextmanager
def parallel_backend(compute: ComputeConfig) -> Iterator[int]:
    """joblib's backend for CPU shards (stacker and tuned-blend test maps): loky processes locally, Ray
    CPU tasks with `engine: ray`. Yields the `n_jobs` to give `joblib.Parallel`:

        with parallel_backend(config.compute) as n_jobs:
            maps = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(predict_shard)(s) for s in shards)
    """
    import joblib

    if compute.engine != "ray":
        from joblib.externals.loky import get_reusable_executor

        try:
            with joblib.parallel_config(backend="loky"):
                yield compute.cpu_workers or -1
        finally:
            # The local workers exit with the block: kept idle, each would hold its imports and last image's
            # memory (~0.15 GB) through the next entry's fit, which is the stack's peak.
            get_reusable_executor().shutdown(wait=True)
        return
    import ray
    from ray.util.joblib import register_ray

    started = not ray.is_initialized()
    if started:
        _start_ray(compute.address)
    register_ray()
    try:
        with joblib.parallel_config(backend="ray"):
            yield compute.cpu_workers or int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()
