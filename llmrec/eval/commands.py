"""``llmrec eval`` and the built-in metrics, registered as a default plugin.

    llmrec eval specs/a.yaml specs/b.yaml --dataset movielens-100k --split temporal --k 5,10,20
    llmrec eval specs/a.yaml --users 50 --json -          # JSON on stdout instead of the table

Every metric of :mod:`llmrec.eval.metrics` is registered through ``llmrec_register_metrics``, so plugins add
theirs the same way and ``llmrec eval`` reports them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from ..hookspecs import hookimpl
from .metrics import LIST_METRICS, RANKING_METRICS

SPLIT_CHOICES = ("temporal", "user", "leave-last", "none")


def _parse_k(value: str) -> tuple[int, ...]:
    import typer

    from .runner import parse_ks

    try:
        return parse_ks(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--k'") from None


def _default_split(name: str) -> str | None:
    """The split --dataset NAME uses when --split is not given: the loader's own default, except that a
    dataset whose default holds nothing out (split 'none') but which can be split temporally is split
    temporally (PROTOCOLS.md's per-user 90/10). None for folders and unknown names (the loader decides)."""
    import inspect

    from ..data.datasets import DATASETS, is_path

    info = None if is_path(name) else DATASETS.get(name)
    if info is None:
        return None
    param = inspect.signature(info.loader).parameters.get("split")
    default = param.default if param is not None and param.default is not inspect.Parameter.empty else "none"
    return "temporal" if default == "none" and "temporal" in info.splits else None


def _load_dataset(name: str, split: str | None, seed: int | None) -> Any:
    from ..data.datasets import load_dataset

    options: dict[str, Any] = {}
    split = split if split is not None else _default_split(name)
    if split is not None:
        options["split"] = split
    if seed is not None:
        options["seed"] = seed
    return load_dataset(name, **options)


def eval_command(
    specs: Annotated[list[Path], typer_argument("Spec files to evaluate; several are compared side by side.")],
    dataset: Annotated[Optional[str], typer_option(
        "--dataset", "-d", help="Dataset name (movielens-100k, movielens-1m, bbc-news, demo) or folder. "
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
) -> None:
    """Run specs over a dataset's test cases and report ranking, beyond-accuracy and latency metrics."""
    import json
    import sys

    import typer

    from ..cli import _load_graph, _out
    from .runner import evaluate

    ks = _parse_k(k)
    if split is not None and split not in SPLIT_CHOICES:
        raise typer.BadParameter(f"'{split}' is not one of {', '.join(SPLIT_CHOICES)}", param_hint="'--split'")
    if dataset is None and (split is not None or seed is not None):
        raise typer.BadParameter("applies to --dataset only; a spec's own dataset resource sets its split and "
                                 "seed in its config", param_hint="'--split' / '--seed'")
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics is not None else None
    graphs = [_load_graph(spec) for spec in specs]  # every spec valid before anything runs
    data = _load_dataset(dataset, split, seed) if dataset is not None else None
    report = evaluate(graphs, data, ks=ks, users=users, concurrency=concurrency, output=output,
                      progress=sys.stderr.isatty(), results_path=results, metrics=metric_names)
    for result, spec in zip(report.results, specs):
        result.path = str(spec)
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
    if json_path == "-":
        _out(text)
        return
    if json_path is not None:
        target = Path(json_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
    from rich.console import Console

    report.render(Console(width=max(100, Console().width)))


def typer_argument(help: str) -> Any:
    import typer

    return typer.Argument(help=help, show_default=False)


def typer_option(*names: str, **kwargs: Any) -> Any:
    import typer

    return typer.Option(*names, **kwargs)


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    cli.command(name="eval")(eval_command)


@hookimpl
def llmrec_register_metrics(register: Any) -> None:
    for name, fn in {**RANKING_METRICS, **LIST_METRICS}.items():
        register(name, fn)
