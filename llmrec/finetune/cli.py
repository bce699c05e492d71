"""``llmrec finetune SPEC --base PATH``: LoRA-fine-tune a local causal LM on the spec's dataset, for its llm resource.

Registered through ``llmrec_register_commands`` as ``llmrec train`` is. Ctrl-C once stops at the next step and
saves a checkpoint (exit 130, printing the command that resumes); twice stops at once (``os._exit(130)``);
nothing half-written is ever used, since the artifact is committed atomically.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

from .. import training
from ..errors import LlmrecError
from ..hookspecs import hookimpl
from ..llm.provider import Provider
from ..runtime.executor import load_resource
from ..training import TrainingInterrupted
from .data import FinetuneError, PairConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..graph.build import Graph


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def llm_resources(graph: Graph) -> list[str]:
    """Names of the graph's resources whose type provides an LLM provider (the ``llm`` resource's kind)."""
    out = []
    for name, res in graph.resources.items():
        provides = getattr(res.cls, "provides", None)
        if provides is Provider:  # a Protocol: issubclass() does not apply
            out.append(name)
    return out


def pick_resource(graph: Graph, wanted: str | None, base: str) -> str:
    names = llm_resources(graph)
    example = (f"resources: {{model: {{type: llm, config: {{provider: transformers, model: {base}}}}}}} "
               "(fine-tuning writes a model folder for it to load)")
    if not names:
        raise FinetuneError(f"spec '{graph.name}' has no llm resource to fine-tune a model for; add one, e.g. "
                            f"{example}, and use it from an LLM node (llm.recommend inputs: {{model: "
                            "\"${resources.model}\"})")
    if wanted is not None:
        if wanted not in names:
            raise FinetuneError(f"no llm resource '{wanted}' in spec '{graph.name}' (llm resources: "
                                f"{', '.join(names)})")
        return wanted
    if len(names) > 1:
        raise FinetuneError(f"spec '{graph.name}' has several llm resources ({', '.join(names)}); choose one with "
                            "--resource NAME")
    return names[0]


def pick_dataset(graph: Graph, wanted: str | None) -> str:
    return training.pick_dataset(graph, wanted, "learn from", FinetuneError, "{name: movielens-100k, split: temporal}")


def _resume_command(argv: list[str]) -> str:
    return "llmrec finetune " + shlex.join([a for a in argv if a != "--force"])


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    global typer  # the command's annotations are strings (PEP 563), resolved by typer in this module's globals
    import typer

    @cli.command(name="finetune")
    def finetune_cmd(
        spec: Annotated[Path, typer.Argument(help="The spec whose dataset to learn from and llm resource to serve.",
                                             show_default=False)],
        base: Annotated[str, typer.Option("--base", help="Local folder of the Hugging Face causal LM to adapt.",
                                          show_default=False)],
        resource: Annotated[Optional[str], typer.Option("--resource", help="The llm resource (when several).")] = None,
        dataset: Annotated[Optional[str], typer.Option("--dataset", help="The dataset resource (when several).")] = None,
        output: Annotated[Optional[Path], typer.Option(
            "--output", help="Where versions are written (default: models/finetune-RESOURCE beside the spec).")] = None,
        max_users: Annotated[Optional[int], typer.Option("--max-users", min=1, help="Learn from N users (seeded).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Train again even when up to date.")] = False,
        n: Annotated[int, typer.Option("--n", min=1, max=50, help="Next liked titles per answer.")] = 5,
        pairs_per_user: Annotated[int, typer.Option("--pairs-per-user", min=1, help="Temporal cuts per user.")] = 1,
        epochs: Annotated[int, typer.Option("--epochs", min=1)] = 1,
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N steps.")] = None,
        lr: Annotated[float, typer.Option("--lr", min=0.0)] = 2e-4,
        r: Annotated[int, typer.Option("--r", min=1, help="LoRA rank.")] = 8,
        alpha: Annotated[float, typer.Option("--alpha", min=0.0, help="LoRA alpha.")] = 16.0,
        dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.99)] = 0.05,
        target_modules: Annotated[Optional[list[str]], typer.Option(
            "--target-module", help="A linear layer name to adapt (repeatable; default: every projection).")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4,
        max_length: Annotated[int, typer.Option("--max-length", min=16)] = 512,
        checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1)] = 50,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
        dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")] = "float32",
        trust: Annotated[bool, typer.Option("--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
    ) -> None:
        """LoRA-fine-tune a local causal LM on the spec's dataset (instruction pairs from training interactions)
        and write the adapter and a merged model folder for the spec's llm resource to load.

        \b
        Examples:
          llmrec finetune specs/movielens_llm.yaml --base ~/models/Qwen2.5-0.5B-Instruct --max-users 500
          llmrec finetune specs/movielens_llm.yaml --base ~/models/Qwen2.5-0.5B-Instruct --max-steps 20 --r 4
        """
        from pydantic import ValidationError

        # lazy: typer, peft and transformers, only when `llmrec finetune` runs (this module is a default plugin)
        from ..commands import EXIT_FAILED, Exit, load_graph
        from .artifact import finetune
        from .lora import LoraTrainConfig

        say = _err
        argv = [str(spec), "--base", base]  # the options that differ from their defaults follow
        try:
            lora = LoraTrainConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules or None, lr=lr,
                                   epochs=epochs, max_steps=max_steps, batch_size=batch_size, max_length=max_length,
                                   seed=seed, device=device, dtype=dtype, checkpoint_every=checkpoint_every)
            pairs = PairConfig(n=n, pairs_per_user=pairs_per_user, seed=seed)
        except ValidationError as exc:
            problem = exc.errors()[0]
            say(f"error: --{str(problem['loc'][0]).replace('_', '-')}: {problem['msg']}")
            raise Exit(2) from None
        for flag, value, default in (("--resource", resource, None), ("--dataset", dataset, None),
                                     ("--output", output, None), ("--max-users", max_users, None),
                                     ("--n", n, 5), ("--pairs-per-user", pairs_per_user, 1), ("--epochs", epochs, 1),
                                     ("--max-steps", max_steps, None), ("--lr", lr, 2e-4), ("--r", r, 8),
                                     ("--alpha", alpha, 16.0), ("--dropout", dropout, 0.05),
                                     ("--batch-size", batch_size, 4), ("--max-length", max_length, 512),
                                     ("--checkpoint-every", checkpoint_every, 50), ("--seed", seed, 0),
                                     ("--device", device, "auto"), ("--dtype", dtype, "float32")):
            if value != default:
                argv += [flag, str(value)]
        for module in target_modules or ():
            argv += ["--target-module", module]
        resume = _resume_command(argv)

        # lazy: transformers, only when `llmrec finetune` runs
        from .base import check_base
        from .lora import resolve_device

        try:
            check_base(base, device=resolve_device(lora.device), dtype=lora.dtype)  # before validating the spec
        except FinetuneError as exc:
            say(f"error: {exc}")
            raise Exit(exc.exit_code) from None
        graph = load_graph(spec, trust)
        flag = threading.Event()
        previous = signal.getsignal(signal.SIGINT)

        def interrupt(signum: int, frame: Any) -> None:
            if flag.is_set():  # a second Ctrl-C: stop now
                say(f"interrupted: stopped at once; nothing half-written is used; resume with `{resume}`")
                sys.stderr.flush()
                os._exit(130)
            flag.set()
            say("stopping after this step, saving a checkpoint (Ctrl-C again to stop now)")

        try:
            llm_name = pick_resource(graph, resource, base)
            data_name = pick_dataset(graph, dataset)
            folder = output if output is not None else spec.parent / "models" / f"finetune-{llm_name}"
            say(f"loading dataset resource '{data_name}'")
            data = asyncio.run(load_resource(graph, data_name))
            signal.signal(signal.SIGINT, interrupt)
            report = finetune(base, data, output=folder, name=llm_name, lora=lora, pairs=pairs, max_users=max_users,
                              force=force, dataset_name=data_name, progress=say, should_stop=flag.is_set,
                              retrain_hint=f"Train it again: `{resume} --force`")
        except FinetuneError as exc:
            say(f"error: {exc}")
            raise Exit(exc.exit_code) from None
        except (TrainingInterrupted, KeyboardInterrupt) as exc:
            where = f" {exc}" if isinstance(exc, TrainingInterrupted) and str(exc) else ""
            say(f"interrupted:{where}; no artifact was written; resume with `{resume}`")
            raise Exit(130) from None
        except LlmrecError as exc:
            say(f"error: {exc}")
            raise Exit(EXIT_FAILED) from None
        finally:
            signal.signal(signal.SIGINT, previous)
        m = report.metrics
        where = os.path.abspath(report.folder)
        if report.written:
            resumed = f", resumed at step {report.resumed_from}" if report.resumed_from else ""
            sys.stdout.write(
                f"fine-tuned {report.base.architecture} for llm resource '{llm_name}' on {report.pairs} instruction "
                f"pairs of {report.users} users: {report.steps} steps in {report.seconds:.1f}s{resumed}\n"
                f"  train loss {m['train_loss_first']:.4f} -> {m['train_loss_last']:.4f}; " + (
                    f"validation answer NLL {m['val_answer_nll_base']:.4f} (base) -> {m['val_answer_nll']:.4f} on "
                    f"{report.validation_pairs} pairs\n" if "val_answer_nll" in m else
                    "no validation pairs (the dataset's split has no validation cases)\n") +
                f"  wrote: {where} (merged model; LoRA adapter in {os.path.join(where, 'adapter')})\n")
        else:
            sys.stdout.write(f"up to date (same base, settings and data; --force trains again): {where}\n")
        sys.stdout.write(
            f"Point the spec's llm resource at it:\n"
            f"  resources:\n    {llm_name}:\n      type: llm\n"
            f"      config: {{provider: transformers, model: {where}}}\n")


__all__ = ["llm_resources", "pick_dataset", "pick_resource"]
