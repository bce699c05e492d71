"""``llmrec serve SPEC``: validate a spec, load it once, serve it over HTTP with uvicorn (a default plugin).

    llmrec serve specs/quickstart.yaml --port 8000
    llmrec serve specs/quickstart.yaml --api-key secret --deadline 2 --max-concurrency 32 --workers 2
    llmrec serve specs/quickstart.yaml --log-dir logs/          # impressions and feedback as JSONL
    llmrec serve specs/quickstart.yaml --log-store sqlite:logs/serve.db
    llmrec serve specs/quickstart.yaml --log-dir logs/ --experiment ab:default,fast:90,10   # an A/B test
    llmrec experiment logs/                                     # its results, with intervals and p-values

Also registers the built-in "memory" session store through ``llmrec_register_session_stores`` and the "file" and
"sqlite" log stores through ``llmrec_register_log_stores``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Optional

from ..hookspecs import hookimpl
from ..plugins import get_registry
from ..stores import mask_url, prepare_session_store, session_store_options
from .logs import FileLogStore, SqliteLogStore, parse_location
from .sessions import MemorySessionStore

#: the default of --timeout-keep-alive: nginx's, above the 60 s idle timeouts of nginx upstreams and AWS load
#: balancers and the 5 s of httpx (uvicorn's own default is 5 s, the same as httpx's: the two race)
KEEP_ALIVE_SECONDS = 75.0
#: the thread counts ``--workers N`` sets for its workers: llmrec's own (ONNX Runtime, torch, FAISS; see
#: llmrec.encoders.threads) and those of the OpenMP and BLAS runtimes numpy, LightGBM and FAISS are built on
THREAD_VARS = ("LLMREC_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else every core)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def worker_thread_env(workers: int, cores: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to ``environ`` so that ``workers`` processes share ``cores`` cores without each
    starting a thread per core: each of :data:`THREAD_VARS` the user has not set, as ``max(1, cores // workers)``
    (or as ``$LLMREC_THREADS`` where the user set only that). Nothing with one worker: it has every core."""
    if workers <= 1:
        return {}
    per_worker = max(1, cores // workers)
    try:
        per_worker = int(environ.get("LLMREC_THREADS") or per_worker) or per_worker
    except ValueError:
        pass
    return {name: str(per_worker) for name in THREAD_VARS if not environ.get(name)}


def _opt(*names: str, **kwargs: Any) -> Any:
    import typer

    return typer.Option(*names, **kwargs)


def _arg(help: str) -> Any:
    import typer

    return typer.Argument(help=help, show_default=False)


def serve_command(
    spec: Annotated[Path, _arg("The spec to serve.")],
    host: Annotated[str, _opt("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, _opt("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, _opt("--workers", min=1, help="Worker processes (each loads the spec).")] = 1,
    api_key: Annotated[Optional[str], _opt(
        "--api-key", help="Require this key (Authorization: Bearer KEY or X-API-Key). Default: $LLMREC_API_KEY; "
                          "none means no auth.")] = None,
    deadline: Annotated[Optional[float], _opt(
        "--deadline", min=0.001, help="Seconds each request may take. Default: the spec's budget.latency.")] = None,
    max_concurrency: Annotated[int, _opt(
        "--max-concurrency", min=1, help="Requests in progress at once (per worker); past it, 429.")] = 64,
    max_body: Annotated[int, _opt("--max-body", min=1, help="Largest request body in bytes; past it, 413.")
                        ] = 1_048_576,
    max_batch: Annotated[int, _opt("--max-batch", min=1, help="Most requests in one batch call.")] = 100,
    session_store: Annotated[str, _opt(
        "--session-store", help="Where sessions live (a registered session store: memory, per worker; redis, "
                                "shared by workers and hosts).")] = "memory",
    session_url: Annotated[Optional[str], _opt(
        "--session-url", help="The session store's URL, for stores that take one: redis://[:PASSWORD@]HOST:PORT/DB "
                              "(default: $LLMREC_REDIS_URL, else redis://127.0.0.1:6379/0).")] = None,
    session_ttl: Annotated[float, _opt("--session-ttl", min=0.0, help="Seconds a session lives after its last "
                                                                     "turn (0: until evicted).")] = 1800.0,
    reload_interval: Annotated[float, _opt(
        "--reload-interval", min=0.0, help="Seconds between checks of the spec file for changes (0: off; "
                                           "SIGHUP reloads too).")] = 2.0,
    timeout_keep_alive: Annotated[float, _opt(
        "--timeout-keep-alive", min=0.001, help="Seconds an idle keep-alive connection stays open. Keep it longer "
                                                "than your clients' and proxies' idle timeouts (httpx 5 s, nginx "
                                                "and AWS load balancers 60 s): a client reusing a connection just "
                                                "as the server closes it sees a reset.")] = KEEP_ALIVE_SECONDS,
    graceful_timeout: Annotated[float, _opt(
        "--graceful-timeout", min=0.0, help="On SIGTERM/SIGINT, seconds to let in-flight requests finish.")] = 30.0,
    log_level: Annotated[str, _opt("--log-level", help="debug, info, warning or error.")] = "info",
    trust: Annotated[bool, _opt(
        "--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    log_dir: Annotated[Optional[Path], _opt(
        "--log-dir", help="Log every answer (impressions) and accept POST /v1/feedback, as JSONL files in this "
                          "folder (the 'file' log store). Default: no log.")] = None,
    log_store: Annotated[Optional[str], _opt(
        "--log-store", help="Log to a registered log store instead: NAME:WHERE, e.g. sqlite:logs/serve.db or "
                            "file:logs (see `llmrec plugins`).")] = None,
    log_queue: Annotated[int, _opt(
        "--log-queue", min=1, help="Log records waiting to be written, at most (per worker); past it impressions "
                                   "are dropped (counted in /metrics) and feedback gets 503.")] = 10_000,
    rating_range: Annotated[tuple[float, float], _opt(
        "--rating-range", help="The lowest and highest value a rating in /v1/feedback may have.")] = (0.0, 5.0),
    experiment: Annotated[Optional[str], _opt(
        "--experiment", help="Run an online experiment between arms, each 'default' (the spec as written) or a "
                             "variant the spec declares: ab:CONTROL,TREATMENT[:W,W] splits users by a stable hash "
                             "(e.g. ab:default,fast:90,10); interleave:A,B answers with both arms' lists merged by "
                             "team draft. Read the results with `llmrec experiment LOG`.")] = None,
    experiment_name: Annotated[Optional[str], _opt(
        "--experiment-name", help="The name the assignment hash uses (default: SPEC_NAME:ARM,ARM). Keep it to keep "
                                  "every user's arm; change it (or the salt) to reshuffle.")] = None,
    experiment_salt: Annotated[str, _opt("--experiment-salt", help="Salt of the assignment hash.")] = "",
    experiment_seed: Annotated[int, _opt("--experiment-seed", help="Seed of interleaving's coin flips.")] = 0,
    experiment_override: Annotated[bool, _opt(
        "--experiment-override", help="Let a request choose its arm with ?variant=ARM (for testing; such answers "
                                      "are logged as forced and left out of the results). Off by default.")] = False,
    otel: Annotated[Optional[str], _opt(
        "--otel", help="Trace every request with OpenTelemetry: console (spans on stdout), otlp (to "
                       "$OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4318) or none. Default: $OTEL_TRACES_EXPORTER, "
                       "else off (docs/observability.md).")] = None,
    engine: Annotated[Optional[str], _opt(
        "--engine", help="local (uvicorn here) or ray (Ray Serve replicas behind Ray's HTTP proxy; pip install "
                         "'llmrec[ray]'; docs/scaling.md). Default: the spec's serving.engine, else local.")] = None,
    address: Annotated[Optional[str], _opt(
        "--address", help="--engine ray: the Ray cluster to deploy on (auto: the one `ray start` runs here; "
                          "HOST:PORT). Default: a Ray started by the command.")] = None,
    replicas: Annotated[Optional[int], _opt(
        "--replicas", min=1, help="--engine ray: replicas, each loading the spec (default: the spec's "
                                  "serving.replicas, else 1).")] = None,
    min_replicas: Annotated[Optional[int], _opt(
        "--min-replicas", min=0, help="--engine ray: autoscale between --min-replicas and --max-replicas.")] = None,
    max_replicas: Annotated[Optional[int], _opt("--max-replicas", min=1, help="--engine ray: see --min-replicas."
                                                )] = None,
    num_cpus_per_replica: Annotated[Optional[float], _opt(
        "--num-cpus-per-replica", min=0.01, help="--engine ray: CPUs each replica reserves (default: the spec's "
                                                 "serving block, else 1).")] = None,
) -> None:
    """Serve a spec over HTTP: /v1/recommend (and /batch, /stream), /healthz, /readyz, /metrics, playground at /.

    \b
    Examples:
      llmrec serve specs/quickstart.yaml --port 8000
      llmrec serve specs/quickstart.yaml --host 0.0.0.0 --workers 2 --api-key secret --deadline 2
    """
    import typer
    import uvicorn

    # lazy: typer, fastapi, uvicorn and prometheus_client, only when `llmrec serve` runs (a default plugin)
    from ..commands import EXIT_FAILED, Exit, load_graph
    from ..commands import say as _err
    from .app import OPTIONS_ENV, ServeOptions, configure_logging, create_app
    from .metrics import MULTIPROC_ENV
    from .protocol import LingeringHTTPProtocol

    graph = load_graph(spec, trust)  # refuses to start, printing every error, like `llmrec validate`
    ray_settings = check_engine_options(engine, workers, address, replicas, min_replicas, max_replicas,
                                        num_cpus_per_replica, serving=graph.spec.serving)
    stores = get_registry(spec.resolve().parent).session_stores
    if session_store not in stores:
        raise typer.BadParameter(f"unknown session store '{session_store}'; registered: {', '.join(stores)}",
                                 param_hint="'--session-store'")
    try:  # a store that cannot be reached (Redis down) is refused now, its URL masked
        session_options = session_store_options(stores[session_store], session_url, str(graph.name))
        prepare_session_store(stores[session_store], session_options)
    except (ValueError, OSError) as exc:  # RedisUnavailable is a ConnectionError
        raise typer.BadParameter(str(exc), param_hint="'--session-url'") from None
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="'--log-level'")
    store_name, store_where = log_destination(log_dir, log_store, spec)
    if rating_range[0] > rating_range[1]:
        raise typer.BadParameter("give the lowest rating first, e.g. --rating-range 1 5", param_hint="'--rating-range'")
    check_experiment(graph, experiment, experiment_name, store_name)
    otel = check_otel(otel)
    options = ServeOptions(
        spec=str(spec), api_key=api_key or os.environ.get("LLMREC_API_KEY") or None, max_body_bytes=max_body,
        deadline=deadline, max_concurrency=max_concurrency, max_batch=max_batch, session_store=session_store,
        session_options=session_options,
        session_ttl=session_ttl, reload_interval=reload_interval, log_level=log_level.lower(), trust=trust,
        log_store=store_name, log_location=store_where, log_queue=log_queue,
        rating_range=(float(rating_range[0]), float(rating_range[1])), experiment=experiment,
        experiment_name=experiment_name, experiment_salt=experiment_salt, experiment_seed=experiment_seed,
        experiment_override=experiment_override, otel=otel,
    )
    configure_logging(log_level)
    if ray_settings is not None:
        serve_on_ray(options, ray_settings, host, port, graceful_timeout)
        return
    common: dict[str, Any] = {"host": host, "port": port, "log_level": log_level.lower(),
                              "timeout_graceful_shutdown": graceful_timeout, "access_log": False,
                              "timeout_keep_alive": timeout_keep_alive, "http": LingeringHTTPProtocol}
    if workers > 1:  # each worker builds its own app from the options in the environment
        os.environ[OPTIONS_ENV] = options.to_env()
        # and reads its thread counts there before numpy, ONNX Runtime or FAISS start their thread pools, so
        # that N workers run N x (cores / N) threads, not N x cores fighting over the same cores
        os.environ.update(worker_thread_env(workers, available_cores(), os.environ))
        # Prometheus multiprocess mode: every worker writes its samples under one folder and /metrics, whichever
        # worker answers, adds them all up (set PROMETHEUS_MULTIPROC_DIR yourself to choose the folder)
        shared = os.environ.get(MULTIPROC_ENV)
        made = None
        if not shared:
            made = shared = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="llmrec-metrics-")
        try:
            uvicorn.run("llmrec.serve.app:create_app_from_env", factory=True, workers=workers, **common)
        finally:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
        return
    app = create_app(options, graph)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **common))
    server.run()
    if not server.started:
        _err(f"error: could not serve on {host}:{port} (see above)")
        raise Exit(EXIT_FAILED)


