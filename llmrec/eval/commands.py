"""``llmrec eval`` and the built-in metrics, registered as a default plugin.

    llmrec eval specs/a.yaml specs/b.yaml --dataset movielens-100k --split temporal --k 5,10,20
    llmrec eval specs/a.yaml --users 50 --json -          # JSON on stdout instead of the table
    llmrec eval specs/a.yaml --variants fast,big --report reports/a   # variants; report.md + report.html
    llmrec eval specs/llm.yaml --judge-model openai/gpt-4o-mini        # LLM-as-judge scores too
    llmrec eval specs/a.yaml specs/b.yaml --trec runs/trec             # TREC run + qrels files (ranx, trec_eval)
    llmrec eval specs/a.yaml --logged logs/                            # off-policy, on served traffic (logged.py)
    llmrec eval specs/a.yaml --engine ray --workers 4                  # cases on a Ray actor pool (docs/scaling.md)
    llmrec replay logs/ specs/a.yaml                                   # logged requests run again (replay.py)

Per-case results go to ``--out`` (default ``runs/eval/<dataset>-<hash>/``) as they complete: the same command
run again resumes where it stopped (``--fresh`` starts over).

Every metric of :mod:`llmrec.eval.metrics` is registered through ``llmrec_register_metrics``, so plugins add
theirs the same way and ``llmrec eval`` reports them all. ``llmrec replay`` is registered here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

from .. import progress as progress_
from ..data.datasets import is_path, load_dataset
from ..hookspecs import hookimpl
from ..spec.variants import validate_variant, variant_names
from ..trust import grant
from .defaults import (DEFAULT_ESTIMATORS, DEFAULT_REWARD, ESTIMATORS, EXIT_CHANGED, N_BOOTSTRAP, SHOW, TOLERANCE,
                       WEIGHTS)
from .judge import MODEL_ENV, load_rubric
from .metrics import LIST_METRICS, RANKING_METRICS
from .runner import EvalInterrupted, LocalEngine, TracedEngine, evaluate, parse_ks
from .store import fingerprint, slug
from .trec import TrecError, check_folder, write_trec

if TYPE_CHECKING:
    from ..registry import Registry

SPLIT_CHOICES = ("temporal", "user", "leave-last", "none")


def _parse_k(value: str) -> tuple[int, ...]:
    import typer

    try:
        return parse_ks(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--k'") from None


def _default_split(name: str, registry: Registry) -> str | None:
    """The split --dataset NAME uses when --split is not given: the loader's own default, except that a
    dataset whose default holds nothing out (split 'none') but which can be split temporally is split
    temporally (PROTOCOLS.md's per-user 90/10). None for folders and unknown names (the loader decides)."""
    info = None if is_path(name, registry) else registry.datasets.get(name)
    if info is None:
        return None
    return "temporal" if info.default_split == "none" and "temporal" in info.splits else None


def _load_dataset(name: str, split: str | None, seed: int | None, registry: Registry) -> Any:
    """--dataset NAME, resolved against ``registry`` (the first spec's)."""
    options: dict[str, Any] = {"registry": registry}
    split = split if split is not None else _default_split(name, registry)
    if split is not None:
        options["split"] = split
    if seed is not None:
        options["seed"] = seed
    return load_dataset(name, **options)


def eval_command(
    specs: Annotated[list[Path], typer_argument("Spec files to evaluate; several are compared side by side.")],
    dataset: Annotated[Optional[str], typer_option(
        "--dataset", "-d", help="Dataset name (movielens-100k, bbc-news, demo, ...: llmrec plugins) or folder. "
                                "Default: each spec's own dataset resource.")] = None,
    split: Annotated[Optional[str], typer_option(
        "--split", help="How --dataset is split: temporal, user, leave-last (or none). Default: the "
                        "dataset's own, temporal for interaction logs.")] = None,
    seed: Annotated[Optional[int], typer_option("--seed", help="Seed of --dataset's split.")] = None,
    k: Annotated[str, typer_option("--k", help="Cutoffs, comma-separated.")] = "5,10,20",
    users: Annotated[Optional[int], typer_option(
        "--users", min=1, help="Evaluate only the first N test cases.")] = None,
    output: Annotated[Optional[str], typer_option(
        "--output", help="The spec output holding the answer (default: the first list of items).")] = None,
    json_path: Annotated[Optional[str], typer_option(
        "--json", help="Write the report as JSON to this file ('-' for stdout, instead of the table).")] = None,
    concurrency: Annotated[int, typer_option("--concurrency", min=1, help="Requests in flight at once.")] = 8,
    metrics: Annotated[Optional[str], typer_option(
        "--metrics", help="Only these metrics, comma-separated (e.g. ndcg,recall,coverage).")] = None,
    results: Annotated[Optional[Path], typer_option(
        "--results", help="Append one JSON line per case (answer, metrics, latency, error) to this file.")] = None,
    variants: Annotated[Optional[str], typer_option(
        "--variants", help="Which declared variants to evaluate beside each spec, comma-separated, or 'none'. "
                           "Default: all.")] = None,
    judge_model: Annotated[Optional[str], typer_option(
        "--judge-model", help="Score every answer with this LLM as judge (litellm model name, or a local "
                              "model folder). Default: $LLMREC_MODEL.")] = None,
    judge_rubric: Annotated[Optional[Path], typer_option(
        "--judge-rubric", help="YAML file of judge criteria (name: what a 5 means). Default: relevance, "
                               "diversity, personalisation.")] = None,
    judge_spec: Annotated[Optional[Path], typer_option(
        "--judge-spec", help="Your own judge spec instead of the built-in llmrec/eval/judge.yaml (inputs subject "
                             "and request, a resource model, an output judge with scores and overall).")] = None,
    no_judge: Annotated[bool, typer_option("--no-judge", help="Do not run the judge even if a model is set.")] = False,
    report_dir: Annotated[Optional[Path], typer_option(
        "--report", help="Write report.json, report.md (+ plots) and a self-contained report.html here.")] = None,
    trec_dir: Annotated[Optional[Path], typer_option(
        "--trec", help="Also write a TREC run file per spec and the qrels to this folder, for ranx or trec_eval "
                       "(docs/evaluation.md, 'TREC export').")] = None,
    out: Annotated[Optional[Path], typer_option(
        "--out", help="Folder of per-case results, resumed when run again (default: runs/eval/<dataset>-<hash>).")]
        = None,
    fresh: Annotated[bool, typer_option("--fresh", help="Discard stored case results and start over.")] = False,
    trust: Annotated[bool, typer_option(
        "--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    quiet: Annotated[bool, typer_option(
        "--quiet", "-q", help="No progress on stderr (bars and step messages); errors still print.")] = False,
    logged: Annotated[Optional[str], typer_option(
        "--logged", help="Evaluate on served traffic instead of a dataset: the log llmrec serve wrote (a folder, a "
                         ".db file or NAME:WHERE); IPS, SNIPS and DR estimates (docs/evaluation.md, 'Evaluating on "
                         "logged traffic').")] = None,
    reward: Annotated[Optional[str], typer_option(
        "--reward", help=f"With --logged: the reward of a shown item, from its feedback: {DEFAULT_REWARD} (the "
                         "default), rating, or weights such as click=1,purchase=5,dismissal=-1.")] = None,
    weights: Annotated[str, typer_option(
        "--weights", help="With --logged: position (pi_e of the logged item at its position over its logged "
                          "propensity) or cascade (the lists agree down to it, over the logged cascade "
                          "probability).")] = "position",
    estimators: Annotated[Optional[str], typer_option(
        "--estimators", help=f"With --logged: which of {', '.join(ESTIMATORS)}, comma-separated "
                             f"(default {','.join(DEFAULT_ESTIMATORS)}).")] = None,
    bootstrap: Annotated[int, typer_option(
        "--bootstrap", min=1, help="With --logged: bootstrap resamples of the requests for the intervals.")]
        = N_BOOTSTRAP,
    clip: Annotated[Optional[float], typer_option(
        "--clip", min=1e-12, help="With --logged: clip importance weights at this (IPS, DR).")] = None,
    since: Annotated[Optional[str], typer_option(
        "--since", help="With --logged: only requests logged at or after this time (unix seconds, ISO 8601, or a "
                        "time ago: 30m, 2h, 7d).")] = None,
    allow_unsupported: Annotated[bool, typer_option(
        "--allow-unsupported", help="With --logged: estimate policies the log cannot support anyway (biased; "
                                    "marked).")] = False,
    dialogues: Annotated[Optional[int], typer_option(
        "--dialogues", min=1, help="Evaluate a conversational spec (one with 'state:') in this many simulated "
                                   "dialogues (the default for such a spec: 50; docs/conversation.md).")] = None,
    max_turns: Annotated[int, typer_option("--max-turns", min=1, help="With dialogues: turns before a simulated "
                                                                      "user gives up.")] = 8,
    noise: Annotated[float, typer_option("--noise", min=0.0, max=1.0, help="With dialogues: how often a "
                                                                           "simulated user answers wrongly.")] = 0.0,
    stamps: Annotated[Optional[list[Path]], typer_option(
        "--stamps", help="With --logged: a file or folder of provenance stamps (GET /v1/provenance), to name what "
                         "changed since the log.")] = None,
    engine: Annotated[str, typer_option(
        "--engine", help="Where the cases run: local (this process, the default) or ray (a Ray actor pool; "
                         "pip install 'llmrec[ray]'; docs/scaling.md).")] = "local",
    address: Annotated[Optional[str], typer_option(
        "--address", help="With --engine ray: the cluster to join (auto, or HOST:PORT of its head). Default: start "
                          "a Ray in this process.")] = None,
    num_cpus: Annotated[Optional[int], typer_option(
        "--num-cpus", min=1, help="With --engine ray and no --address: the CPUs of the Ray started here.")] = None,
    workers: Annotated[Optional[int], typer_option(
        "--workers", min=1, help="With --engine ray: actors in the pool (each builds the spec's runtime once). "
                                 "Default: one per CPU of the cluster.")] = None,
    otel: Annotated[Optional[str], typer_option(
        "--otel", help="Trace every case's run with OpenTelemetry: console (spans as JSON on stderr), otlp (to "
                       "$OTEL_EXPORTER_OTLP_ENDPOINT) or none. Default: $OTEL_TRACES_EXPORTER, else off.",
        show_default=False)] = None,
) -> None:
    """Run specs over a dataset's test cases and report ranking, beyond-accuracy, LLM, grounding and latency
    metrics (and LLM-as-judge scores with a judge model); or, with --logged, estimate their value on served
    traffic (off-policy: IPS, SNIPS, DR).

    \b
    Examples:
      llmrec eval specs/quickstart.yaml --users 50
      llmrec eval specs/movielens_cf.yaml specs/movielens_ease.yaml --k 5,10 --report runs/report
      llmrec eval specs/quickstart.yaml --users 50 --json - -q > report.json
      llmrec eval specs/shop.yaml --logged logs/ --reward click=1,purchase=5
    """
    import json
    import os
    import sys

    import typer

    from ..commands import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Exit, load_graph  # lazy: typer, on a run
    from ..commands import out as _out
    from ..commands import say as _err

    if quiet:
        progress_.set_quiet(True)
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"'{engine}' is not one of local, ray", param_hint="'--engine'")
    ray_only = [n for n, v in (("--address", address), ("--num-cpus", num_cpus), ("--workers", workers))
                if v is not None]
    if engine != "ray" and ray_only:
        raise typer.BadParameter("applies with --engine ray only", param_hint=" / ".join(f"'{n}'" for n in ray_only))
    if engine != "local" and (logged is not None or dialogues is not None):
        raise typer.BadParameter("runs a dataset's test cases; --logged and --dialogues run in this process",
                                 param_hint="'--engine'")
    if logged is not None:
        return _logged_command(
            specs, logged, given={"--dataset": dataset is not None, "--split": split is not None,
                                  "--k": k != "5,10,20", "--metrics": metrics is not None,
                                  "--results": results is not None, "--judge-model": judge_model is not None,
                                  "--judge-rubric": judge_rubric is not None, "--judge-spec": judge_spec is not None,
                                  "--report": report_dir is not None, "--trec": trec_dir is not None,
                                  "--out": out is not None, "--fresh": fresh},
            reward=reward, weights=weights, estimators=estimators, bootstrap=bootstrap, clip=clip, since=since,
            allow_unsupported=allow_unsupported, stamps=stamps, users=users, output=output, json_path=json_path,
            concurrency=concurrency, variants=variants, seed=seed, trust=trust)
    graphs = [load_graph(spec, trust) for spec in specs]  # every spec valid before anything runs
    if dialogues is not None or (dataset is None and all(g.state_model is not None for g in graphs)):
        from .dialogues import DialogueEvalError, DialogueSettings, parse_reward, run_command  # lazy: simulation

        try:
            settings = DialogueSettings(dialogues=dialogues or 50, seed=seed or 0, max_turns=max_turns,
                                        noise=noise, reward=parse_reward(reward), concurrency=concurrency)
            targets = [(str(label), validate_variant(spec, variant, str(spec)) if variant else graph)
                       for (label, spec, variant, graph) in _dialogue_targets(specs, graphs, variants)]
            return run_command(targets, settings, json_path=json_path, report_dir=report_dir, out=_out, err=_err)
        except DialogueEvalError as exc:
            _err(f"error: {exc}")
            raise Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            _err("interrupted: simulated dialogues are not kept (each run replays them from --seed); run the "
                 "command again, with fewer --dialogues for a quicker answer")
            raise Exit(EXIT_INTERRUPTED) from None
    only_logged = {"--reward": reward is not None, "--weights": weights != "position",
                   "--estimators": estimators is not None, "--bootstrap": bootstrap != N_BOOTSTRAP,
                   "--clip": clip is not None, "--since": since is not None, "--allow-unsupported": allow_unsupported,
                   "--stamps": bool(stamps)}
    stray = [name for name, on in only_logged.items() if on]
    if stray:
        raise typer.BadParameter("applies with --logged LOG only", param_hint=" / ".join(f"'{n}'" for n in stray))
    ks = _parse_k(k)
    if split is not None and split not in SPLIT_CHOICES:
        raise typer.BadParameter(f"'{split}' is not one of {', '.join(SPLIT_CHOICES)}", param_hint="'--split'")
    if dataset is None and (split is not None or seed is not None):
        raise typer.BadParameter("applies to --dataset only; a spec's own dataset resource sets its split and "
                                 "seed in its config", param_hint="'--split' / '--seed'")
    if trec_dir is not None:
        try:
            check_folder(trec_dir)
        except TrecError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--trec'") from None
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics is not None else None
    targets = [t for t, _ in _variant_targets(specs, graphs, variants)]
    rubric = load_rubric(judge_rubric) if judge_rubric is not None else None
    model: str | bool | None = None if no_judge else (judge_model or os.environ.get(MODEL_ENV, "").strip() or None)
    if judge_spec is not None and not no_judge:
        if trust:
            grant(judge_spec.expanduser().resolve().parent)
        model = model or True  # your judge spec, with the model its own `model` resource names
    reason = ("--no-judge was given" if no_judge else
              f"no judge model: pass --judge-model MODEL or set ${MODEL_ENV}")
    if out is None:
        key = fingerprint({"dataset": dataset, "split": split, "seed": seed, "ks": list(ks), "users": users,
                           "output": output, "metrics": metric_names})
        name = slug(Path(dataset).name if dataset is not None else Path(specs[0]).stem)
        out = Path("runs") / "eval" / f"{name}-{key[:10]}"
    data = None
    if dataset is not None:
        with progress_.step(f"loading dataset {dataset}"):
            data = _load_dataset(dataset, split, seed, graphs[0].registry)
    runner = _eval_engine(engine, address, num_cpus, workers, trust, dataset, split, seed, graphs[0].registry)
    tracing = _eval_tracing(otel)
    if tracing is not None:
        runner = TracedEngine(runner, tracing, tracing.context_from_env())
    bar = sys.stderr.isatty() and not progress_.is_quiet()
    # the evaluation's own bar counts the cases: a second live display of llmrec.progress under it would garble
    # the terminal, so the steps inside (embedding, first-use training) stay silent while it shows
    was_quiet = progress_.set_quiet(True) if bar else None
    try:
        report = evaluate(targets, data, ks=ks, users=users, concurrency=concurrency, output=output,
                          progress=bar, results_path=results, metrics=metric_names, judge=model,
                          judge_rubric=rubric, judge_reason=reason, judge_spec=judge_spec, out=out, fresh=fresh,
                          log=(lambda _: None) if quiet else _err, engine=runner)
    except KeyboardInterrupt as exc:
        if isinstance(exc, EvalInterrupted) and exc.stores:
            kept = exc.kept  # the cases in this evaluation's own files, not other runs' beside them
        else:  # interrupted before a file was opened (while loading data): count what the folder holds
            kept = 0
            for file in Path(out).glob("*.jsonl") if Path(out).is_dir() else ():
                with file.open(encoding="utf-8", errors="replace") as f:  # the first line is the store's header
                    kept += sum(1 for line in f if line.endswith("\n") and not line.startswith('{"header"'))
        _err(f"interrupted: {kept} case result{'s' if kept != 1 else ''} kept in {out}; run the same command "
             "again (without --fresh) to resume from them")
        raise Exit(EXIT_INTERRUPTED) from None  # the message above is the whole story: no extra "aborted"
    finally:
        if was_quiet is not None:
            progress_.set_quiet(was_quiet)
        if tracing is not None:
            tracing.shutdown()
    paths = iter(str(spec) for spec in specs)
    for result in report.results:
        if result.variant is None:
            result.path = next(paths, result.path)
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
    if report_dir is not None:
        from .html import write_reports  # lazy: matplotlib and the HTML report, only with --report

        files = write_reports(report, report_dir)
        _err(f"report written: {files['markdown']}, {files['html']}")
    trec_failed = None  # the report still prints; the command then fails
    if trec_dir is not None:
        try:
            written = write_trec(report, trec_dir)
            _err(f"TREC files written to {trec_dir}: {', '.join(p.name for p in written)}")
        except (TrecError, OSError) as exc:
            trec_failed = f"error: TREC files not written to {trec_dir}: {exc}"
    if json_path == "-":
        _out(text)
    else:
        if json_path is not None:
            target = Path(json_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
        from rich.console import Console

        report.render(Console(width=max(100, Console().width)))
    if trec_failed is not None:
        _err(trec_failed)
        raise Exit(EXIT_FAILED)
    not_run = [r.label or r.spec for r in report.results if r.not_run is not None]
    if not_run:  # the others' numbers are printed above; the command still fails, so a script notices
        _err(f"error: not evaluated: {', '.join(not_run)} (why: the notes above)")
        raise Exit(EXIT_FAILED)


def _eval_engine(engine: str, address: str | None, num_cpus: int | None, workers: int | None, trust: bool,
                 dataset: str | None, split: str | None, seed: int | None, registry: Registry) -> Any:
    """``--engine``'s case engine; for ray, connected now (before anything is written), with the load options of
    ``--dataset`` for its workers to load the same split."""
    if engine == "local":
        return LocalEngine()
    import typer

    from ..distributed.engine import EngineError  # lazy: Ray, only with --engine ray
    from ..distributed.eval_engine import RayEvalEngine  # lazy: Ray, only with --engine ray

    options = None
    if dataset is not None:
        split = split if split is not None else _default_split(dataset, registry)
        name = str(Path(dataset).resolve()) if is_path(dataset, registry) else dataset  # same path on every node
        options = {"name": name, **({"split": split} if split is not None else {}),
                   **({"seed": seed} if seed is not None else {})}
    runner = RayEvalEngine(address=address, num_cpus=num_cpus, workers=workers, dataset=options, trust=trust)
    try:
        runner.connect()
    except EngineError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    return runner


def _eval_tracing(otel: str | None) -> Any:
    """``--otel`` (else ``$OTEL_TRACES_EXPORTER``) -> a Tracing, or None when tracing is off (nothing imported)."""
    import sys

    from ..commands import EXIT_USAGE, Exit, say  # lazy: typer, once a command runs
    from ..telemetry import TelemetryError, configure  # lazy: only when an evaluation runs

    try:
        return configure(otel, simple=True, install=True, console=sys.stderr)  # stdout keeps --json -
    except TelemetryError as exc:
        say(f"error: {exc}")
        raise Exit(EXIT_USAGE) from None


def _dialogue_targets(specs: list[Path], graphs: list[Any], variants: str | None) -> list[tuple[str, Path, Any, Any]]:
    """(label, spec file, variant or None, graph) for each spec and each variant ``--variants`` asks for."""
    out = []
    for target, spec in _variant_targets(specs, graphs, variants):
        if isinstance(target, tuple):
            out.append((f"{graphs[specs.index(spec)].name}:{target[1]}", spec, target[1], None))
        else:
            out.append((target.name, spec, None, target))
    return out


def _variant_targets(specs: list[Path], graphs: list[Any], variants: str | None) -> list[tuple[Any, Path]]:
    """Each spec (its graph) and the variants ``--variants`` asks for (default: all; ``(file, variant)``), in the
    order ``llmrec eval`` compares them, each with its spec file."""
    import typer

    wanted = None if variants is None else [v.strip() for v in variants.split(",") if v.strip()]
    if wanted == ["none"]:
        wanted = []
    declared = {str(spec): variant_names(g.document) for spec, g in zip(specs, graphs)}
    if wanted:
        missing = [v for v in wanted if not any(v in names for names in declared.values())]
        if missing:
            have = sorted({v for names in declared.values() for v in names})
            raise typer.BadParameter(f"no spec declares variant {', '.join(repr(v) for v in missing)} "
                                     f"(declared: {', '.join(have) or 'none'})", param_hint="'--variants'")
    targets: list[tuple[Any, Path]] = []
    for spec, graph in zip(specs, graphs):
        targets.append((graph, spec))
        names = declared[str(spec)]
        targets += [((spec, v), spec) for v in (names if wanted is None else [v for v in wanted if v in names])]
    return targets


def json_report(data: Any, json_path: str | None, out: Any) -> bool:
    """``--json PATH``: the report as JSON in that file, or on stdout for ``-`` (then True: print nothing else)."""
    import json

    text = json.dumps(data, indent=2, ensure_ascii=False)
    if json_path == "-":
        out(text)
        return True
    if json_path is not None:
        target = Path(json_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
    return False


def _logged_command(specs: list[Path], log: str, *, given: dict[str, bool], reward: str | None, weights: str,
                    estimators: str | None, bootstrap: int, clip: float | None, since: str | None,
                    allow_unsupported: bool, stamps: list[Path] | None, users: int | None, output: str | None,
                    json_path: str | None, concurrency: int, variants: str | None, seed: int | None,
                    trust: bool) -> None:
    """``llmrec eval SPEC... --logged LOG`` (llmrec/eval/logged.py)."""
    import math
    import sys

    import typer

    from ..commands import EXIT_FAILED, EXIT_INTERRUPTED, Exit, load_graph  # lazy: typer, once a command runs
    from ..commands import out as _out
    from ..commands import say as _err
    from .logged import LogError, Target, evaluate_logged, parse_reward, parse_since  # lazy: only with --logged
    from .ope import OPEInputError  # lazy: only with --logged

    stray = [name for name, on in given.items() if on]
    if stray:
        raise typer.BadParameter("does not apply with --logged (a logged evaluation scores served traffic, not a "
                                 "dataset's cases)", param_hint=" / ".join(f"'{n}'" for n in stray))
    if weights not in WEIGHTS:
        raise typer.BadParameter(f"'{weights}' is not one of {', '.join(WEIGHTS)}", param_hint="'--weights'")
    try:
        reward_weights = parse_reward(reward if reward is not None else DEFAULT_REWARD)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--reward'") from None
    names = [e.strip() for e in (estimators or ",".join(DEFAULT_ESTIMATORS)).split(",") if e.strip()]
    unknown = [e for e in names if e.lower() not in ESTIMATORS and e.lower() not in ("ipw", "snipw")]
    if unknown or not names:
        raise typer.BadParameter(f"{', '.join(repr(e) for e in unknown) or 'none given'}: choose from "
                                 f"{', '.join(ESTIMATORS)}", param_hint="'--estimators'")
    try:
        start = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--since'") from None
    graphs = [load_graph(spec, trust) for spec in specs]  # every spec valid before anything runs
    targets = [t if isinstance(t, tuple) else Target(t, str(spec)) for t, spec in
               _variant_targets(specs, graphs, variants)]
    bar = sys.stderr.isatty() and not progress_.is_quiet()
    try:
        report = evaluate_logged(targets, log, variants=False, reward=reward_weights, weights=weights,
                                 estimators=names, output=output, limit=users, since=start, concurrency=concurrency,
                                 n_bootstrap=bootstrap, seed=seed if seed is not None else 0,
                                 clip=clip if clip is not None else math.inf, allow_unsupported=allow_unsupported,
                                 stamps=stamps or (), progress=bar, log=_err)
    except KeyboardInterrupt:
        _err("interrupted: a logged evaluation keeps nothing; run the same command again")
        raise Exit(EXIT_INTERRUPTED) from None
    except LogError as exc:
        if exc.usage:
            raise typer.BadParameter(str(exc), param_hint="'--logged'") from None
        _err(f"error: {exc}")
        raise Exit(EXIT_FAILED) from None
    except OPEInputError as exc:
        _err(f"error: the log cannot be evaluated: {exc}")
        raise Exit(EXIT_FAILED) from None
    if not json_report(report.to_dict(), json_path, _out):
        from rich.console import Console

        report.render(Console(width=max(100, Console().width)))
    problems = report.problems()
    if problems:  # the others' numbers are printed above; the command still fails, so a script notices
        _err(f"error: no estimate for: {', '.join(problems)} (why: the notes above)")
        raise Exit(EXIT_FAILED)


def typer_argument(help: str) -> Any:
    import typer

    return typer.Argument(help=help, show_default=False)


def typer_option(*names: str, **kwargs: Any) -> Any:
    import typer

    return typer.Option(*names, **kwargs)


def replay_command(
    log: Annotated[str, typer_argument("The log: a folder (llmrec serve --log-dir), a .db file or NAME:WHERE.")],
    spec: Annotated[Optional[Path], typer_argument(
        "The spec that served the requests. Default: <name>.yaml (or specs/<name>.yaml) for the one spec the log "
        "names.")] = None,
    limit: Annotated[Optional[int], typer_option(
        "--limit", min=1, help="Replay only the first N logged requests.")] = None,
    since: Annotated[Optional[str], typer_option(
        "--since", help="Only requests logged at or after this time: unix seconds, ISO 8601 or a time ago "
                        "(30m, 2h, 7d).")] = None,
    tolerance: Annotated[float, typer_option(
        "--tolerance", min=0.0, help="Scores within this (relative and absolute) count as equal.")] = TOLERANCE,
    concurrency: Annotated[int, typer_option("--concurrency", min=1, help="Requests in flight at once.")] = 8,
    stamps: Annotated[Optional[list[Path]], typer_option(
        "--stamps", help="A file (or folder) of provenance stamps (what GET /v1/provenance returned), to name what "
                         "changed since the log; may be repeated.")] = None,
    show: Annotated[int, typer_option("--show", min=0, help="How many changed requests to list.")] = SHOW,
    json_path: Annotated[Optional[str], typer_option(
        "--json", help="Write the report as JSON to this file ('-' for stdout, instead of the text).")] = None,
    trust: Annotated[bool, typer_option(
        "--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    quiet: Annotated[bool, typer_option(
        "--quiet", "-q", help="No progress on stderr (bars and step messages); errors still print.")] = False,
) -> None:
    """Re-run logged requests and report the answers that changed, and which provenance components changed.

    Exit code 0 when every answer is what was logged, 5 when some changed (docs/evaluation.md).

    \b
    Examples:
      llmrec replay logs/ specs/shop.yaml
      llmrec replay sqlite:logs/serve.db specs/shop.yaml --since 2h --limit 500
      llmrec replay logs/ specs/shop.yaml --json - -q > replay.json
    """
    import asyncio
    import sys

    import typer

    from ..commands import EXIT_FAILED, EXIT_INTERRUPTED, Exit, load_graph  # lazy: typer, once a command runs
    from ..commands import out as _out
    from ..commands import say as _err
    from ..plugins import get_registry  # lazy: the registry, once a command runs
    from .logged import LogError, parse_since, read_impressions  # lazy: the log readers, once replay runs
    from .replay import areplay_logs, find_spec  # lazy: the replay machinery, once replay runs

    if quiet:
        progress_.set_quiet(True)
    try:
        start = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--since'") from None
    if spec is None:
        try:
            read = read_impressions(log, get_registry(None), since=start)
        except LogError as exc:
            if exc.usage:
                raise typer.BadParameter(str(exc), param_hint="'LOG'") from None
            _err(f"error: {exc}")
            raise Exit(EXIT_FAILED) from None
        names = sorted({imp.spec for imp in read.impressions})
        found = find_spec(names)
        if found is None:
            raise typer.BadParameter(
                f"give the spec that served the requests: llmrec replay {log} SPEC (the log names "
                f"{', '.join(repr(n) for n in names)}; no {names[0] + '.yaml' if len(names) == 1 else 'single spec'} "
                "was found here or in specs/)", param_hint="'SPEC'")
        spec = found
    graph = load_graph(spec, trust)  # prints every spec error and exits 1 when the spec is invalid
    bar = sys.stderr.isatty() and not progress_.is_quiet()
    try:
        report = asyncio.run(areplay_logs(log, spec, limit=limit, since=start, tolerance=tolerance,
                                          concurrency=concurrency, stamps=stamps or (), progress=bar, graph=graph))
    except KeyboardInterrupt:
        _err("interrupted: a replay keeps nothing; run the same command again")
        raise Exit(EXIT_INTERRUPTED) from None
    except LogError as exc:
        if exc.usage:
            raise typer.BadParameter(str(exc), param_hint="'LOG'") from None
        _err(f"error: {exc}")
        raise Exit(EXIT_FAILED) from None
    if not json_report(report.to_dict(), json_path, _out):
        for line in report.lines(show):
            _out(line)
    if report.changed:
        raise Exit(EXIT_CHANGED)


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    cli.command(name="eval")(eval_command)
    cli.command(name="replay")(replay_command)


@hookimpl
def llmrec_register_metrics(register: Any) -> None:
    for name, fn in {**RANKING_METRICS, **LIST_METRICS}.items():
        register(name, fn)
