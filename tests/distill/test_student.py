"""The student: the KL loss falls, it learns the teacher's preferences, deterministic, resumable, saved as an
artifact that loads as a plain rec-LM folder."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.artifacts import ArtifactStore, read_meta
from llmrec.distill import (DistillConfig, DistillError, PairScorer, RecLMTeacher, distill, hard_subset, prepare,
                            rec_lm_folder, save_student, train_student)
from llmrec.distill.scoring import sigmoid
from llmrec.reclm import RecLM
from llmrec.training import TrainingInterrupted

from .conftest import QUICK


def states_equal(a: RecLM, b: RecLM) -> bool:
    import torch

    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def scratch_config(**extra):
    return DistillConfig(**{**QUICK, "init": "scratch", "loss": "kl", **extra})


@pytest.fixture(scope="module")
def distilled(prepared, teacher_rec):
    return distill(prepared, RecLMTeacher(teacher_rec), "tiny", scratch_config(), latency_rounds=2,
                   latency_samples=20)


def test_the_kl_loss_falls_and_the_student_learns_the_teachers_preferences(distilled):
    kls = [h["kl"] for h in distilled.history]
    assert kls[-1] < 0.6 * kls[0] and all(b < a for a, b in zip(kls[:3], kls[1:4]))
    teacher, scratch, student = (distilled.report.row(r) for r in ("teacher", "from scratch", "distilled"))
    assert teacher.accuracy > 0.7  # the synthetic preference is learnable
    assert student.agreement > scratch.agreement + 0.1  # the same size without the teacher agrees less
    assert student.accuracy > 0.7  # clearly above chance (0.5)
    assert student.parameters == scratch.parameters < teacher.parameters
    assert all(r.cpu_ms and r.cpu_ms > 0 for r in distilled.report.rows)
    text = distilled.report.markdown()
    assert "| distilled |" in text and "distilled/teacher accuracy" in text


def test_training_is_deterministic_by_seed(prepared, teacher_z):
    carved = prepared.carved
    runs = [train_student(carved.catalog, prepared.transfer, teacher_z, prepared.validation, "tiny",
                          scratch_config(epochs=2, seed=seed)).rec for seed in (0, 0, 1)]
    assert states_equal(runs[0], runs[1]) and not states_equal(runs[0], runs[2])


def test_kl_plus_ce_from_a_next_item_init(prepared, teacher_z):
    carved = prepared.carved
    config = DistillConfig(**{**QUICK, "init": "next-item", "loss": "kl+ce", "alpha": 0.5, "temperature": 3.0,
                              "epochs": 2})
    result = train_student(carved.catalog, prepared.transfer, teacher_z, prepared.validation, "tiny", config,
                           init_data=(carved.train, list(carved.train_cases)))
    assert result.init is not None and result.init.metrics["epochs_run"] == QUICK["init_epochs"]
    assert result.history[0]["val_accuracy"] == pytest.approx(
        float(np.mean(((sigmoid(PairScorer(result.init).logits(prepared.validation.histories,
                                                                  prepared.validation.pairs)) > 0.5)
                       == (prepared.validation.label > 0.5)))), abs=0.02)
    assert {"loss", "kl", "ce", "val_accuracy"} <= set(result.history[-1])
    best = result.metrics["best_epoch"]
    assert result.metrics["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    assert result.history[best]["val_accuracy"] == result.metrics["val_accuracy"]


def test_hard_examples_drop_what_the_teacher_gets_confidently_right():
    label = np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    z = np.array([5.0, -1.0, -5.0, 0.5, 0.1])  # p(true): 0.99, 0.27, 0.99, 0.38, 0.52
    assert list(hard_subset(label, z, 0.6)) == [1, 3, 4]
    assert list(hard_subset(label, z, 0.2)) == [1]
    assert list(hard_subset(label, z, 1.0)) == [0, 1, 2, 3, 4]


def test_hard_examples_train_on_the_kept_fraction(prepared, teacher_z):
    carved = prepared.carved
    result = train_student(carved.catalog, prepared.transfer, teacher_z, prepared.validation, "tiny",
                           scratch_config(epochs=1, hard_examples=0.25))
    assert result.metrics["transfer_pairs"] == int(np.ceil(0.25 * len(prepared.transfer)))
    assert result.metrics["transfer_pairs_offered"] == len(prepared.transfer)


def test_a_stopped_run_resumes_to_the_same_weights(prepared, teacher_z, tmp_path):
    carved = prepared.carved
    args = (carved.catalog, prepared.transfer, teacher_z, prepared.validation, "tiny", scratch_config(epochs=3))
    calls = {"n": 0}

    def stop_after_first_epoch():
        calls["n"] += 1
        return calls["n"] > 4  # the synthetic transfer set is 4 batches: true at the end of epoch 1

    with pytest.raises(TrainingInterrupted, match="after epoch 1; the checkpoint .* resumes it"):
        train_student(*args, should_stop=stop_after_first_epoch, checkpoint_dir=tmp_path)
    messages = []
    resumed = train_student(*args, checkpoint_dir=tmp_path, progress=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    straight = train_student(*args)
    assert states_equal(resumed.rec, straight.rec)
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in straight.history]


def test_the_artifact_is_a_rec_lm_folder(distilled, prepared, tmp_path):
    folder, written = save_student(distilled, tmp_path / "out")
    assert written and folder.parent == tmp_path / "out" and folder.name.startswith("distilled-")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "vocab.json", "config.json", "meta.json"}
    meta = read_meta(folder)
    assert meta["trainer"] == "llmrec.distill" and meta["data_hash"] == distilled.data_hash
    assert meta["params"]["teacher"] == distilled.teacher_name and meta["params"]["distill"]["loss"] == "kl"
    assert meta["metrics"]["test_accuracy"] == distilled.report.row("distilled").accuracy
    ArtifactStore(tmp_path / "out", "distilled").open(folder)  # every file's checksum verifies
    reloaded = RecLM.load(folder)
    test = prepared.test
    np.testing.assert_array_equal(PairScorer(reloaded).logits(test.histories, test.pairs),
                                  PairScorer(distilled.student).logits(test.histories, test.pairs))
    assert reloaded.metrics["test_accuracy"] == distilled.metrics["test_accuracy"]
    # the output folder itself names a rec-LM (its latest version): usable as a teacher in turn
    assert rec_lm_folder(tmp_path / "out") == folder
    again, written = save_student(distilled, tmp_path / "out")
    assert again == folder and not written


def test_datasets_that_cannot_be_distilled(dataset):
    import dataclasses

    from llmrec.data import Interactions

    with pytest.raises(DistillError, match="has no interactions to distil from"):
        prepare(dataclasses.replace(dataset, train=Interactions([])))
    one = Interactions([it for it in dataset.train if it.user_id == "u1"])
    with pytest.raises(DistillError, match=r"has only one user \('u1'\)"):
        prepare(dataclasses.replace(dataset, train=one))
    with pytest.raises(DistillError, match="has no test cases"):
        prepare(dataclasses.replace(dataset, test_cases=()))