def check_engine_options(engine: str | None, workers: int, address: str | None, replicas: int | None,
                         min_replicas: int | None, max_replicas: int | None, num_cpus_per_replica: float | None,
                         serving: Any = None) -> Any:
    """``--engine`` and its options (None: not given) over the spec's ``serving:`` block (``serving``, a
    ServingSpec or None; the options win) -> the Ray Serve settings, or None for the local engine; a contradiction
    or a missing Ray is refused now, naming the option."""
    import typer  # lazy: typer, only once a command runs

    if engine is None:
        engine = (serving.engine if serving is not None else None) or "local"
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"'{engine}' is not one of local, ray", param_hint="'--engine'")
    if engine == "local":
        given = [name for name, value in (("--address", address), ("--min-replicas", min_replicas),
                                          ("--max-replicas", max_replicas)) if value is not None]
        given += ["--replicas"] * (replicas is not None) + ["--num-cpus-per-replica"] * (num_cpus_per_replica
                                                                                          is not None)
        if given:
            raise typer.BadParameter(f"{given[0]} is for --engine ray (the local engine scales with --workers)",
                                     param_hint="'--engine'")
        return None
    if workers != 1:
        raise typer.BadParameter("--engine ray scales with --replicas N (or --min-replicas/--max-replicas), "
                                 "not --workers", param_hint="'--workers'")
    # lazy: Ray Serve, only with --engine ray
    from ..distributed.engine import EngineError
    from .ray_engine import RayServeSettings, require_serve

    if serving is not None:  # what the command line leaves out, from the spec
        if min_replicas is None and max_replicas is None and replicas is None:  # --replicas N: a fixed N
            min_replicas, max_replicas = serving.min_replicas, serving.max_replicas
        replicas = replicas if replicas is not None else serving.replicas
        if num_cpus_per_replica is None:
            num_cpus_per_replica = serving.num_cpus_per_replica
    settings = RayServeSettings(address=address, replicas=replicas or 1, min_replicas=min_replicas,
                                max_replicas=max_replicas, num_cpus_per_replica=num_cpus_per_replica or 1.0)
    try:
        settings.check()
        require_serve()
    except ValueError as exc:
        option = str(exc).split(":", 1)[0].split(" ", 1)[0]
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None
    except EngineError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--engine'") from None
    return settings


