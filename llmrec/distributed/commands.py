"""``llmrec batch`` and ``llmrec embed``, registered as a default plugin (``llmrec_register_commands``).

    llmrec batch specs/quickstart.yaml --input requests.jsonl --output results.jsonl
    llmrec batch specs/quickstart.yaml --input requests.jsonl --output results.jsonl --resume
    llmrec batch specs/movielens_cf.yaml --input users.csv --output out.parquet --engine ray --address auto
    llmrec embed specs/quickstart.yaml --output runs/embed/shop --engine ray --num-cpus 2

What they do is in :mod:`llmrec.distributed.batch` and :mod:`llmrec.distributed.embedding`; scaling out on a
Ray cluster in docs/scaling.md. Only the machinery a command runs is imported, when it runs: Ray only with
``--engine ray``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from ..eval.commands import typer_argument, typer_option
from ..hookspecs import hookimpl

ENGINE_HELP = "local (this process, the default) or ray (Ray Data over an actor pool; pip install 'llmrec[ray]')."


def _engine(engine: str, address: str | None, num_cpus: int | None, workers: int | None) -> None:
    import typer

    from .engine import ENGINES  # lazy: once a command runs

    if engine not in ENGINES:
        raise typer.BadParameter(f"'{engine}' is not one of {', '.join(ENGINES)}", param_hint="'--engine'")
    given = [name for name, value in (("--address", address), ("--num-cpus", num_cpus), ("--workers", workers))
             if value is not None]
    if engine != "ray" and given:
        raise typer.BadParameter("applies with --engine ray only", param_hint=" / ".join(f"'{n}'" for n in given))


def batch_command(
    spec: Annotated[Path, typer_argument("The spec to run on every request.")],
    input_path: Annotated[Path, typer_option(
        "--input", "-i", help="The requests: .jsonl (a JSON object a line), .csv (a header, then a request a row) or "
                              ".parquet; columns are the spec's inputs.")],
    output: Annotated[Path, typer_option(
        "--output", "-o", help="Where the results go, one record per row in input order: .jsonl, or .parquet "
                               "(written when the job completes).")],
    resume: Annotated[bool, typer_option(
        "--resume", help="Continue an interrupted job into the same --output (same spec and input).")] = False,
    id_column: Annotated[str, typer_option(
        "--id-column", help="The column naming each request (copied into its record; not an input unless the "
                            "spec declares it).")] = "id",
    batch_size: Annotated[int, typer_option(
        "--batch-size", min=1, help="Rows per batch: what one worker runs at once and what is written at once.")]
        = 64,
    concurrency: Annotated[Optional[int], typer_option(
        "--concurrency", min=1, help="Requests in flight at once within a batch (default: the runtime's).")] = None,
    engine: Annotated[str, typer_option("--engine", help=ENGINE_HELP)] = "local",
    address: Annotated[Optional[str], typer_option(
        "--address", help="With --engine ray: the cluster to join (auto: the one `ray start` runs here, or "
                          "HOST:PORT of its head). Default: start a Ray in this process.")] = None,
    num_cpus: Annotated[Optional[int], typer_option(
        "--num-cpus", min=1, help="With --engine ray and no --address: the CPUs of the Ray started here.")] = None,
    workers: Annotated[Optional[int], typer_option(
        "--workers", min=1, help="With --engine ray: actors in the pool (each builds the spec's runtime once). "
                                 "Default: one per CPU of the cluster.")] = None,
    trust: Annotated[bool, typer_option(
        "--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    quiet: Annotated[bool, typer_option(
        "--quiet", "-q", help="No progress on stderr; errors still print.")] = False,
) -> None:
    """Run a spec over a file of requests and write one result per row, in input order; bad rows get an error
    record and the job goes on; Ctrl-C keeps what was written (--resume continues).

    \b
    Examples:
      llmrec batch specs/quickstart.yaml -i requests.jsonl -o results.jsonl
      llmrec batch specs/quickstart.yaml -i requests.jsonl -o results.jsonl --resume
      llmrec batch specs/movielens_cf.yaml -i users.csv -o results.parquet --engine ray --workers 4
    """
    import sys

    import typer

    from ..commands import EXIT_INTERRUPTED, Exit, load_graph, say  # lazy: once a command runs
    from .batch import BatchError, BatchInterrupted, run_batch  # lazy: once a command runs
    from .engine import EngineError  # lazy: once a command runs

    _engine(engine, address, num_cpus, workers)
    graph = load_graph(spec, trust)
    try:
        summary = run_batch(spec, input_path, output, graph=graph, engine=engine, resume=resume,
                            batch_size=batch_size, concurrency=concurrency, id_column=id_column, trust=trust,
                            address=address, num_cpus=num_cpus, workers=workers,
                            progress=not quiet and sys.stderr.isatty())
    except BatchInterrupted as exc:
        s = exc.summary
        say(f"interrupted: {s.written} row{'s' if s.written != 1 else ''} kept in {s.output}; run the same command "
            "with --resume to continue from them")
        raise Exit(EXIT_INTERRUPTED) from None
    except BatchError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'" if exc.option else None) from None
    except EngineError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    if not quiet:
        resumed = f" ({summary.resumed} from before)" if summary.resumed else ""
        failed = f", {summary.failed} with an error record" if summary.failed else ""
        say(f"{summary.written} rows written to {summary.output}{resumed}{failed} in {summary.seconds:.1f} s "
            f"({summary.engine})")


def embed_command(
    source: Annotated[Path, typer_argument(
        "A spec (its dataset or catalog resource and its embedder) or a catalog file (.csv, .jsonl, .parquet).")],
    output: Annotated[Path, typer_option(
        "--output", "-o", help="Folder for ids.json, vectors.npy, meta.json and the index.")],
    model: Annotated[Optional[str], typer_option(
        "--model", help="Embedding model (all-MiniLM-L6-v2 or a local folder). Default: the spec's embedder's, "
                        "else all-MiniLM-L6-v2.")] = None,
    id_: Annotated[str, typer_option("--id", help="A catalog file's id column.")] = "id",
    title: Annotated[str, typer_option("--title", help="A catalog file's title column.")] = "title",
    text: Annotated[Optional[str], typer_option(
        "--text", help="A catalog file's text to embed, a template over its columns, e.g. '{{title}}. {{summary}}' "
                       "(default: title and description).")] = None,
    index: Annotated[str, typer_option(
        "--index", help="Index kind: exact (no files), lancedb-flat, lancedb-ann, faiss-ivf or auto.")] = "exact",
    batch_size: Annotated[int, typer_option(
        "--batch-size", min=1, help="Texts per batch (one worker call).")] = 1024,
    engine: Annotated[str, typer_option("--engine", help=ENGINE_HELP)] = "local",
    address: Annotated[Optional[str], typer_option(
        "--address", help="With --engine ray: the cluster to join (auto, or HOST:PORT).")] = None,
    num_cpus: Annotated[Optional[int], typer_option(
        "--num-cpus", min=1, help="With --engine ray and no --address: the CPUs of the Ray started here.")] = None,
    workers: Annotated[Optional[int], typer_option(
        "--workers", min=1, help="With --engine ray: actors in the pool (each loads the model once).")] = None,
    trust: Annotated[bool, typer_option(
        "--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    quiet: Annotated[bool, typer_option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Embed a catalog's items and build a vector index over them.

    \b
    Examples:
      llmrec embed specs/quickstart.yaml -o runs/embed/shop
      llmrec embed items.csv --text '{{title}}. {{summary}}' -o runs/embed/items --engine ray --workers 4
    """
    import sys

    import typer

    from ..commands import load_graph, say  # lazy: once a command runs
    from ..errors import DataError  # lazy: once a command runs
    from .embedding import EmbedError, embed_catalog, is_spec, source_from_file, source_from_spec  # lazy
    from .engine import EngineError  # lazy: once a command runs

    _engine(engine, address, num_cpus, workers)
    try:
        if is_spec(source):
            src = source_from_spec(load_graph(source, trust), model)
        else:
            src = source_from_file(source, model=model, id=id_, title=title, text=text)
        meta = embed_catalog(src, output, engine=engine, batch_size=batch_size, index=index, address=address,
                             num_cpus=num_cpus, workers=workers, progress=not quiet and sys.stderr.isatty())
    except EmbedError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'" if exc.option else None) from None
    except EngineError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    except DataError as exc:
        raise typer.BadParameter(exc.format(), param_hint="'SOURCE'") from None
    if not quiet:
        say(f"{meta['items']} items embedded ({meta['model']}, dim {meta['dim']}) into {output} in "
            f"{meta['embed_seconds']:.1f} s ({engine}); index: {meta['index']}")


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    cli.command(name="batch")(batch_command)
    cli.command(name="embed")(embed_command)
