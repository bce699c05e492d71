"""Distillation end to end: pairs from a dataset, teacher labels, the student, the report, the artifact.

::

    result = distill(dataset, RecLMTeacher("models/teacher"), "tiny", DistillConfig(loss="kl+ce"))
    print(result.report.markdown())
    folder, written = save_student(result, "models/distilled")   # a rec-LM folder: RecLM.load(folder)

What is learned from (../shared/PROTOCOLS.md: tuning never sees test): the dataset's training split only.
:func:`llmrec.training.validation_dataset` carves a validation split from each user's training events the way the
test split was made (a user split keeps its own ``train_cases``). Transfer pairs come from the carved training
events, validation pairs (epoch selection) from the carved validation cases, and the report's pairs from the
test cases, 5 per user drawn with ``default_rng(0)`` as PROTOCOLS.md says.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.artifacts import ArtifactError, ArtifactStore, digest, params_hash
from llmrec.distill.config import DistillConfig, DistillError
from llmrec.distill.pairs import PairSet, accuracy, agreement, case_pairs, transfer_pairs
from llmrec.distill.report import DistillReport, ReportRow, latency_sample, measure_latency
from llmrec.distill.scoring import PairScorer, sigmoid
from llmrec.distill.student import pairs_digest, student_config, train_next_item, train_student
from llmrec.distill.teachers import teacher_logits
from llmrec.training import TrainingInterrupted, data_hash, validation_dataset

if TYPE_CHECKING:
    from llmrec.data import Dataset
    from llmrec.reclm import RecLM, RecLMConfig

TRAINER = "llmrec.distill"
ARTIFACT_NAME = "distilled"


@dataclass(frozen=True)
class Prepared:
    """The splits and pairs one distillation uses."""

    dataset: Dataset  # as given (its test cases are the report's)
    carved: Dataset  # what may be learned from: training events and validation cases
    transfer: PairSet
    validation: PairSet
    test: PairSet


def prepare(dataset: Dataset, config: DistillConfig | None = None, *, label: str | None = None) -> Prepared:
    """Check that ``dataset`` can be distilled on and draw its pairs. ``label`` names the dataset in errors
    (default: ``dataset '<name>'``)."""
    config = config or DistillConfig()
    what = label or f"dataset '{dataset.name}'"
    if len(dataset.train) == 0:
        raise DistillError(f"{what} has no interactions to distil from")
    users = dataset.train.users()
    if len(users) < 2:
        raise DistillError(f"{what} has only one user ('{users[0]}'): pairwise distillation needs several users "
                           "(transfer pairs from some, held-out pairs from others)")
    if not dataset.test_cases:
        raise DistillError(f"{what} has no test cases (split '{dataset.split}'): use split 'temporal' or 'user' so "
                           "that held-out pairs can be judged")
    carved = validation_dataset(dataset)
    if not carved.train_cases:
        raise DistillError(f"{what}: no validation cases could be carved from the training events (split "
                           f"'{dataset.split}'); users need more than one training event")
    pc = config.pairs
    test = case_pairs(dataset.catalog, dataset.train, dataset.test_cases, pc.eval_pairs_per_user, pc.seed,
                      held=dataset.test)
    validation = case_pairs(carved.catalog, carved.train, carved.train_cases, pc.eval_pairs_per_user, pc.seed + 1,
                            held=carved.test)
    transfer = transfer_pairs(carved.catalog, carved.train, window=pc.window, min_context=pc.min_context,
                              per_user=pc.transfer_pairs_per_user, negatives=pc.negatives,
                              liked_rating=pc.liked_rating, seed=pc.seed + 2, rated=carved.test)
    if not len(test):
        raise DistillError(f"{what}: its test cases give no pairs (no relevant item of the catalog, or nothing "
                           "left unrated)")
    if not len(transfer):
        raise DistillError(f"{what}: no transfer pairs (no user has a liked training event after an earlier one)")
    return Prepared(dataset, carved, transfer, validation, test)


def artifact_key(prepared: Prepared, teacher_name: str, student: RecLMConfig | str,
                 config: DistillConfig) -> tuple[dict[str, Any], str]:
    """``(params, data_hash)`` the distilled student's artifact is versioned by."""
    s_config = student_config(student, config)
    ignore = {"threads", "device"}
    params = {
        "student": {k: v for k, v in s_config.model_dump(mode="json").items() if k not in ignore},
        "distill": {k: v for k, v in config.model_dump(mode="json").items() if k not in ignore},
        "teacher": teacher_name,
    }
    h = hashlib.sha256(data_hash(prepared.carved).encode())
    h.update(pairs_digest(prepared.test).encode())
    return params, h.hexdigest()[:16]


