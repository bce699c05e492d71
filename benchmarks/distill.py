"""Distilling a rec-LM's pairwise preferences into a tiny rec-LM on MovieLens 100K (the book's 4.6).

Protocol (../shared/PROTOCOLS.md, "Pairwise preference"): the temporal per-user split; test pairs = 5 per user
(a relevant test item against an item the user never rated, numpy default_rng(0), shown in a random order);
accuracy = share of pairs where the model prefers the relevant item. Nothing is learned from test: the teacher,
every student and every epoch choice see only a validation split carved from each user's training ratings the
same temporal way (``llmrec.training.validation_dataset``).

- Teacher: a ``medium`` rec-LM (4 layers x 128) trained here on next-item loss, epochs capped (``--teacher-epochs``)
  so that the whole benchmark stays near 15 minutes on 2 shared cores.
- From scratch: a ``tiny`` rec-LM (1 layer x 32) trained the same way, no teacher. It is also where the
  ``init: next-item`` students start.
- Pairwise CE, no teacher: that tiny model fine-tuned on the transfer pairs' true labels only (``kl+ce`` with
  ``alpha 0``), so that what the teacher adds is separated from what pairwise fine-tuning adds.
- Distilled: KL (teacher soft labels only) and KL+CE (alpha 0.5), from the next-item init (learning rate 1e-3);
  KL+CE from random weights (``init: scratch``, 3e-3, twice the epochs). Temperature 2. Each keeps its best
  epoch on validation-pair accuracy (epoch 0, the starting point, included).

Latency: one pair scored alone (encode the history, one forward pass, two output logits), torch on 1 thread,
process CPU time (the machine is shared, so wall time is noisier; both are reported), 100 test pairs per round,
7 rounds with the models' order rotating, median over rounds. The batched figure scores 64 pairs per call.

    LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/distill.py [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.data.datasets import load_dataset
from llmrec.distill import DistillConfig, PairConfig, RecLMTeacher, prepare, save_student, train_student
from llmrec.distill.pipeline import DistillResult, artifact_key, evaluate
from llmrec.distill.report import measure_latency
from llmrec.distill.scoring import PairScorer, sigmoid
from llmrec.distill.student import student_config, train_next_item
from llmrec.distill.teachers import teacher_logits
from llmrec.reclm import RecLM, RecLMConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "distill.md"


def log(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    parser.add_argument("--teacher-size", default="medium", choices=("small", "medium"))
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--init-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=6, help="most pairwise epochs per student")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cpu_started = time.process_time()

    ds = load_dataset("movielens-100k", "temporal")
    base = DistillConfig(epochs=args.epochs, init_epochs=args.init_epochs, threads=args.threads, device="cpu",
                         temperature=2.0, pairs=PairConfig())
    prepared = prepare(ds, base)
    carved = prepared.carved
    log(f"{ds!r}; pairs: {len(prepared.transfer)} transfer, {len(prepared.validation)} validation, "
        f"{len(prepared.test)} test")

    t0 = time.perf_counter()
    teacher_cfg = RecLMConfig(size=args.teacher_size, max_epochs=args.teacher_epochs, patience=3, seed=0,
                              threads=args.threads, device="cpu")
    teacher_rec = train_next_item(carved.catalog, carved.train, list(carved.train_cases), teacher_cfg, progress=log,
                                  should_stop=None, checkpoint_dir=None, label=f"teacher ({args.teacher_size})")
    teacher_seconds = time.perf_counter() - t0
    teacher = RecLMTeacher(teacher_rec)

    t0 = time.perf_counter()
    z_t = teacher_logits(teacher, prepared.transfer.histories, prepared.transfer.pairs)
    label_seconds = time.perf_counter() - t0
    log(f"teacher labels for {len(z_t)} transfer pairs in {label_seconds:.1f}s")

    t0 = time.perf_counter()
    scratch = train_next_item(carved.catalog, carved.train, list(carved.train_cases), student_config("tiny", base),
                              progress=log, should_stop=None, checkpoint_dir=None, label="tiny from scratch")
    scratch_seconds = time.perf_counter() - t0

    tune = {"init": "next-item", "lr": 1e-3}  # fine-tuning a trained model: a third of the from-scratch rate
    variants: dict[str, DistillConfig] = {
        "pairwise CE, no teacher": base.model_copy(update={"loss": "kl+ce", "alpha": 0.0, **tune}),
        "distilled KL": base.model_copy(update={"loss": "kl", **tune}),
        "distilled KL+CE": base.model_copy(update={"loss": "kl+ce", "alpha": 0.5, **tune}),
        "distilled KL+CE, init scratch": base.model_copy(update={"loss": "kl+ce", "alpha": 0.5, "init": "scratch",
                                                                 "epochs": args.epochs * 2}),
    }
    students: dict[str, Any] = {}
    for name, cfg in variants.items():
        log(f"student: {name}")
        res = train_student(carved.catalog, prepared.transfer, z_t, prepared.validation, "tiny", cfg,
                            init_model=scratch if cfg.init == "next-item" else None, progress=log)
        uses_teacher = not (cfg.loss == "kl+ce" and cfg.alpha == 0.0)
        seconds = res.metrics["finetune_seconds"] + (scratch_seconds if cfg.init == "next-item" else 0.0) + (
            label_seconds if uses_teacher else 0.0)
        students[name] = (res, seconds, cfg)

    models = [("from scratch", scratch, scratch_seconds)] + [(n, r.rec, s) for n, (r, s, _) in students.items()]
    log(f"report: {len(prepared.test)} test pairs, latency {args.rounds} rounds x {args.samples} pairs")
    report = evaluate(prepared.test, teacher, models, latency_rounds=args.rounds, latency_samples=args.samples,
                      teacher_train_seconds=teacher_seconds)

    # batched scoring, the same rounds rule: 64 pairs per call
    sample_n = min(len(prepared.test), 640)
    sub = prepared.test.subset(range(sample_n))
    scorers = {"teacher": teacher.prefer}
    for role, rec, _ in models:
        s = PairScorer(rec)
        scorers[role] = (lambda sc: (lambda h, p: sigmoid(sc.logits(h, p))))(s)
    batched = measure_latency(scorers, sub.histories, sub.pairs, rounds=3, batch=64)

    # the artifact: the KL+CE student saved through ArtifactStore and reloaded as a plain rec-LM folder
    best_name = "distilled KL+CE"
    res, seconds, cfg = students[best_name]
    params, d_hash = artifact_key(prepared, teacher.name, "tiny", cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = save_student(DistillResult(res.rec, scratch, report, res.history, res.metrics, params, d_hash,
                                               teacher.name), tmp)
        reloaded = RecLM.load(folder)
        z_a = PairScorer(res.rec).logits(sub.histories, sub.pairs)
        z_b = PairScorer(reloaded).logits(sub.histories, sub.pairs)
        reload_diff = float(np.max(np.abs(z_a - z_b)))
        files = sorted(p.name for p in Path(folder).iterdir())

    total = time.perf_counter() - started
    cpu_total = time.process_time() - cpu_started
    text = render(args, ds, prepared, teacher_rec, report, students, batched, reload_diff, files, total, cpu_total,
                  label_seconds)
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text + "\n", encoding="utf-8")
        log(f"wrote {OUT}")
    return 0


def render(args: Any, ds: Any, prepared: Any, teacher_rec: Any, report: Any, students: dict[str, Any],
           batched: dict[str, Any], reload_diff: float, files: list[str], total: float, cpu_total: float,
           label_seconds: float) -> str:
    t = report.row("teacher")
    lines = [
        "# Distillation: pairwise preferences of a medium rec-LM into a tiny one (MovieLens 100K)",
        "",
        f"`LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/distill.py --write` "
        f"(teacher {args.teacher_size}, at most {args.teacher_epochs} epochs; students: next-item init at most "
        f"{args.init_epochs} epochs, pairwise at most {args.epochs}; training on {args.threads} torch thread(s)). "
        f"{platform.machine()}, {platform.python_version()}, CPU only, shared with other work; whole run "
        f"{total / 60:.1f} min wall, {cpu_total / 60:.1f} min CPU.",
        "",
        f"{ds.name}, temporal split; test pairs: {report.pairs} ({report.users} users x 5, default_rng(0)); "
        f"transfer pairs: {len(prepared.transfer)} (each user's liked training events against an unseen item, "
        f"from the carved training split); validation pairs: {len(prepared.validation)}. "
        f"Teacher validation NDCG@10 {teacher_rec.metrics.get('val_ndcg10', 0):.4f} at epoch "
        f"{teacher_rec.metrics.get('best_epoch')} of {teacher_rec.metrics.get('epochs_run')}; its labels for the "
        f"transfer pairs took {label_seconds:.1f} s.",
        "",
        report.markdown(),
        "",
        "Ratios against the teacher (accuracy: this / teacher; speed-up: teacher CPU ms / this, one pair per call; "
        "batched: 64 pairs per call):",
        "",
        "| model | accuracy ratio | speed-up (1 pair) | speed-up (batched 64) | goal: >= 0.9x accuracy at >= 5x lower latency |",
        "|---|---|---|---|---|",
    ]
    for r in report.rows[1:]:
        ratio = r.accuracy / t.accuracy if t.accuracy else float("nan")
        speed = t.cpu_ms / r.cpu_ms if t.cpu_ms and r.cpu_ms else float("nan")
        bt, br = batched.get("teacher", {}).get("cpu_ms"), batched.get(r.role, {}).get("cpu_ms")
        bspeed = bt / br if bt and br else float("nan")
        met = "met" if ratio >= 0.9 and speed >= 5 else "not met"
        lines.append(f"| {r.role} | {ratio:.3f} | {speed:.2f}x | {bspeed:.2f}x | {met} |")
    lines += ["", "Batched CPU ms per pair (64 pairs per call, 3 rounds, median): " + ", ".join(
        f"{k} {v['cpu_ms']:.3f}" for k, v in batched.items()), "",
        "Per-round CPU ms per pair (one pair per call): " + json.dumps(
            {k: [round(x, 3) for x in v] for k, v in report.latency.get("per_round_cpu_ms", {}).items()}), "",
        "## Students' epochs (validation-pair accuracy; epoch 0 = where the student starts)", ""]
    for name, (res, _, cfg) in students.items():
        eps = ", ".join(f"{h['epoch']}: KL {h['kl']:.4f} / val {h['val_accuracy']:.4f}" for h in res.history)
        lines.append(f"- {name} (loss {cfg.loss}, alpha {cfg.alpha}, T {cfg.temperature}, init {cfg.init}, lr "
                     f"{cfg.lr}): kept epoch {res.metrics['best_epoch']}; {eps}")
    lines += ["", f"Artifact: the KL+CE student saved through ArtifactStore ({', '.join(files)}) and reloaded with "
              f"RecLM.load: largest pair-logit difference on 640 test pairs {reload_diff:.2e}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
