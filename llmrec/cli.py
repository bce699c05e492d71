"""The ``llmrec`` command. The only place where errors become text and exit codes.

Exit codes (a message on stderr always says why):

- 0 success;
- 1 the spec is invalid, or a plugin is broken: nothing ran;
- 2 bad command-line usage;
- 3 the request's inputs do not fit the spec (``--input``): nothing ran;
- 4 the work failed: a node failed with no fallback, a dataset or model is missing, training failed;
- 5 ``llmrec replay``: some replayed answer differs from the logged one (the report says which and why);
- 70 an internal error (a bug in llmrec or a plugin: set LLMREC_DEBUG=1 for the traceback);
- 130 interrupted (Ctrl-C), with a resume hint where the work can resume.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import progress
from . import trust as trust_  # as trust_: commands take a `trust` flag
from .errors import InputError, LlmrecError, PluginError, RunError, SpecError, SpecErrors
from .plugins import get_registry, llmrec_version, local_plugin_files
from .scaffold import ScaffoldError, write

# Only what every command needs is imported above (docs/architecture.md, "Imports at the top, unless marked"):
# the spec checker, the runtime, the drawing and the JSON Schema export are imported by the commands that use
# them, so that `llmrec version` and `llmrec trust` start without pydantic models, Jinja or asyncio.

ROOT_HELP = """Declarative recommender systems with LLMs: validate, run, draw and inspect YAML specs.

\b
Examples:
  llmrec init myrec && llmrec run myrec/spec.yaml -i user_id=u1
  llmrec run specs/quickstart.yaml -i user_id=u1 -i k:=5
  llmrec eval specs/quickstart.yaml --users 50
  llmrec --install-completion        # tab completion for bash, zsh, fish or PowerShell
"""

app = typer.Typer(
    name="llmrec",
    help=ROOT_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"llmrec {llmrec_version()}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print llmrec's version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Declarative recommender systems with LLMs: validate, run, draw and inspect YAML specs."""


#: ``--quiet``/``-q`` on every command that may take long: no progress on stderr (llmrec/progress.py).
QuietOption = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress on stderr (bars and step messages); errors and warnings still print.")]


EXIT_SPEC, EXIT_USAGE, EXIT_INPUT, EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 4, 70, 130


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def say(text: str) -> None:
    sys.stderr.write(text + "\n")


#: ``--trust`` on every command that loads a spec (llmrec/trust.py).
TrustOption = Annotated[bool, typer.Option(
    "--trust", help="Trust the spec's folder: import its plugins/*.py, schema and check files and the modules it "
                    "names. Only for specs you have read (docs/security.md).")]


def _check(path: Path, trust: bool = False) -> tuple[Any, list[SpecError], list[SpecError]]:
    from .api import check  # lazy: the checker and the plugins, only for commands that load a spec

    return check(path, str(path), trust)


def load_graph(spec: Path, trust: bool = False) -> Any:
    """Validate or exit 1 printing every error, like `llmrec validate`."""
    graph, errors, warnings = _check(spec, trust)
    for w in warnings:
        say(w.format())
    if errors or graph is None:
        for e in errors:
            say(e.format())
        n = len(errors)
        say(f"{spec}: {n} error{'s' if n != 1 else ''}; nothing was run. Fix them and try again.")
        raise Exit(1)
    return graph


@app.command()
def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files to check.", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print problems only.")] = False,
    output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    trust: TrustOption = False,
) -> None:
    """Check specs without running anything; print every problem as file:line:col: node 'id': message.

    Code in an untrusted spec's folder is never imported: each reference to it is an error saying so.

    \b
    Examples:
      llmrec validate specs/*.yaml -q
      llmrec validate specs/quickstart.yaml --format json
    """
    total = 0
    report = []
    for spec in specs:
        graph, errors, warnings = _check(spec, trust)
        total += len(errors)
        if output_format == "json":
            report.append({
                "spec": str(spec),
                "valid": not errors,
                "errors": [_diag(e) for e in errors],
                "warnings": [_diag(w) for w in warnings],
            })
            continue
        for e in sorted(errors + warnings, key=SpecError.sort_key):
            out(e.format())
        if errors:
            n = len(errors)
            out(f"{spec}: {n} error{'s' if n != 1 else ''}")
        elif not quiet:
            out(f"{spec}: ok ({_n(len(graph.nodes), 'node')}, {_n(len(graph.resources), 'resource')}, "
                 f"{_n(len(graph.outputs), 'output')})")
    if output_format == "json":
        out(json.dumps(report, indent=2))
    if total:
        raise Exit(1)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _diag(e: SpecError) -> dict[str, Any]:
    loc = e.location
    return {
        "file": loc.file if loc else None,
        "line": loc.line if loc else None,
        "col": loc.col if loc else None,
        "node": e.node_id,
        "message": e.message,
        "hint": e.hint,
        "kind": type(e).__name__,
        "text": e.format(),
    }


