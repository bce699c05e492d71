"""The ``reclm`` provider: an llm resource answered by a rec-LM that llmrec trains through the training contract
(``llmrec train`` or train_on_first_use), used by llm.recommend and llm.rank with the model's scores."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import llmrec
from llmrec.cli import main
from llmrec.errors import ProviderError
from llmrec.llm.provider import Choices, CompletionRequest, ItemContext, Message
from llmrec.testing import write_spec

TRAINING = "{size: tiny, max_epochs: 2, patience: 1, seed: 0, threads: 1, batch_size: 16}"
REFIT = "{size: tiny, max_epochs: 2, patience: 1, seed: 0, threads: 1, batch_size: 16, refit: true}"

SPEC = """
    name: reclm-demo
    inputs:
      user_id: {type: string, default: "u1"}
    resources:
      data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 40, n_items: 80}}}
      model:
        type: llm
        config: MODEL
    nodes:
      profile:
        type: user.profile
        inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}",
                 user_id: "${inputs.user_id}"}
      candidates:
        type: retrieve.popular
        config: {k: 30}
        inputs: {interactions: "${resources.data.train}"}
      pick:
        type: llm.recommend
        config: {by: title, n: 5, PICK_EXTRA}
        inputs: {model: "${resources.model}", catalog: "${resources.data.catalog}", profile: "${profile}",
                 candidates: "${candidates}"}
        fallback: {node: candidates}
      ranked:
        type: llm.rank
        config: {mode: RANK_MODE, k: 6}
        inputs: {model: "${resources.model}", catalog: "${resources.data.catalog}", profile: "${profile}",
                 candidates: "${candidates}"}
    outputs: {items: "${pick}", ranked: "${ranked}", profile: "${profile}", candidates: "${candidates}"}