def serve_on_ray(options: Any, settings: Any, host: str, port: int, graceful_timeout: float) -> None:
    """Serve ``options`` on Ray Serve until SIGTERM (exit 0) or Ctrl-C (130); the spec and log paths made
    absolute, since replicas do not run in this folder."""
    import dataclasses

    # lazy: llmrec.commands imports typer; .ray_engine imports Ray only when --engine ray runs
    from ..commands import EXIT_FAILED, Exit, say
    from ..distributed.engine import EngineError
    from .ray_engine import run_until_signalled

    location = options.log_location
    if location is not None and options.log_store in ("file", "sqlite"):
        location = str(Path(location).resolve())
    options = dataclasses.replace(options, spec=str(Path(options.spec).resolve()), log_location=location)
    try:
        run_until_signalled(options, settings, host=host, port=port, graceful_timeout=graceful_timeout, say=say)
    except EngineError as exc:
        say(f"error: {exc}")
        raise Exit(EXIT_FAILED) from None


def check_otel(otel: str | None) -> str | None:
    """``--otel`` (else ``$OTEL_TRACES_EXPORTER``) -> the exporters to trace with, or None when tracing is off;
    an unknown exporter or a missing SDK is refused now, naming the option and the install command."""
    import typer  # lazy: typer, only once a command runs

    # lazy: telemetry's checks import the SDK only when tracing is asked for
    from ..telemetry import TelemetryError, configure, wanted_exporters

    try:
        names = wanted_exporters(otel)
        if names:
            tracing = configure(",".join(names))  # the SDK and the exporters exist (each worker builds its own)
            if tracing is not None:
                tracing.shutdown()
    except TelemetryError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--otel'") from None
    return ",".join(names) or ("none" if otel is not None else None)  # "none": off even if $OTEL_... says otherwise