_PAIR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(:?=)(.*)$", re.S)


def _read_input(values: list[str] | str | None) -> dict[str, Any]:
    """``--input`` values merged in order: a JSON object, ``@file.json``, ``key=text`` or ``key:=json``."""
    if values is None:
        return {}
    merged: dict[str, Any] = {}
    for value in [values] if isinstance(values, str) else values:
        merged.update(_read_one_input(value))
    return merged


def _read_one_input(value: str, option: str = "--input") -> dict[str, Any]:
    pair = _PAIR.match(value) if option == "--input" and not value.lstrip().startswith(("{", "@")) else None
    if pair is not None:
        key, op, raw = pair.groups()
        if op == "=":
            return {key: raw}
        try:
            return {key: json.loads(raw)}
        except json.JSONDecodeError as exc:
            say(f"error: --input {key}:= is not valid JSON: {exc.msg} at column {exc.colno}")
            say(f"hint: {key}:=3, {key}:='[\"a\", \"b\"]' or {key}:=true; for text use {key}=...")
            raise Exit(EXIT_INPUT) from None
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            say(f"error: cannot read input file '{path}': {exc.strerror}")
            raise Exit(EXIT_INPUT) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        say(f"error: {option} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        say("hint: quote it for the shell, e.g. --input '{\"user_id\": \"u1\"}', pass @file.json, or give "
             "pairs: -i user_id=u1 -i k:=5")
        raise Exit(EXIT_INPUT) from None
    if not isinstance(data, dict):
        say(f"error: {option} must be a JSON object, e.g. '{{\"user_id\": \"u1\"}}'"
            + (", or key=value pairs" if option == "--input" else ""))
        raise Exit(EXIT_INPUT)
    return data


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="The spec to run.", show_default=False)],
    input_: Annotated[
        Optional[list[str]], typer.Option(
            "--input", "-i", help="Request inputs: a JSON object, @file.json, or pairs key=text / key:=json "
                                  "(repeatable, merged in order).")
    ] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Also print the per-node trace.")] = False,
    deadline: Annotated[
        Optional[float], typer.Option("--deadline", help="Seconds the whole request may take.")
    ] = None,
    state: Annotated[
        Optional[str], typer.Option("--state", help="The session state of a spec with 'state:': a JSON object or "
                                                    "@file.json (default: the schema's defaults, a new session).")
    ] = None,
    output_format: Annotated[str, typer.Option(
        "--format", help="How --trace prints: table (the outputs as JSON, then a table of nodes on stderr), json "
                         "(one JSON object with outputs and trace), or auto: table on a terminal, else json.")
    ] = "auto",
    trust: TrustOption = False,
    quiet: QuietOption = False,
    otel: OtelOption = None,
) -> None:
    """Run a spec once and print its outputs as JSON.

    \b
    Examples:
      llmrec run specs/quickstart.yaml -i user_id=u1 -i k:=5
      llmrec run specs/quickstart.yaml --input '{"user_id": "u1", "query": "coffee"}'
      llmrec run specs/quickstart.yaml -i user_id=u1 --trace -q
      llmrec run specs/headphones_chat.yaml -i message="wireless, under 100" --state @state.json
    """
    if quiet:
        progress.set_quiet(True)
    from .runtime.executor import Runtime  # lazy: asyncio and the policies, only when a spec runs

    graph = load_graph(spec, trust)
    inputs = _read_input(input_)
    if state is not None and graph.state_model is None:
        say(f"error: --state: {spec} keeps no state (it has no 'state:' block)")
        raise Exit(EXIT_USAGE)
    current = _read_one_input(state, "--state") if state is not None else None
    tracing = _tracing(otel)
    runtime = Runtime(graph)
    try:
        result = runtime.run_sync(inputs, deadline=deadline, state=current)
        _trace_run(tracing, result.trace)
    except InputError as exc:
        for e in exc.errors:
            say(f"error: input '{e['field']}': {e['message']}")
        if graph.state_model is not None and str(exc.field or "").startswith("state"):
            fields = ", ".join(graph.state_model.model_fields)
            say(f"hint: --state must fit the state schema of {spec} (fields: {fields}); leave it out to start from "
                "the defaults")
            raise Exit(EXIT_INPUT) from None
        declared = ", ".join(f"{n} ({i.type}{', required' if i.is_required else ''})"
                             for n, i in graph.spec.inputs.items())
        say(f"hint: {spec} takes: {declared or 'no inputs'}")
        raise Exit(EXIT_INPUT) from None
    except RunError as exc:
        _trace_run(tracing, exc.trace, exc)
        say(f"error: {exc}")
        if trace and exc.trace is not None:
            say(json.dumps(exc.trace.to_dict(), indent=2))
        _node_bug_hint(graph, exc)
        raise Exit(EXIT_FAILED) from None
    if output_format not in ("auto", "json", "table"):
        say(f"error: unknown format '{output_format}'; use auto, json or table")
        raise Exit(EXIT_USAGE)
    table = trace and (output_format == "table" or (output_format == "auto" and sys.stdout.isatty()))
    data = result.to_dict(trace=trace and not table)
    if (not trace or table) and not result.degraded and result.state is None:
        data = data["outputs"]
    out(json.dumps(data, indent=2, ensure_ascii=False))
    if table:
        _trace_table(result.trace)