"""


def _spec(tmp_path: Path, model: str, pick_extra: str = "", rank_mode: str = "listwise") -> Path:
    text = (SPEC.replace("MODEL", model).replace("PICK_EXTRA", pick_extra or "list_options: 0")
            .replace("RANK_MODE", rank_mode))
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_spec(tmp_path, text)


@pytest.fixture(autouse=True)
def _no_env_model(monkeypatch):
    monkeypatch.delenv("LLMREC_MODEL", raising=False)


def test_train_then_recommend_and_rank_with_the_models_scores(tmp_path, capsys) -> None:
    spec = _spec(tmp_path, "{provider: reclm, model: models/reclm, extra: " + REFIT + "}")
    assert main(["validate", str(spec)]) == 0
    assert "no trained model" in capsys.readouterr().out  # a warning naming the command, not an error
    assert main(["run", str(spec)]) == 4
    assert f"run `llmrec train {spec}` first" in capsys.readouterr().err

    assert main(["train", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "trained resource 'model' (llm)" in out
    assert "rec-LM epoch 1/2" in err and "temporal-validation" in err
    assert "refitting the rec-LM on all" in err  # the epoch count picked on validation, then every training event
    folder = next((tmp_path / "models" / "reclm").glob("model-*"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["params"]["provider"] == "reclm" and meta["params"]["size"] == "tiny"
    assert {"model.safetensors", "vocab.json", "config.json"} <= set(meta["files"])
    assert meta["params"]["refit"] is True and meta["metrics"]["refit_events"] > meta["rows"]

    result = llmrec.run(spec, {"user_id": "u1"})
    assert not result.degraded
    pick = result.outputs["items"]
    profile = result.outputs["profile"]
    ids = pick.ids
    assert len(ids) == 5 == len(set(ids)) and not set(ids) & set(profile.seen)
    logprobs = [it.sources["llm_logprob"] for it in pick.items]
    assert logprobs == sorted(logprobs, reverse=True) and all(lp < 0 for lp in logprobs)
    record = {r.node_id: r for r in result.trace.nodes}
    assert record["pick"].usage.model.startswith("reclm-tiny-") and record["pick"].status == "ok"

    # the answer is the rec-LM's own ranking of the allowed items
    from llmrec.reclm import RecLM

    rec = RecLM.load(folder)
    pool = [i for i in result.outputs["candidates"].ids if i not in set(profile.seen)]
    assert ids == [i for i, _ in rec.recommend(profile.events(), 5, pool)]
    ranked = result.outputs["ranked"]
    head = ranked.items[:6]
    assert all("llm" in it.sources for it in head)
    scores = [it.sources["llm"] for it in head]
    assert scores == sorted(scores, reverse=True)


def test_pairwise_ranking_and_a_text_task_on_the_reclm(tmp_path, capsys) -> None:
    spec = _spec(tmp_path, "{provider: reclm, model: models/reclm, train_on_first_use: true, extra: " + TRAINING + "}",
                 rank_mode="pairwise")
    result = llmrec.run(spec, {"user_id": "u2"})
    assert "training it now" in capsys.readouterr().err
    ranked = result.outputs["ranked"]
    assert len(ranked.items) == 30 and not result.degraded
    wins = [it.sources["llm"] for it in ranked.items[:6]]
    assert wins == sorted(wins, reverse=True) and sum(wins) == 15  # 6 choose 2 comparisons, one winner each

    provider = asyncio.run(_load_provider(spec))
    with pytest.raises(ProviderError, match="cannot answer free text"):
        asyncio.run(provider.complete(CompletionRequest(messages=(Message("user", "Label this text"),))))


async def _load_provider(spec: Path):
    rt = llmrec.open_runtime(spec)
    try:
        await rt.start()
        return rt.resources["model"]
    finally:
        await rt.close()


def test_the_embedded_route_answers_when_no_model_is_configured(tmp_path, capsys, monkeypatch) -> None:
    spec = _spec(tmp_path, "{temperature: 0, train_on_first_use: true, embedded: {provider: reclm, "
                           "model: ../runs/reclm, extra: " + TRAINING + "}}",
                 pick_extra="prompt_cache: {backend: memory}")
    assert main(["validate", str(spec)]) == 0
    assert "no model configured" not in capsys.readouterr().out
    result = llmrec.run(spec, {"user_id": "u3"})
    assert not result.degraded and "training it now" in capsys.readouterr().err
    assert (tmp_path.parent / "runs" / "reclm").is_dir()  # relative to the spec's folder
    assert {r.node_id: r for r in result.trace.nodes}["pick"].usage.model.startswith("reclm-tiny-")

    # a configured model takes precedence over the embedded one
    from llmrec.nodes.llm import LlmConfig, resolve_route

    monkeypatch.setenv("LLMREC_MODEL", "openai/gpt-4o-mini")
    route = resolve_route(LlmConfig.model_validate({"embedded": {"provider": "reclm", "model": "x"}}))
    assert route is not None and route.provider == "litellm"


def test_a_saved_reclm_folder_is_used_as_it_is_and_answers_are_cached(tmp_path) -> None:
    spec = _spec(tmp_path / "a", "{provider: reclm, model: models/reclm, train_on_first_use: true, extra: "
                 + TRAINING + "}")
    llmrec.run(spec, {"user_id": "u1"})
    folder = next((tmp_path / "a" / "models" / "reclm").glob("model-*"))
    spec2 = _spec(tmp_path / "b", "{provider: reclm, model: " + str(folder) + ", extra: {quantize: int8}}",
                  pick_extra="prompt_cache: {backend: memory}")
    assert main(["validate", str(spec2)]) == 0  # nothing to train: no warning, no error

    async def twice():
        rt = llmrec.open_runtime(spec2)
        try:
            await rt.start()
            first = await rt.run({"user_id": "u1"})
            second = await rt.run({"user_id": "u1"})
            return first, second
        finally:
            await rt.close()

    first, second = asyncio.run(twice())
    assert not first.degraded
    assert {r.node_id: r for r in first.trace.nodes}["pick"].usage.model.endswith("-int8")
    assert {r.node_id: r for r in second.trace.nodes}["pick"].cache_hit
    assert first.outputs["items"].model_dump() == second.outputs["items"].model_dump()  # scores kept by the cache


def test_item_context_must_match_its_choices(tmp_path) -> None:
    spec = _spec(tmp_path, "{provider: reclm, model: models/reclm, train_on_first_use: true, extra: " + TRAINING + "}")
    provider = asyncio.run(_load_provider(spec))
    bad = CompletionRequest(messages=(Message("user", "x"),), choices=(Choices("items[]", ("a", "b")),),
                            items=ItemContext(history=(), path="items[]", ids=("1",)))
    with pytest.raises(ProviderError, match="item context"):
        asyncio.run(provider.complete(bad))


def test_ctrl_c_during_training_on_first_use_stops_at_an_epoch_and_resumes(tmp_path) -> None:
    """`llmrec run` that trains on first use: Ctrl-C stops the trainer at its next epoch (the worker thread is
    asked to stop, so the process does not wait for the whole training), exits 130 and says how to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    slow = "{size: tiny, max_epochs: 400, patience: 400, seed: 0, threads: 1, batch_size: 16}"
    spec = _spec(tmp_path, "{provider: reclm, model: models/reclm, train_on_first_use: true, extra: " + slow + "}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmrec", "run", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "rec-LM epoch 2/400" in line:
            break
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 60 and "rec-LM epoch 400/400" not in err
    assert "stops training at its next safe point" in err and f"llmrec train {spec}" in err
    assert not list((tmp_path / "models" / "reclm").glob("model-*"))  # nothing half-written was committed
    done = max(int(line.split("epoch ")[1].split("/")[0]) for line in err.splitlines() if "rec-LM epoch" in line)

    resumed = subprocess.Popen([sys.executable, "-m", "llmrec", "train", str(spec)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    assert resumed.stderr is not None
    first = next(line for line in resumed.stderr if "rec-LM epoch" in line)
    resumed.send_signal(signal.SIGINT)
    resumed.communicate(timeout=120)
    assert int(first.split("epoch ")[1].split("/")[0]) == done + 1, (first, done)  # from the checkpoint


def test_training_on_a_log_of_one_user_or_none_is_one_clear_message(tmp_path, capsys) -> None:
    data = tmp_path / "one-user"
    data.mkdir()
    (data / "catalog.jsonl").write_text("".join(f'{{"id": "m{i}", "title": "Movie {i}"}}\n' for i in range(6)))
    rows = "".join(f"u1,m{i},rating,{4 + i % 2},{i}\n" for i in range(6))
    (data / "interactions.csv").write_text("user_id,item_id,event,rating,timestamp\n" + rows)
    spec = write_spec(tmp_path, f"""
        name: one-user
        inputs: {{}}
        resources:
          data: {{type: dataset, config: {{name: {data}, split: temporal}}}}
          model: {{type: llm, config: {{provider: reclm, model: models, extra: {TRAINING}}}}}
        nodes:
          pick:
            type: llm.recommend
            inputs: {{model: "${{resources.model}}", catalog: "${{resources.data.catalog}}"}}
        outputs: {{items: "${{pick}}"}}
    """)
    assert main(["train", str(spec)]) == 4
    err = capsys.readouterr().err
    assert "a rec-LM needs the histories of at least 2 users" in err and "has 1" in err and "Traceback" not in err
    (data / "interactions.csv").write_text("user_id,item_id,event,rating,timestamp\n")
    assert main(["train", str(spec)]) == 4
    err = capsys.readouterr().err
    assert "no training interactions to learn from" in err and "Traceback" not in err
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("model-*"))