@dataclass
class DistillResult:
    student: RecLM
    baseline: RecLM | None  # the same size trained without the teacher (next-item loss), when trained
    report: DistillReport
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    params: dict[str, Any]
    data_hash: str
    teacher_name: str
    extra: dict[str, Any] = field(default_factory=dict)


def _cached_teacher_logits(teacher: Any, pairs: PairSet, folder: Path | None,
                           say: Callable[[str], None]) -> tuple[np.ndarray, float]:
    key = hashlib.sha256(f"{teacher.name}\x1f{pairs_digest(pairs)}".encode()).hexdigest()[:16]
    path = folder / f"teacher-{key}.npy" if folder is not None else None
    if path is not None and path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            if z.shape == (len(pairs),):
                say(f"teacher labels: reusing {len(pairs)} from {path}")
                return z, 0.0
        except (OSError, ValueError):
            pass
    say(f"teacher labels: asking {teacher.name} about {len(pairs)} transfer pairs")
    started = time.perf_counter()
    z = np.asarray(teacher_logits(teacher, pairs.histories, pairs.pairs), dtype=np.float64)
    seconds = time.perf_counter() - started
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, z, allow_pickle=False)
        os.replace(tmp, path)
    return z, seconds


def _rec_scorer(rec: RecLM) -> Callable[[Any, Any], np.ndarray]:
    scorer = PairScorer(rec)
    return lambda histories, pairs: sigmoid(scorer.logits(histories, pairs))


def evaluate(test: PairSet, teacher: Any, models: list[tuple[str, RecLM, float | None]], *,
             latency_rounds: int = 5, latency_samples: int = 100, seed: int = 0,
             teacher_train_seconds: float | None = None) -> DistillReport:
    """The report's rows: the teacher, then each ``(role, rec-LM, training seconds)`` of ``models``, on the
    ``test`` pairs; latency on ``latency_samples`` of them (drawn with ``seed``), all models in the same rounds."""
    p_teacher = np.asarray(teacher.prefer(test.histories, test.pairs), dtype=np.float64)
    scorers: dict[str, Callable[[Any, Any], Any]] = {"teacher": teacher.prefer}
    probs = {"teacher": p_teacher}
    for role, rec, _ in models:
        if role in scorers:
            raise ValueError(f"two models of the report are called {role!r}")
        scorers[role] = _rec_scorer(rec)
        probs[role] = scorers[role](test.histories, test.pairs)
    sample = test.subset(latency_sample(len(test), latency_samples, seed=seed))
    timing = measure_latency(scorers, sample.histories, sample.pairs, rounds=latency_rounds) \
        if latency_rounds > 0 else {}
    t_seconds = teacher_train_seconds if teacher_train_seconds is not None else getattr(teacher, "train_seconds", None)
    rows = [ReportRow("teacher", teacher.name, accuracy(p_teacher, test.label), 1.0,
                      timing.get("teacher", {}).get("cpu_ms"), timing.get("teacher", {}).get("wall_ms"),
                      getattr(teacher, "parameters", None), t_seconds)]
    for role, rec, seconds in models:
        rows.append(ReportRow(role, rec.name, accuracy(probs[role], test.label), agreement(probs[role], p_teacher),
                              timing.get(role, {}).get("cpu_ms"), timing.get(role, {}).get("wall_ms"),
                              rec.parameters, seconds))
    return DistillReport(rows, len(test), test.n_users, latency={
        "rounds": latency_rounds, "samples": len(sample), "threads": 1,
        "per_round_cpu_ms": {k: v.get("cpu_rounds") for k, v in timing.items()}})


