"""``llmrec distill SPEC --teacher FOLDER_OR_RESOURCE --student tiny``: the command (a default plugin).

The spec supplies the data (its dataset resource) and, optionally, the teacher (an ``llm`` resource, asked
through its provider); otherwise ``--teacher`` is a rec-LM folder. The distilled student is committed as an
artifact under ``--output`` (default: ``models/distilled`` beside the spec) and the report is printed.
An artifact trained with the same settings on the same data is reused unless ``--force`` is given.

Ctrl-C stops at the next safe point (after the current batch; teacher labels and finished epochs are kept in
the output's checkpoint folder) and exits 130 with the command that resumes; a second Ctrl-C stops at once.

This module is imported by every ``llmrec`` command: everything heavy is imported inside the command.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from llmrec.artifacts import ArtifactStore, read_meta
from llmrec.distill.config import DistillConfig, DistillError, PairConfig
from llmrec.errors import DataError
from llmrec.hookspecs import hookimpl
from llmrec.runtime.executor import load_resource
from llmrec.training import StopFlag, TrainingInterrupted, pick_dataset

#: The student sizes the command accepts (llmrec.reclm's presets).
STUDENT_SIZES = ("tiny", "small", "medium")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def resolve_teacher(graph: Any, teacher: str, spec: Path, catalog: Any, temperature: float = 1.0) -> Any:
    """A Teacher for ``--teacher``: a resource of the spec (an ``llm`` resource: a ProviderTeacher; a value
    that already has ``prefer``: itself), else a rec-LM folder (relative to the current folder, then the spec's)."""
    # lazy: torch and the rec-LM, only when `llmrec distill` runs
    from llmrec.distill.teachers import ProviderTeacher, RecLMTeacher, rec_lm_folder

    if teacher in graph.resources:
        res = graph.resources[teacher]
        value = asyncio.run(load_resource(graph, teacher))
        if callable(getattr(value, "prefer", None)) and hasattr(value, "name"):
            return value
        if callable(getattr(value, "complete", None)):
            return ProviderTeacher(value, catalog, temperature=temperature)
        raise DistillError(f"resource '{teacher}' ({res.cls.name}) is neither a language model (an llm resource) nor "
                           "a teacher; give an llm resource or a rec-LM folder")
    return RecLMTeacher(rec_lm_folder(teacher_path(graph, teacher, spec)), temperature=temperature)


def teacher_path(graph: Any, teacher: str, spec: Path) -> Path:
    """The folder ``--teacher`` names (relative to the current folder, else to the spec's); a one-line
    :class:`~llmrec.distill.config.DistillError` when there is none."""
    candidates = [Path(teacher).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(spec.parent / teacher)
    for path in candidates:
        if path.exists():
            return path
    resources = ", ".join(graph.resources) or "none"
    raise DistillError(f"teacher folder {teacher} does not exist, and '{teacher}' is not a resource of spec "
                       f"'{graph.name}' (resources: {resources})")


def dataset_resource(graph: Any, wanted: str | None) -> str:
    return pick_dataset(graph, wanted, "distil on", DistillError, "{name: movielens-100k, split: temporal}")


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    global typer, Annotated, Optional  # annotations are strings (PEP 563), resolved by typer in these globals
    from typing import Annotated, Optional

    import typer

    @cli.command(name="distill")
    def distill_cmd(
        spec: Annotated[Path, typer.Argument(help="The spec whose dataset resource to distil on.", show_default=False)],
        teacher: Annotated[str, typer.Option("--teacher", help="A rec-LM folder, or a resource of the spec (an llm "
                                             "resource: any provider).", show_default=False)],
        student: Annotated[str, typer.Option("--student", help="Student rec-LM size: tiny, small or medium.")] = "tiny",
        output: Annotated[Optional[Path], typer.Option("--output", help="Artifact folder (default: models/distilled "
                                                       "beside the spec).")] = None,
        loss: Annotated[str, typer.Option("--loss", help="kl (teacher soft labels) or kl+ce (plus the true label).")] = "kl+ce",
        temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature.")] = 2.0,
        alpha: Annotated[float, typer.Option("--alpha", help="kl+ce: weight of the KL term.")] = 0.5,
        init: Annotated[str, typer.Option("--init", help="scratch (random weights) or next-item (start from a "
                                          "next-item rec-LM).")] = "scratch",
        epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Most pairwise epochs.")] = None,
        init_epochs: Annotated[Optional[int], typer.Option("--init-epochs", min=1, help="Most next-item epochs.")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of pairs, initialisation and order.")] = 0,
        hard_examples: Annotated[float, typer.Option("--hard-examples", help="Keep this fraction of transfer pairs, "
                                                     "those the teacher is least sure of the truth of.")] = 1.0,
        dataset: Annotated[Optional[str], typer.Option("--dataset", help="The dataset resource (when several).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Retrain even when an identical artifact exists.")] = False,
        latency_rounds: Annotated[int, typer.Option("--latency-rounds", min=0, help="Rounds of the latency "
                                                    "measurement (0: none).")] = 5,
        latency_samples: Annotated[int, typer.Option("--latency-samples", min=1, help="Test pairs per latency "
                                                     "round, each scored alone.")] = 100,
        trust: Annotated[bool, typer.Option("--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    ) -> None:
        """Distil a teacher's pairwise preferences into a small rec-LM, report both, save the student.

        \b
        Examples:
          llmrec distill specs/movielens_llm.yaml --teacher model --student tiny
          llmrec distill specs/movielens_llm.yaml --teacher model --student small --loss kl --temperature 4
        """
        from pydantic import ValidationError

        # lazy: typer, only once a command runs (this module is a default plugin)
        from llmrec.commands import EXIT_FAILED, Exit, load_graph

        if student not in STUDENT_SIZES:
            _say(f"error: --student must be one of {', '.join(STUDENT_SIZES)}, not '{student}'")
            raise Exit(2)
        try:
            options: dict[str, Any] = {"loss": loss, "temperature": temperature, "alpha": alpha, "init": init,
                                       "seed": seed, "hard_examples": hard_examples, "pairs": PairConfig(seed=seed)}
            if epochs is not None:
                options["epochs"] = epochs
            if init_epochs is not None:
                options["init_epochs"] = init_epochs
            config = DistillConfig(**options)
        except ValidationError as exc:
            problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                                 for e in exc.errors())
            _say(f"error: {problems}")
            raise Exit(2) from None

        graph = load_graph(spec, trust)
        command = ["llmrec", "distill", str(spec), "--teacher", teacher, "--student", student, "--loss", loss,
                   "--temperature", f"{temperature:g}", "--alpha", f"{alpha:g}", "--init", init, "--seed", str(seed)]
        if hard_examples != 1.0:
            command += ["--hard-examples", f"{hard_examples:g}"]
        for flag, value in (("--output", output), ("--epochs", epochs), ("--init-epochs", init_epochs),
                            ("--dataset", dataset)):
            if value is not None:
                command += [flag, str(value)]
        resume = " ".join(shlex.quote(c) for c in command)

        flag = StopFlag()
        previous = signal.getsignal(signal.SIGINT)

        def interrupt(signum: int, frame: Any) -> None:
            if flag.event.is_set():  # a second Ctrl-C: stop now
                _say(f"interrupted: stopped at once; nothing half-written is used; resume with `{resume}`")
                os._exit(130)
            flag.event.set()
            _say("stopping at the next safe point (Ctrl-C again to stop now)")

        signal.signal(signal.SIGINT, interrupt)
        try:
            _run(graph, spec, teacher, student, output, config, dataset, force, flag,
                 {"latency_rounds": latency_rounds, "latency_samples": latency_samples})
        except DistillError as exc:
            _say(f"error: {exc}")
            raise Exit(EXIT_FAILED) from None
        except TrainingInterrupted as exc:
            _say(f"interrupted: {exc}; nothing half-written was kept; resume with `{resume}`")
            raise Exit(130) from None
        except KeyboardInterrupt:
            _say(f"interrupted: nothing half-written was kept; resume with `{resume}`")
            raise Exit(130) from None
        finally:
            signal.signal(signal.SIGINT, previous)


def _run(graph: Any, spec: Path, teacher_arg: str, student: str, output: Path | None, config: Any,
         dataset_name: str | None, force: bool, stop: Any, latency: dict[str, int]) -> None:
    import shutil
    # lazy: torch and the rec-LM, only when `llmrec distill` runs
    from llmrec.distill.pipeline import ARTIFACT_NAME, artifact_key, distill, find_student, prepare, save_student

    name = dataset_resource(graph, dataset_name)
    if teacher_arg not in graph.resources:
        teacher_path(graph, teacher_arg, spec)  # a missing teacher is said before the data loads
    _say(f"loading dataset resource '{name}'")
    try:
        data = asyncio.run(load_resource(graph, name))
    except DataError as exc:
        raise DistillError(f"dataset resource '{name}': {exc}") from None
    if stop():
        raise TrainingInterrupted("stopped while loading the dataset")
    prepared = prepare(data, config, label=f"dataset resource '{name}'")
    teacher = resolve_teacher(graph, teacher_arg, spec, data.catalog)
    out = output if output is not None else spec.parent / "models" / ARTIFACT_NAME
    params, d_hash = artifact_key(prepared, teacher.name, student, config)
    existing = find_student(out, params, d_hash)
    if existing is not None and not force:
        report = read_meta(existing).get("report_markdown")
        if isinstance(report, str):
            sys.stdout.write(report + "\n")
        sys.stdout.write(f"up to date (same teacher, settings and data; --force retrains): {os.path.normpath(existing)}\n")
        return

    checkpoints = ArtifactStore(out, ARTIFACT_NAME).checkpoint_dir({**params, "data_hash": d_hash})
    _say(f"distilling {teacher.name} into a {student} rec-LM ({config.loss}, T {config.temperature:g}, "
         f"init {config.init}); checkpoints in {os.path.normpath(checkpoints)}")
    result = distill(prepared, teacher, student, config, progress=_say, should_stop=stop, checkpoint_dir=checkpoints,
                     **latency)
    result.extra["report_markdown"] = result.report.markdown()
    folder, written = save_student(result, out, force=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    sys.stdout.write(result.report.markdown() + "\n")
    sys.stdout.write(f"{'wrote' if written else 'kept'}: {os.path.normpath(folder)}\n")


__all__ = ["STUDENT_SIZES", "dataset_resource", "llmrec_register_commands", "resolve_teacher", "teacher_path"]
