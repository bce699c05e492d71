"""LoRA training on a tiny random-weight Llama: the loss falls, the adapter and the merged model reload with the
same outputs, runs are deterministic by seed, a resumed run ends where an uninterrupted one does, and the
fine-tuned model beats the base on held-out prompts of a synthetic task."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llmrec.artifacts import ArtifactError
from llmrec.finetune import (
    FinetuneInterrupted,
    LoraTrainConfig,
    PairConfig,
    answer_nll,
    build_pairs,
    finetune,
    finetune_pairs,
    load_adapter,
    open_finetuned,
    train_lora,
)
from llmrec.finetune.lora import (
    encode,
    find_target_modules,
    load_base,
    pair_nlls,
    quiet_peft,
    read_checkpoint_state,
    trainable_state,
)

from .conftest import synthetic_catalog, synthetic_dataset, synthetic_log

PAIRS = PairConfig(n=3, pairs_per_user=4)
MAIN = LoraTrainConfig(lr=1e-2, max_steps=150, batch_size=8, schedule="constant", dropout=0.0, device="cpu",
                       max_length=256)
SMALL = LoraTrainConfig(lr=1e-2, max_steps=8, batch_size=4, dropout=0.1, device="cpu", max_length=256,
                        checkpoint_every=3, seed=3)


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """One fine-tuning job through the public API: 150 steps on the synthetic movies of 24 users."""
    out = tmp_path_factory.mktemp("ft-out")
    report = finetune(tiny_base, synthetic_dataset(24), output=out, name="model", lora=MAIN, pairs=PAIRS)
    held = build_pairs(synthetic_log(16, seed=5, prefix="held"), synthetic_catalog(), PAIRS)  # unseen users
    return report, held


@pytest.fixture(scope="module")
def small_pairs():
    return finetune_pairs(synthetic_dataset(24), PAIRS).train[:12]  # 3 steps an epoch: 8 steps cross epochs


@pytest.fixture(scope="module")
def uninterrupted(tiny_base, small_pairs, tmp_path_factory):
    run = train_lora(tiny_base, small_pairs, SMALL, checkpoint_dir=tmp_path_factory.mktemp("ckpt-a"), data_hash="d")
    return run, trainable_state(run.model)


def _logits(model, tokenizer, text: str):
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_loss_falls_and_the_artifact_records_it(trained):
    report, _ = trained
    m = report.metrics
    print(f"\ntrain loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}; validation answer NLL "
          f"{m['val_answer_nll_base']:.3f} (base) -> {m['val_answer_nll']:.3f}")
    assert m["train_loss_last"] < m["train_loss_first"] - 2.0
    assert m["val_answer_nll"] < m["val_answer_nll_base"] - 2.0
    assert report.written and report.steps == 150 and report.pairs > 50 and report.validation_pairs > 0
    meta = json.loads((report.folder / "meta.json").read_text())
    assert meta["trainer"] == "finetune.lora" and meta["params"]["lora"]["r"] == 8
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_log.json"} <= set(meta["files"])
    assert set(meta["adapter_files"]) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert meta["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert (report.folder.parent / "latest").read_text().strip() == report.folder.name
    assert not any(p.name.startswith(".staging") for p in report.folder.parent.iterdir())
    assert not (report.folder.parent / ".checkpoints").exists() or not any(
        (report.folder.parent / ".checkpoints").iterdir())  # removed once the artifact is committed


def test_the_merged_folder_loads_with_transformers_and_matches_base_plus_adapter(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report, held = trained
    peft_model, tokenizer = load_adapter(report.folder)
    merged = AutoModelForCausalLM.from_pretrained(str(report.folder), local_files_only=True)
    merged_tokenizer = AutoTokenizer.from_pretrained(str(report.folder), local_files_only=True)
    text = held[0].prompt + "\n" + held[0].answer
    assert merged_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert merged_tokenizer.chat_template == tokenizer.chat_template
    a, b = _logits(peft_model, tokenizer, text), _logits(merged, merged_tokenizer, text)
    assert (a - b).abs().max().item() < 1e-4
    with peft_model.disable_adapter():  # and the adapter really changes the model
        assert (_logits(peft_model, tokenizer, text) - a).abs().max().item() > 1e-2


def test_the_fine_tuned_model_beats_the_base_on_held_out_prompts(trained):
    report, held = trained
    model, tokenizer = load_adapter(report.folder)

    def nll(pairs):
        return answer_nll(model, tokenizer, pairs, max_length=256)

    def prefers_the_right_answer() -> float:
        """How often the true next titles are likelier than another user's (of another genre)."""
        wrong = [dataclasses.replace(p, answer=next(q for q in held[i + 1:] + held[:i]
                                                   if q.targets[0][0] != p.targets[0][0]).answer)
                 for i, p in enumerate(held)]
        right, other = pair_nlls(model, tokenizer, held, 256), pair_nlls(model, tokenizer, wrong, 256)
        return sum(a < b for a, b in zip(right, other)) / len(held)

    tuned_nll, tuned_acc = nll(held), prefers_the_right_answer()
    with model.disable_adapter():
        base_nll, base_acc = nll(held), prefers_the_right_answer()
    print(f"\nheld-out answer NLL: base {base_nll:.3f}, fine-tuned {tuned_nll:.3f}; right answer preferred: "
          f"base {base_acc:.2f}, fine-tuned {tuned_acc:.2f} ({len(held)} prompts)")
    assert tuned_nll < base_nll - 2.0
    assert tuned_acc >= base_acc + 0.1 and tuned_acc > 0.6


