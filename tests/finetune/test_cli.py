"""`llmrec finetune` end to end on a demo spec (interrupted by Ctrl-C, resumed, up to date, loaded by the spec's
transformers provider), and one clear message for each input it cannot work with."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.testing import write_spec

SPEC = """
    name: movies
    inputs:
      user_id: string
    resources:
      data: {type: dataset, config: {name: DATASET, split: temporal, options: OPTIONS}}
      model: {type: llm, config: {provider: transformers, model: MODEL}}
    nodes:
      profile:
        type: user.profile
        inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
      recs:
        type: llm.recommend
        inputs: {model: "${resources.model}", profile: "${profile}", catalog: "${resources.data.catalog}"}
    outputs:
      recs: ${recs}
"""

NO_LLM = """
    name: no-llm
    inputs: {}
    resources:
      data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 6, n_items: 30}}}
    nodes:
      popular:
        type: retrieve.popular
        inputs: {interactions: "${resources.data.train}"}
    outputs: {items: "${popular}"}
"""

FAST = ["--max-steps", "6", "--max-length", "192", "--batch-size", "4", "--checkpoint-every", "2", "--device", "cpu",
        "--lr", "5e-3"]


def _spec(tmp_path: Path, model: Path, dataset: str = "demo", options: str = "{n_users: 10, n_items: 40}") -> Path:
    text = SPEC.replace("DATASET", dataset).replace("OPTIONS", options).replace("MODEL", str(model))
    return write_spec(tmp_path, text)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_finetune_interrupted_resumed_up_to_date_and_loaded_by_the_spec(tiny_base, tmp_path, capsys, monkeypatch):
    import llmrec.finetune.cli as command

    spec = _spec(tmp_path, tiny_base)
    args = ["finetune", spec, "--base", tiny_base, *FAST]
    said = []

    def ctrl_c_at_step_two(text: str) -> None:  # what the user sees, with a Ctrl-C while step 2 is reported
        said.append(text)
        if text.startswith("step 2/6"):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(command, "_err", ctrl_c_at_step_two)
    handler = signal.getsignal(signal.SIGINT)
    code, out, _ = cli(capsys, *args)
    err = "\n".join(said)
    assert code == 130, err
    assert "stopping after this step, saving a checkpoint" in err
    assert "interrupted: after step 2/6; checkpoint in" in err and "no artifact was written" in err
    assert f"resume with `llmrec finetune {spec} --base {tiny_base} --max-steps 6" in err
    models = tmp_path / "models" / "finetune-model"
    assert not (models / "latest").exists() and not list(models.glob("model-*"))  # nothing half-written
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is put back

    monkeypatch.setattr(command, "_err", said.append)
    code, out, _ = cli(capsys, *args)
    err = "\n".join(said)
    assert code == 0, err
    assert "resuming from the checkpoint at step 2/6" in err and "step 6/6" in err and "ETA" in err
    assert "instruction pairs from" in err and "validation pairs" in err
    assert "fine-tuned LlamaForCausalLM for llm resource 'model'" in out and "resumed at step 2" in out
    assert "train loss" in out and "validation answer NLL" in out
    folder = Path((models / "latest").read_text().strip())
    folder = models / folder
    assert f"config: {{provider: transformers, model: {folder.resolve()}}}" in out
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["trainer"] == "finetune.lora" and meta["steps"] == 6 and meta["users"] == 10
    assert meta["params"]["lora"]["max_steps"] == 6 and (folder / "adapter" / "adapter_model.safetensors").is_file()

    code, out, _ = cli(capsys, *args)
    assert code == 0 and "up to date" in out and str(folder.resolve()) in out

    pytest.importorskip("llguidance")
    import asyncio

    from pydantic import BaseModel

    from llmrec.llm.local import transformers_provider
    from llmrec.llm.provider import CompletionRequest, Message

    class Recs(BaseModel):
        items: list[str]

    provider = transformers_provider(provider="transformers", model=str(folder), max_tokens=24)
    request = CompletionRequest((Message("user", "Recommend 2 movies."),), schema=Recs, max_tokens=24,
                                temperature=0.0)
    completion = asyncio.run(provider.complete(request))
    assert isinstance(completion.parsed, Recs)  # the unchanged transformers provider loads and answers with it


def test_bad_base_folders_are_one_message_with_exit_code_2(tiny_base, tmp_path, capsys):
    spec = _spec(tmp_path, tiny_base)
    code, _, err = cli(capsys, "finetune", spec, "--base", tmp_path / "nowhere")
    assert code == 2 and "base model folder" in err and "not found" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "finetune", spec, "--base", empty)
    assert code == 2 and "it has no config.json" in err

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"],
                                                  "hidden_size": 32, "num_hidden_layers": 1}))
    code, _, err = cli(capsys, "finetune", spec, "--base", bert)
    assert code == 2 and "holds BertForMaskedLM, not a causal (decoder) language model" in err

    huge = tmp_path / "huge"
    huge.mkdir()
    shutil.copy(tiny_base / "tokenizer.json", huge)
    (huge / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 16384,
        "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8,
        "tie_word_embeddings": False}))
    code, _, err = cli(capsys, "finetune", spec, "--base", huge, "--device", "cpu")
    assert code == 2 and "is too large to fine-tune here: about 405" in err and "GiB" in err, err


def test_spec_and_dataset_problems_are_one_message(tiny_base, tmp_path, capsys):
    no_llm = write_spec(tmp_path, NO_LLM, "no-llm.yaml")
    code, _, err = cli(capsys, "finetune", no_llm, "--base", tiny_base)
    assert code == 4 and "has no llm resource to fine-tune a model for; add one, e.g. resources: {model: " \
                         "{type: llm, config: {provider: transformers, model: " in err

    spec = _spec(tmp_path, tiny_base)
    code, _, err = cli(capsys, "finetune", spec, "--base", tiny_base, "--resource", "nope")
    assert code == 4 and "no llm resource 'nope'" in err and "(llm resources: model)" in err

    empty = tmp_path / "empty-data"
    empty.mkdir()
    (empty / "catalog.jsonl").write_text('{"id": "m1", "title": "A"}\n{"id": "m2", "title": "B"}\n')
    (empty / "interactions.csv").write_text("user_id,item_id,event,rating,timestamp\n")
    code, _, err = cli(capsys, "finetune", _spec(tmp_path, tiny_base, str(empty), "{}"), "--base", tiny_base)
    assert code == 4 and "dataset resource 'data' has no training interactions to learn from" in err

    single = tmp_path / "one-user"
    shutil.copytree(empty, single)
    (single / "interactions.csv").write_text("user_id,item_id,event,rating,timestamp\n"
                                             "u1,m1,rating,5,1\nu1,m2,rating,4,2\n")
    code, _, err = cli(capsys, "finetune", _spec(tmp_path, tiny_base, str(single), "{}"), "--base", tiny_base)
    assert code == 4 and "has interactions of a single user (u1)" in err

    code, _, err = cli(capsys, "finetune", spec, "--base", tiny_base, "--dropout", "0.5", "--dtype", "int4")
    assert code == 2 and "error: --dtype:" in err