#: ``--otel`` on commands that run specs (llmrec/telemetry.py, docs/observability.md)
OtelOption = Annotated[Optional[str], typer.Option(
    "--otel", help="Trace the run with OpenTelemetry: console (spans as JSON on stderr), otlp (to "
                   "$OTEL_EXPORTER_OTLP_ENDPOINT) or none. Default: $OTEL_TRACES_EXPORTER, else off; "
                   "$TRACEPARENT is continued.", show_default=False)]


def _tracing(otel: str | None) -> Any:
    """``--otel`` (else ``$OTEL_TRACES_EXPORTER``) -> a Tracing, or None when tracing is off (nothing imported)."""
    from .telemetry import TelemetryError, configure  # lazy: only commands that run a spec trace

    try:
        return configure(otel, simple=True, install=True, console=sys.stderr)  # stdout keeps the outputs' JSON
    except TelemetryError as exc:
        say(f"error: {exc}")
        raise Exit(EXIT_USAGE) from None


def _trace_run(tracing: Any, run_trace: Any, error: BaseException | None = None) -> None:
    """A command's run as spans (the run's span the root, or a child of ``$TRACEPARENT``), exported now."""
    if tracing is None or run_trace is None:
        return
    tracing.record_run(run_trace, context=tracing.context_from_env(), error=error)
    tracing.shutdown()