def test_runs_are_deterministic_by_seed_and_the_adapter_reloads_with_the_same_outputs(
        tiny_base, small_pairs, uninterrupted, tmp_path):
    import torch
    from peft import PeftModel

    run, state = uninterrupted
    again = train_lora(tiny_base, small_pairs, SMALL)
    assert again.losses == run.losses
    assert all(torch.equal(state[k], v) for k, v in trainable_state(again.model).items())
    other = train_lora(tiny_base, small_pairs, SMALL.model_copy(update={"seed": 4, "max_steps": 2}))
    assert other.losses != run.losses[:2]

    run.model.save_pretrained(str(tmp_path / "adapter"))
    base, tokenizer = load_base(tiny_base)
    with quiet_peft():
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    text = small_pairs[0].prompt
    assert torch.equal(_logits(reloaded, tokenizer, text), _logits(run.model.eval(), tokenizer, text))


def test_a_resumed_run_reaches_the_same_adapter_as_an_uninterrupted_one(tiny_base, small_pairs, uninterrupted,
                                                                       tmp_path):
    import torch

    run, state = uninterrupted
    asked = []

    def stop_after_five() -> bool:
        asked.append(1)
        return len(asked) > 5  # asked before each step: true before the sixth

    with pytest.raises(FinetuneInterrupted, match="after step 5/8") as info:
        train_lora(tiny_base, small_pairs, SMALL, checkpoint_dir=tmp_path, data_hash="d", should_stop=stop_after_five)
    assert info.value.step == 5 and info.value.checkpoint == tmp_path / "checkpoint"
    assert read_checkpoint_state(tmp_path)["step"] == 5
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [
        "adapter.safetensors", "optimizer.pt", "state.json"]

    lines = []
    resumed = train_lora(tiny_base, small_pairs, SMALL, checkpoint_dir=tmp_path, data_hash="d", progress=lines.append)
    assert resumed.resumed_from == 5 and any("resuming from the checkpoint at step 5/8" in s for s in lines)
    assert resumed.losses == run.losses
    assert all(torch.equal(state[k], v) for k, v in trainable_state(resumed.model).items())

    fresh = train_lora(tiny_base, small_pairs, SMALL, checkpoint_dir=tmp_path, data_hash="other", progress=lines.append)
    assert fresh.resumed_from == 0 and any("from other training data is ignored" in s for s in lines)


def test_prompts_use_the_chat_template_and_the_loss_counts_only_the_answer(tiny_base, small_pairs):
    _, tokenizer = load_base(tiny_base)
    pair = small_pairs[0]
    e = encode(tokenizer, pair.prompt, pair.answer, 512)
    answer_ids = [t for t, label in zip(e.input_ids, e.labels) if label != -100]
    assert tokenizer.decode(answer_ids) == pair.answer + "\n"  # the assistant turn, with its end of turn
    prompt = tokenizer.decode(e.input_ids[:len(e.input_ids) - len(answer_ids)])
    assert prompt.startswith("<|user|>I liked these movies:") and prompt.endswith("<|assistant|>")
    short = encode(tokenizer, pair.prompt, pair.answer, 40)  # too long: the oldest lines go, the answer stays
    assert len(short.input_ids) == 40 and [t for t in short.labels if t != -100] == answer_ids


def test_target_modules_are_found_and_a_tampered_artifact_is_refused(trained, tiny_base):
    base, _ = load_base(tiny_base)
    assert find_target_modules(base) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    report, _ = trained
    assert open_finetuned(report.folder).meta["steps"] == 150
    path = report.adapter / "adapter_model.safetensors"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-8])
        with pytest.raises(ArtifactError, match="corrupt"):
            load_adapter(report.folder)
    finally:
        path.write_bytes(original)
