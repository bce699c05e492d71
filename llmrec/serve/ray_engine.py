"""``llmrec serve SPEC --engine ray``: the same FastAPI app as the local server, run by Ray Serve replicas.

Each replica is a Ray Serve deployment declared with ``@serve.ingress()`` and ``__serve_build_asgi_app__``: the
app (llmrec/serve/app.py ``create_app``) is built **inside the replica**, from the JSON-serialisable
:class:`~llmrec.serve.app.ServeOptions`, never pickled with loaded models; Ray Serve then runs the app's lifespan
(which loads the spec's resources) in the replica before it takes traffic. Ray's HTTP proxy spreads requests over
the replicas. Ray is imported only here, only when ``--engine ray`` is given; without it the user is told
``pip install 'llmrec[ray]'``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass
from typing import Any

from ..distributed.engine import INSTALL_HINT, EngineError, check_reachable, worker_env
from .commands import THREAD_VARS
from .metrics import MULTIPROC_ENV

#: the Ray Serve application's (and deployment's) name
APP_NAME = "llmrec"
#: requests a replica takes beyond --max-concurrency, so that the app's own 429 (not Ray's queue) answers an
#: overload, and /healthz, /readyz and /metrics still get through to a busy replica
PROBE_HEADROOM = 16


@dataclass
class RayServeSettings:
    """How ``--engine ray`` runs: the cluster (``address``: None starts a Ray here) and the replicas, a fixed
    number or autoscaled between ``min_replicas`` and ``max_replicas``, each reserving ``num_cpus_per_replica``."""

    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    num_cpus_per_replica: float = 1.0

    def check(self) -> None:
        """ValueError (naming the option) for settings that contradict each other."""
        if self.replicas < 1:
            raise ValueError("--replicas: give at least 1")
        if self.num_cpus_per_replica <= 0:
            raise ValueError("--num-cpus-per-replica: give a number of CPUs above 0, e.g. 1 or 0.5")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("--min-replicas and --max-replicas go together (autoscaling between them)")
        if self.min_replicas is not None and self.max_replicas is not None:
            if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
                raise ValueError("--min-replicas/--max-replicas: give 0 <= MIN <= MAX and MAX >= 1, "
                                 "e.g. --min-replicas 1 --max-replicas 4")

    def autoscaling(self, max_concurrency: int) -> dict[str, Any] | None:
        """Ray Serve's ``autoscaling_config``, or None for a fixed number of replicas: a replica is added when
        the requests in progress per replica stay above half of ``--max-concurrency``."""
        if self.min_replicas is None or self.max_replicas is None:
            return None
        start = min(max(self.replicas, self.min_replicas, 1), self.max_replicas)
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas, "initial_replicas": start,
                "target_ongoing_requests": max(1, max_concurrency // 2)}


def require_serve() -> tuple[Any, Any]:
    """``(ray, ray.serve)``; :class:`EngineError` with the install command when Ray Serve is not installed."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Serve, which is not installed ({exc}); install it with "
                          f"{INSTALL_HINT}") from None
    return ray, serve


def replica_env(settings: RayServeSettings, environ: Any = None) -> dict[str, str]:
    """The environment each replica gets: the driver's data, cache and offline variables (as the batch engine
    forwards them) and thread counts sized to the CPUs a replica reserves (unless the user set them), so that N
    replicas on one host do not each start a thread per core."""
    environ = os.environ if environ is None else environ
    env = worker_env()
    threads = str(max(1, int(settings.num_cpus_per_replica)))
    env.update({name: environ.get(name) or threads for name in THREAD_VARS})
    return env


class Replica:
    """One Ray Serve replica's state before its app exists: the options, as JSON (what Ray pickles)."""

    def __init__(self, options_json: str) -> None:
        self.options_json = options_json

    def __serve_build_asgi_app__(self) -> Any:
        """Called by Ray Serve in the replica, after the constructor: the llmrec app, built here."""
        # lazy: .app imports FastAPI and the node types; only a replica builds it
        from .app import ServeOptions, configure_logging, create_app

        raw = json.loads(self.options_json)
        if isinstance(raw.get("rating_range"), list):
            raw["rating_range"] = tuple(raw["rating_range"])
        options = ServeOptions(**raw)
        configure_logging(options.log_level)
        return create_app(options)