def check_experiment(graph: Any, experiment: str | None, name: str | None, store: str | None) -> None:
    """Refuse a malformed ``--experiment`` or an arm the spec does not declare now, naming the option; warn when
    nothing is logged (the experiment's results are read from the log)."""
    import typer

    # lazy: typer (under llmrec.commands) and numpy (under .experiments), only once `llmrec serve` runs
    from ..commands import say
    from ..spec.variants import variant_names
    from .experiments import ExperimentError, arm_variant, parse_experiment

    if experiment is None:
        if name is not None:
            raise typer.BadParameter("--experiment-name needs --experiment", param_hint="'--experiment-name'")
        return
    try:
        exp = parse_experiment(experiment, name, spec_name=str(graph.name))
        declared = variant_names(graph.document)
        for arm in exp.arms:
            arm_variant(arm, declared)
    except (ValueError, ExperimentError) as exc:
        raise typer.BadParameter(str(exc), param_hint="'--experiment'") from None
    if store is None:
        say("warning: --experiment without --log-dir or --log-store: the arms are served, but nothing is logged "
            "to read the results from")


def log_destination(log_dir: Path | None, log_store: str | None, spec: Path) -> tuple[str | None, str | None]:
    """``--log-dir`` / ``--log-store`` -> (store name, location), the store prepared (its folder or database
    created) so that a place the server cannot write is refused now, with the option at fault."""
    import typer  # lazy: typer, only once a command runs

    if log_dir is not None and log_store is not None:
        raise typer.BadParameter("give --log-dir DIR or --log-store NAME:WHERE, not both", param_hint="'--log-dir'")
    if log_dir is None and log_store is None:
        return None, None
    stores = get_registry(spec.resolve().parent).log_stores
    hint = "'--log-dir'" if log_dir is not None else "'--log-store'"
    if log_dir is not None:
        name, where = "file", str(log_dir)
    else:
        assert log_store is not None
        try:
            name, where = parse_location(log_store, list(stores))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    factory = stores.get(name)
    if factory is None:
        raise typer.BadParameter(f"unknown log store '{name}'; registered: {', '.join(stores)}", param_hint=hint)
    try:
        store = factory(where)
        prepare = getattr(store, "prepare", None)
        if callable(prepare):
            prepare()
        store.close()
    except Exception as exc:
        raise typer.BadParameter(f"cannot log to '{mask_url(where)}': {exc}", param_hint=hint) from None
    return name, where