def _node_bug_hint(graph: Any, exc: RunError) -> None:
    """A node failed with an exception that is not one of llmrec's (a bug in its node type, not in the spec or
    the data): name the type and its plugin, and the traceback with ``LLMREC_DEBUG=1``."""
    cause = exc.__cause__
    while isinstance(cause, RunError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is None or isinstance(cause, LlmrecError) or exc.node_id not in getattr(graph, "nodes", {}):
        return
    if os.environ.get("LLMREC_DEBUG"):
        import traceback

        say("".join(traceback.format_exception(cause)).rstrip())
        return
    type_name = graph.nodes[exc.node_id].spec.type
    entry = graph.registry.node_types.entry(type_name)
    if entry is None or entry.plugin.source == "built-in":  # llmrec's own types say what went wrong themselves
        return
    say(f"hint: node type '{type_name}' (from {entry.plugin.label()}) raised {type(cause).__name__}; if the spec "
         "and data are right, it may be a bug in that plugin: set LLMREC_DEBUG=1 to see the traceback")


def _trace_table(trace: Any) -> None:
    """The per-node trace as a table on stderr, in start order: what ran, how long, and what fell back."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {trace.run_id}: {trace.wall_ms:.1f} ms" + (" (degraded)" if trace.degraded else ""),
                  title_justify="left")
    for col, right in (("node", False), ("type", False), ("status", False), ("start ms", True), ("wall ms", True),
                       ("notes", False)):
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for r in sorted(trace.nodes, key=lambda r: r.start_ms):
        notes = []
        if r.cache_hit or r.cache:
            notes.append(f"cache: {r.cache or 'hit'}")
        if r.retries:
            notes.append(f"retries: {r.retries}")
        if r.usage is not None:
            u = r.usage
            if u.model:
                notes.append(f"model: {u.model}")
            notes.append(f"calls: {u.calls}, tokens: {u.prompt_tokens}/{u.completion_tokens}")
            if u.cost:
                notes.append(f"${u.cost:.5f}")
        if r.fallback:
            notes.append(f"fell back to {r.fallback}: {r.fallback_reason or ''}".rstrip(": "))
        elif r.error:
            notes.append(r.error)
        style = {"fallback": "yellow", "error": "red", "skipped": "dim"}.get(r.status)
        table.add_row(r.node_id, r.type, r.status, f"{r.start_ms:.1f}", f"{r.wall_ms:.1f}", "; ".join(notes),
                      style=style)
    Console(stderr=True, width=max(100, Console(stderr=True).width)).print(table)


@app.command()
def graph(
    spec: Annotated[Path, typer.Argument(help="The spec to draw.", show_default=False)],
    output_format: Annotated[str, typer.Option("--format", "-f", help="mermaid or dot.")] = "mermaid",
    trust: TrustOption = False,
) -> None:
    """Draw the spec's DAG as Mermaid or Graphviz DOT.

    \b
    Examples:
      llmrec graph specs/quickstart.yaml
      llmrec graph specs/news_ltr.yaml --format dot | dot -Tsvg -o news_ltr.svg
    """
    if output_format not in ("mermaid", "dot"):
        say(f"error: unknown format '{output_format}'; use mermaid or dot")
        raise Exit(2)
    from .graph import draw  # lazy: only `llmrec graph` draws

    g = load_graph(spec, trust)
    sys.stdout.write(draw.mermaid(g) if output_format == "mermaid" else draw.dot(g))


def _local_plugins(spec_dir: Path | None, trust: bool) -> None:
    """``--spec-dir`` with ``--trust`` trusts that folder; without, say that its plugins/*.py are not imported."""
    if spec_dir is None:
        return
    if trust:
        trust_.grant(spec_dir)
    elif local_plugin_files(spec_dir.resolve()) and not trust_.is_trusted(spec_dir):
        say(f"warning: {spec_dir}/plugins/*.py not imported: the folder is not trusted. "
             + trust_.hint(spec_dir))


@app.command()
def schema(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    spec_dir: Annotated[
        Optional[Path], typer.Option("--spec-dir", help="Also include plugins/*.py from this folder.")
    ] = None,
    trust: TrustOption = False,
) -> None:
    """Write the JSON Schema of the spec language, with every registered node type's config.

    \b
    Examples:
      llmrec schema -o llmrec-spec.schema.json
      llmrec schema | jq '.properties | keys'
    """
    _local_plugins(spec_dir, trust)
    from .spec.jsonschema import spec_json_schema  # lazy: pydantic's JSON Schema, only for `schema`

    text = json.dumps(spec_json_schema(get_registry(spec_dir.resolve() if spec_dir else None)), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)
    say(f"wrote {output}")


@app.command()
def plugins(
    spec_dir: Annotated[
        Optional[Path], typer.Option("--spec-dir", help="Also list plugins/*.py from this folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust: TrustOption = False,
) -> None:
    """List loaded plugins, their distribution and version, and what each provides.

    \b
    Examples:
      llmrec plugins
      llmrec plugins --json
    """
    _local_plugins(spec_dir, trust)
    reg = get_registry(spec_dir.resolve() if spec_dir else None)
    from .plugins import PLUGIN_API_VERSION  # lazy: only `llmrec plugins` shows the plugin API

    rows = []
    for info in reg.plugins:
        provided = reg.provided_by(info.name)
        rows.append({
            "name": info.name,
            "source": info.source,
            "distribution": info.distribution,
            "version": info.version,
            "status": "loaded",
            "api": info.api if info.source != "built-in" else PLUGIN_API_VERSION,
            "provides": provided,
        })
    for refused in reg.refused_plugins:
        rows.append({"name": refused.name, "source": "entry point", "distribution": refused.distribution,
                     "version": refused.version, "status": "refused", "reason": refused.reason,
                     "needs": refused.needs, "provides": {}})
    if as_json:
        out(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llmrec plugins (plugin API {PLUGIN_API_VERSION})", show_lines=False)
    for col in ("plugin", "distribution", "plugin API", "provides"):
        table.add_column(col, overflow="fold")
    for row in rows:
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else row["source"]
        provides = "\n".join(f"{kind}s: {', '.join(names)}" for kind, names in row["provides"].items()) or "-"
        if row["status"] == "refused":
            api, provides = "[red]refused[/red]", row["reason"]
        else:
            api = row["api"] or "undeclared"
        table.add_row(row["name"], dist, api, provides)
    Console(width=max(100, Console().width)).print(table)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the starter spec (created if missing).")] = Path("."),
    name: Annotated[str, typer.Option("--name", help="File name of the spec.")] = "spec.yaml",
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False,
) -> None:
    """Write a starter spec that runs offline on the demo shop, and the JSON Schema its first line names (so an
    editor completes and checks it).

    \b
    Examples:
      llmrec init myrec && cd myrec && llmrec run spec.yaml -i user_id=u1
    """
    from importlib.resources import files

    from .spec.jsonschema import spec_json_schema  # lazy: pydantic's JSON Schema, only for `init`

    spec_path, schema_path = folder / name, folder / SCHEMA_FILE
    existing = [p for p in (spec_path, schema_path) if p.exists()]
    if existing and not force:
        say(f"error: {', '.join(str(p) for p in existing)} already exist{'s' if len(existing) == 1 else ''}; "
             "pass --force to overwrite, or choose another folder")
        raise Exit(EXIT_USAGE)
    text = files("llmrec").joinpath("starter/spec.yaml").read_text(encoding="utf-8")
    schema = json.dumps(spec_json_schema(get_registry(None)), indent=2) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    for path, content in ((spec_path, text), (schema_path, schema)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    say(f"wrote {spec_path} and {schema_path}")
    say(f"next: llmrec run {spec_path} -i user_id=u1")


SCHEMA_FILE = "llmrec-spec.schema.json"

plugin_app = typer.Typer(name="plugin", help="""Write llmrec plugins.

\b
Examples:
  llmrec plugin new price-cap --dir plugins
""", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")


@plugin_app.command("new")
def plugin_new(
    name: Annotated[str, typer.Argument(help="The plugin's name, e.g. price-cap (the package is llmrec-price-cap).",
                                        show_default=False)],
    folder: Annotated[Path, typer.Option("--dir", help="Where to create the package folder.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing package's files.")] = False,
) -> None:
    """Create a plugin package (pyproject with the llmrec entry point, a node type, its tests, an example spec, a
    README) that passes its own tests once installed.

    \b
    Examples:
      llmrec plugin new price-cap && cd llmrec-price-cap && pip install -e '.[test]' && pytest
    """
    try:
        files = write(folder, name, force)
    except ScaffoldError as exc:
        say(f"error: {exc}")
        raise Exit(EXIT_USAGE) from None
    root = files[0].parent
    for path in files:
        say(f"wrote {path}")
    say(f"next: cd {root} && pip install -e '.[test]' && pytest")


@app.command("trust")
def trust_command(
    folders: Annotated[Optional[list[Path]], typer.Argument(help="Folders to trust.", show_default=False)] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Stop trusting these folders.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="Print every trusted folder and where it is trusted.")] = False,
) -> None:
    """Trust spec folders: their plugins/*.py, schema and check files and the modules their specs name may be
    imported (docs/security.md). Kept in $XDG_CONFIG_HOME/llmrec/trusted (~/.config/llmrec/trusted).

    \b
    Examples:
      llmrec trust specs
      llmrec trust --list
      llmrec trust specs --remove
    """
    for folder in folders or []:
        try:
            if remove:
                say(f"{'no longer trusted' if trust_.forget(folder) else 'was not trusted'}: {folder.resolve()}")
            else:
                say(f"trusted: {trust_.remember(folder)}")
        except (ValueError, OSError) as exc:
            say(f"error: {exc}")
            raise Exit(1) from None
    if list_ or not folders:
        env = os.environ.get(trust_.TRUST_ENV)
        listed = 0
        for line in trust_.config_file().read_text(encoding="utf-8").splitlines() if trust_.config_file().is_file() else []:
            if line.strip() and not line.lstrip().startswith("#"):
                out(f"{line.strip()}\t({trust_.config_file()})")
                listed += 1
        for part in (env or "").split(os.pathsep):
            if part.strip():
                out(f"{part.strip()}\t(${trust_.TRUST_ENV})")
                listed += 1
        if not listed:
            say("no folder is trusted: the code of every spec folder is left unimported. Trust one with "
                 "'llmrec trust FOLDER', or pass --trust to one command.")


@app.command()
def version() -> None:
    """Print llmrec's version.

    \b
    Examples:
      llmrec version
    """
    out(f"llmrec {llmrec_version()}")


def _register_plugin_commands() -> None:
    try:
        reg = get_registry(None)
        reg.hook.llmrec_register_commands(cli=app)
        # main() may run many times in one process (tests, notebooks): keep one command per name, the newest
        latest: dict[Any, Any] = {}
        for info in app.registered_commands:
            latest[info.name or info.callback] = info
        app.registered_commands[:] = list(latest.values())
    except PluginError as exc:
        say(f"error: {exc}")


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"warning: {message}\n"


def _command() -> Any:
    """The click command typer builds, with boolean flags shown as flags in --help (typer 0.29, which vendors its
    own click, prints a '<bool>' type after each)."""
    root = typer.main.get_command(app)
    stack = [root]
    while stack:
        cmd = stack.pop()
        for param in cmd.params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""

        def help_option(ctx: Any, _made: Any = cmd.get_help_option) -> Any:
            option = _made(ctx)  # --help, made when help is shown
            if option is not None and option.metavar is None:
                option.metavar = ""
            return option

        cmd.get_help_option = help_option
        stack.extend(getattr(cmd, "commands", {}).values())
    return root


#: llmrec's own commands and groups: running one of them needs no plugin's commands
BUILTIN_COMMANDS = frozenset(
    [info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands if info.callback]
    + [group.name for group in app.registered_groups if group.name]
)


def needs_plugin_commands(args: list[str]) -> bool:
    """Whether the command line names a plugin's command, or lists commands (root --help, completion): only
    then are the plugins loaded before the command runs. ``llmrec version`` and ``llmrec validate`` (which loads
    the plugins its spec needs itself) start without registering eval, serve, train, finetune and distill."""
    if args[:1] == ["--version"]:
        return False
    first = next((a for a in args if not a.startswith("-")), None)
    return first not in BUILTIN_COMMANDS


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmrec`` console script."""
    import warnings

    warnings.formatwarning = _one_line_warning  # a user reads what happened, not the source line that warned
    if needs_plugin_commands(sys.argv[1:] if argv is None else list(argv)):
        _register_plugin_commands()
    was_quiet = progress.set_quiet(progress.is_quiet())  # --quiet lasts one command (main may run many times)
    try:
        code = _command()(args=argv, prog_name="llmrec", standalone_mode=False)
        if code == 130:  # click turned a Ctrl-C into its exit code instead of raising
            say("aborted")
            return 130
    except Exit as exc:
        return exc.code
    except SystemExit as exc:  # --show-completion / --install-completion, and shell completion itself, exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SpecErrors as exc:
        for e in exc.errors:
            say(e.format())
        return 1
    except PluginError as exc:
        say(f"error: {exc}")
        return EXIT_SPEC
    except LlmrecError as exc:
        say(f"error: {exc}")
        return EXIT_FAILED
    except (typer.Abort, KeyboardInterrupt):
        say("aborted")
        return 130
    except Exception as exc:
        # usage errors from typer's click carry their own message and exit code
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return int(exc.exit_code)
        if isinstance(exc, typer.Exit) or type(exc).__name__ == "Exit":
            return int(getattr(exc, "exit_code", 0) or 0)
        if os.environ.get("LLMREC_DEBUG"):
            raise
        say(f"internal error: {type(exc).__name__}: {exc}")
        say("This is a bug in llmrec or in a plugin, not in your spec. Set LLMREC_DEBUG=1 to see the traceback.")
        return 70
    finally:
        progress.set_quiet(was_quiet)
    return 0


if __name__ == "__main__":  # pragma: no cover
    # `python -m llmrec.cli`: run the imported module's main, so that plugins raising llmrec.cli.Exit are
    # caught as the same class
    from llmrec.cli import main as _main

    sys.exit(_main())