def distill(
    dataset: Dataset | Prepared,
    teacher: Any,
    student: RecLMConfig | str = "tiny",
    config: DistillConfig | None = None,
    *,
    baseline: bool = True,
    init_model: RecLM | None = None,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    latency_rounds: int = 5,
    latency_samples: int = 100,
    teacher_train_seconds: float | None = None,
) -> DistillResult:
    """Distil ``teacher`` (a :class:`~llmrec.distill.teachers.Teacher`) into a ``student`` rec-LM and report
    teacher, from-scratch student and distilled student on the test pairs.

    With ``init: next-item`` the student starts from ``init_model`` when given, else from a rec-LM of its size
    trained on next-item loss without the teacher, which is also the report's from-scratch row. With
    ``init: scratch`` and ``baseline``, that from-scratch model is trained for the report."""
    config = config or DistillConfig()
    say = progress or (lambda _: None)
    prepared = dataset if isinstance(dataset, Prepared) else prepare(dataset, config)
    carved = prepared.carved
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    params, d_hash = artifact_key(prepared, teacher.name, student, config)
    say(f"pairs: {len(prepared.transfer)} transfer ({prepared.transfer.n_users} users), "
        f"{len(prepared.validation)} validation, {len(prepared.test)} test ({prepared.test.n_users} users)")
    z_t, label_seconds = _cached_teacher_logits(teacher, prepared.transfer, ckpt, say)
    if should_stop is not None and should_stop():
        raise TrainingInterrupted("distillation stopped after the teacher's labels (they are kept for the rerun)")
    result = train_student(carved.catalog, prepared.transfer, z_t, prepared.validation, student, config,
                           init_data=(carved.train, list(carved.train_cases)), init_model=init_model,
                           progress=say, should_stop=should_stop, checkpoint_dir=ckpt)
    base = result.init
    if base is None and baseline:
        base = train_next_item(carved.catalog, carved.train, list(carved.train_cases),
                               student_config(student, config), progress=say, should_stop=should_stop,
                               checkpoint_dir=None if ckpt is None else ckpt / "baseline",
                               label="from-scratch student")
    student_seconds = result.metrics["init_seconds"] + label_seconds + result.metrics["finetune_seconds"]
    models: list[tuple[str, RecLM, float | None]] = []
    if base is not None:
        models.append(("from scratch", base, float(base.metrics.get("seconds", 0.0) or 0.0)))
    models.append(("distilled", result.rec, student_seconds))
    say(f"report: scoring {len(prepared.test)} test pairs, latency over {latency_rounds} rounds")
    report = evaluate(prepared.test, teacher, models, latency_rounds=latency_rounds,
                      latency_samples=latency_samples, seed=config.pairs.seed,
                      teacher_train_seconds=teacher_train_seconds)
    rows = report.rows
    metrics = {**result.metrics, "label_seconds": round(label_seconds, 3), "train_seconds": round(student_seconds, 3),
               "test_accuracy": rows[-1].accuracy, "teacher_test_accuracy": rows[0].accuracy,
               "test_agreement": rows[-1].agreement, "accuracy_ratio": report.accuracy_ratio,
               "speedup": report.speedup, "cpu_ms": rows[-1].cpu_ms, "teacher_cpu_ms": rows[0].cpu_ms}
    if base is not None:
        metrics["from_scratch_test_accuracy"] = rows[1].accuracy
    result.rec.metrics.update({k: v for k, v in metrics.items() if v is not None})
    return DistillResult(result.rec, base, report, result.history, metrics, params, d_hash, teacher.name)


def save_student(result: DistillResult, output: str | os.PathLike[str], *, force: bool = False,
                 name: str = ARTIFACT_NAME) -> tuple[Path, bool]:
    """Commit the distilled student as a versioned artifact under ``output`` (``<name>-<digest>/`` plus
    ``latest``): a rec-LM folder (model.safetensors, vocab.json, config.json) with meta.json (params and their
    hash, data hash, metrics, the report). Returns the folder and whether it was written."""
    store = ArtifactStore(output, name)
    with store.staging() as staging:
        result.student.save(staging.folder)
        folder, written = store.commit(
            staging, params=result.params, data_hash=result.data_hash, trainer=TRAINER,
            metrics={k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) or v is None},
            extra={**result.extra, "report": result.report.to_dict(), "history": result.history,
                   "teacher": result.teacher_name, "files_format": "llmrec.reclm/1"},
            force=force)
    return folder, written


def find_student(output: str | os.PathLike[str], params: dict[str, Any], data_hash: str,
                 name: str = ARTIFACT_NAME) -> Path | None:
    """The folder of an existing, verified artifact trained with ``params`` on ``data_hash``, or None."""
    store = ArtifactStore(output, name)
    folder = store.root / f"{name}-{digest([params_hash(params), data_hash])}"
    if not folder.is_dir():
        return None
    try:
        return store.open(folder).folder
    except ArtifactError:
        return None


__all__ = ["ARTIFACT_NAME", "DistillResult", "Prepared", "artifact_key", "distill", "evaluate", "find_student",
           "prepare", "save_student"]