def experiment_command(
    log: Annotated[str, _arg("The serving log: a folder (--log-dir), a .db file, or NAME:WHERE of a log store.")],
    name: Annotated[Optional[str], _opt("--name", help="Only this experiment (default: every one in the log).")
                    ] = None,
    as_json: Annotated[bool, _opt("--json", help="Print the results as JSON.")] = False,
    resamples: Annotated[int, _opt("--resamples", min=100, help="Bootstrap resamples (over units).")] = 2000,
    permutations: Annotated[int, _opt("--permutations", min=100, help="Permutations of the A/B test.")] = 10_000,
    seed: Annotated[int, _opt("--seed", help="Seed of the bootstrap and the permutations.")] = 0,
    alpha: Annotated[float, _opt("--alpha", min=1e-6, max=0.5, help="Significance level.")] = 0.05,
) -> None:
    """Read an online experiment's results from a serving log (`llmrec serve --experiment ... --log-dir LOG`).

    A/B: per arm units, impressions, clicks, CTR with a 95% bootstrap interval over users; treatment - control
    with its interval and a permutation p-value; a sample-ratio-mismatch check. Interleaving: wins, losses, ties,
    the preference with its interval and a sign test.

    \b
    Examples:
      llmrec experiment logs/
      llmrec experiment sqlite:logs/serve.db --name shop-ranker --json
    """
    import json

    # lazy: typer (under llmrec.commands) and numpy (under .experiments), only when `llmrec experiment` runs
    from ..commands import EXIT_INPUT, Exit, out, say
    from .experiments import ExperimentError, experiment_results, format_results

    try:
        name_, where = parse_location(log, list(get_registry(None).log_stores))
    except ValueError as exc:
        say(f"error: {exc}")
        raise Exit(EXIT_INPUT) from None
    if name_ in ("file", "sqlite") and not Path(where).exists():
        say(f"error: no log at '{where}': give the folder of `llmrec serve --log-dir` or its .db file")
        raise Exit(EXIT_INPUT)
    if name_ == "file" and not Path(where).is_dir():
        say(f"error: '{where}' is not a folder of impression logs; a SQLite log is a .db/.sqlite file or "
            f"sqlite:{where}")
        raise Exit(EXIT_INPUT)
    try:
        report = experiment_results(log, name=name, resamples=resamples, permutations=permutations, seed=seed,
                                    alpha=alpha)
    except ExperimentError as exc:
        say(f"error: {log}: {exc}")
        raise Exit(EXIT_INPUT) from None
    except (OSError, ValueError) as exc:  # an unreadable database, a store's own complaint
        say(f"error: cannot read the log '{mask_url(log)}': {exc}")
        raise Exit(EXIT_INPUT) from None
    if as_json:
        out(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False, default=str))
    else:
        out(format_results(report))


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    cli.command(name="serve")(serve_command)
    cli.command(name="experiment")(experiment_command)


@hookimpl
def llmrec_register_session_stores(register: Any) -> None:
    register("memory", MemorySessionStore)


@hookimpl
def llmrec_register_log_stores(register: Any) -> None:
    register("file", FileLogStore)
    register("sqlite", SqliteLogStore)
