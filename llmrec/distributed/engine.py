"""The optional Ray engine: connecting, the actor pool's size, and the environment workers need.

Ray is imported here, inside functions, and only when a command is given ``--engine ray``; without the extra
installed the user gets :class:`EngineError` saying ``pip install 'llmrec[ray]'``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from ..errors import LlmrecError

ENGINES: tuple[str, ...] = ("local", "ray")
INSTALL_HINT = "pip install 'llmrec[ray]'"
#: environment variables a Ray worker needs to see what the driver sees (data, caches, offline models, trust)
FORWARDED_PREFIXES = ("LLMREC_",)
FORWARDED_NAMES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "LITELLM_LOCAL_MODEL_COST_MAP",
                   "TOKENIZERS_PARALLELISM")


class EngineError(LlmrecError):
    """``--engine`` cannot be used as asked: Ray is missing, or the cluster cannot be reached; ``option`` names
    the command-line option to fix."""

    def __init__(self, message: str, option: str = "--engine") -> None:
        self.option = option
        super().__init__(message)


class WorkerError(LlmrecError):
    """A Ray worker failed (its spec or model could not load there, it died): what it raised, in one line."""


def check_engine(engine: str) -> str:
    """``engine`` when it is one of :data:`ENGINES`; ValueError naming them otherwise."""
    if engine not in ENGINES:
        raise ValueError(f"'{engine}' is not one of {', '.join(ENGINES)}")
    return engine


def require_ray() -> Any:
    """The ``ray`` module; :class:`EngineError` with the install command when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is what the batch commands use
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray, which is not installed ({exc}); install it with "
                          f"{INSTALL_HINT}") from None
    return ray


def worker_env() -> dict[str, str]:
    """The driver's environment variables that workers get too (data folder, caches, offline flags)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Ray, connected: to the cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine), or
    to a Ray started here with ``num_cpus`` CPUs (default: all). A Ray already initialised in this process (a
    test's, a notebook's) is used as it is."""
    ray = require_ray()
    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        return ray
    if address is not None and num_cpus is not None:
        raise EngineError("--num-cpus sizes a Ray started here; a cluster given by --address has its own CPUs "
                          "(use --workers to choose how many actors run)", "--num-cpus")
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                               "runtime_env": {"env_vars": worker_env()}}
    if address is not None:
        options["address"] = address
    else:
        options["num_cpus"] = num_cpus
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise EngineError(f"could not start or reach {where}: {exc}", "--address" if address else "--engine"
                          ) from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """For ``HOST:PORT``: :class:`EngineError` unless something listens there (Ray itself retries an unreachable
    head for minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EngineError(f"cannot reach the Ray head at {address}: {exc.strerror or exc}; start it with "
                          "`ray start --head` there, or check --address (docs/scaling.md)", "--address") from None


def pool_size(ray: Any, workers: int | None) -> int:
    """How many actors: ``workers``, else one per CPU the cluster has (at least 1)."""
    if workers is not None:
        return max(1, int(workers))
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def data_context(ray: Any, *, progress: bool) -> Any:
    """Ray Data's context for this job: outputs in input order, progress bars only when asked."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress
    if not progress:  # "starting execution", "progress bars disabled": a job's own summary says what happened
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ctx


def map_in_order(ray: Any, groups: list[str], worker: type, kwargs: dict[str, Any], *, workers: int,
                 progress: bool = False) -> Iterator[dict[str, Any]]:
    """Ray Data ``from_items`` over ``groups`` (each a JSON text: one batch, cut by the driver exactly as the local
    engine cuts it) → ``map_batches(worker)`` one group at a time over a pool of ``workers`` actors (each builds
    ``worker(**kwargs)`` once; never more actors than groups) → the output batches, back in input order, for the
    driver to write. A worker's failure is a :class:`WorkerError` saying what it raised."""
    data_context(ray, progress=progress)
    size = max(1, min(workers, len(groups)))
    ds = ray.data.from_items([{"group": g} for g in groups], override_num_blocks=max(1, min(len(groups), 1000)))
    mapped = ds.map_batches(worker, fn_constructor_kwargs=kwargs, batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=size), batch_format="numpy", num_cpus=1)
    try:
        yield from mapped.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip().splitlines()
        raise WorkerError(f"a Ray worker failed: {type(cause).__name__}: {text[-1] if text else ''}"
                          " (docs/scaling.md: every node needs the spec, its data and llmrec at the same paths)"
                          ) from None


__all__ = ["ENGINES", "EngineError", "INSTALL_HINT", "WorkerError", "check_engine", "check_reachable", "connect",
           "data_context", "map_in_order", "pool_size", "require_ray", "worker_env"]