def build_application(options: Any, settings: RayServeSettings, env: dict[str, str] | None = None,
                      graceful_timeout: float = 30.0) -> Any:
    """The Ray Serve application (``Deployment.bind(...)``) serving ``options`` (a ServeOptions) on
    ``settings``' replicas, each with ``env`` in its environment."""
    _, serve = require_serve()
    settings.check()
    autoscaling = settings.autoscaling(options.max_concurrency)
    actor_options: dict[str, Any] = {"num_cpus": settings.num_cpus_per_replica,
                                     "runtime_env": {"env_vars": env if env is not None else replica_env(settings)}}
    deployment_options: dict[str, Any] = {
        "name": APP_NAME, "ray_actor_options": actor_options,
        "max_ongoing_requests": options.max_concurrency + PROBE_HEADROOM,
        "graceful_shutdown_timeout_s": max(0.1, graceful_timeout), "max_constructor_retry_count": 1,
    }
    if autoscaling is not None:
        deployment_options["autoscaling_config"] = autoscaling
    else:
        deployment_options["num_replicas"] = settings.replicas
    deployment = serve.deployment(**deployment_options)(serve.ingress()(Replica))
    return deployment.bind(json.dumps(asdict(options)))


def start(options: Any, settings: RayServeSettings, *, host: str, port: int, graceful_timeout: float = 30.0,
          num_cpus: int | None = None, temp_dir: str | None = None, on_connected: Any = None) -> Any:
    """Connect to (or start) Ray (then call ``on_connected()``), start Ray Serve's HTTP proxy on ``host:port``
    and deploy the app; returns once every replica has loaded the spec (its lifespan ran), with the Prometheus
    multiprocess folder it made for the replicas (None when it made none) for :func:`stop` to remove.
    :class:`EngineError` when Ray cannot be reached or a replica cannot start (the replica's error in one line)."""
    ray, serve = require_serve()
    settings.check()
    env = replica_env(settings)
    made = None
    if settings.address is None and not os.environ.get(MULTIPROC_ENV):
        # one host: the replicas share a Prometheus multiprocess folder, so /metrics adds them all up, as with
        # --workers N (a cluster given by --address has per-replica /metrics: docs/scaling.md)
        made = env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="llmrec-metrics-")
    elif os.environ.get(MULTIPROC_ENV):
        env[MULTIPROC_ENV] = os.environ[MULTIPROC_ENV]
    if settings.address is not None:
        check_reachable(settings.address)
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                "log_to_driver": False, "configure_logging": False}
        if settings.address is not None:
            init["address"] = settings.address
        else:  # "local": a Ray of its own, even where `ray start` runs one (that is what --address auto is for)
            init["address"] = "local"
            init["num_cpus"] = num_cpus
            if temp_dir is not None:
                init["_temp_dir"] = temp_dir
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray"
            raise EngineError(f"could not start or reach {where}: {exc}",
                              "--address" if settings.address else "--engine") from None
    if on_connected is not None:
        on_connected()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "Started Serve", "Connecting to existing Serve app"
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(build_application(options, settings, env, graceful_timeout), name=APP_NAME, route_prefix="/",
                  blocking=False)
    except Exception as exc:  # a replica that cannot load the spec, a port in use: what Ray says, in a line
        text = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise EngineError(f"Ray Serve could not start the app: {type(exc).__name__}: "
                          f"{text[-1] if text else ''}", "--engine") from None
    return made


def stop(settings: RayServeSettings, started_ray: bool, metrics_dir: str | None = None) -> None:
    """Shut the app down: its replicas finish their requests (``--graceful-timeout``), then Ray Serve stops
    (on a cluster given by ``--address``, only this app is deleted; the cluster's Serve keeps running)."""
    ray, serve = require_serve()
    try:
        if settings.address is None:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def run_until_signalled(options: Any, settings: RayServeSettings, *, host: str, port: int,
                        graceful_timeout: float = 30.0, say: Any = print) -> int:
    """``llmrec serve --engine ray``'s main loop: deploy, wait for SIGTERM or Ctrl-C, shut down cleanly.
    Returns 0 after SIGTERM; raises KeyboardInterrupt after Ctrl-C (the CLI's 130), once shut down."""
    ray, _ = require_serve()
    started_ray = not ray.is_initialized() and settings.address is None
    got: list[int] = []
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        got.append(signum)
        done.set()

    def install() -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, on_signal)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    install()
    try:
        try:  # install again once Ray is up: ray.init puts in its own SIGTERM handler, one that kills the process
            made = start(options, settings, host=host, port=port, graceful_timeout=graceful_timeout,
                         on_connected=install)
        except BaseException:  # a replica that failed: leave no Ray behind
            if started_ray and ray.is_initialized():
                ray.shutdown()
            raise
        scale = (f"{settings.min_replicas}-{settings.max_replicas} replicas (autoscaling)"
                 if settings.min_replicas is not None else f"{settings.replicas} replica(s)")
        say(f"INFO:     serving {options.spec} on Ray Serve at http://{host}:{port} ({scale}); "
            "Ctrl-C or SIGTERM stops it")
        while not done.wait(0.5):
            pass
        say("INFO:     shutting Ray Serve down")
        stop(settings, started_ray, made)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if got and got[0] == signal.SIGINT:
        raise KeyboardInterrupt
    return 0


__all__ = ["APP_NAME", "RayServeSettings", "Replica", "build_application", "replica_env", "require_serve",
           "run_until_signalled", "start", "stop"]
