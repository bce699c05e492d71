"""`llmrec train` end to end on a demo-based spec: warnings, refusals, training, running, train_on_first_use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.api import check, run
from llmrec.cli import main
from llmrec.errors import RunError
from llmrec.testing import write_spec

SPEC = """
    name: ltr
    inputs:
      user_id: string
    resources:
      data:
        type: dataset
        config: {name: demo, split: user, options: {n_users: 60}}
    nodes:
      profile:
        type: user.profile
        inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
      popular:
        type: retrieve.popular
        config: {k: 60}
        inputs: {interactions: "${resources.data.train}"}
      affinity:
        type: retrieve.category_affinity
        config: {k: 60}
        inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", profile: "${profile}"}
      blend:
        type: fuse
        inputs: {lists: ["${affinity}", "${popular}"]}
      unseen:
        type: rerank.filter_seen
        inputs: {candidates: "${blend}", profile: "${profile}"}
      ranked:
        type: rank.lambdamart
        config: {model_path: models, k: 5, n_estimators: 20, min_data_in_leaf: 10, train_on_first_use: FIRST_USE}
        inputs:
          candidates: ${unseen}
          catalog: ${resources.data.catalog}
          profile: ${profile}
          interactions: ${resources.data.train}
      shown:
        type: present.items
        inputs: {candidates: "${ranked}", catalog: "${resources.data.catalog}", profile: "${profile}"}
    outputs:
      shown: ${shown}
"""


def _spec(tmp_path: Path, first_use: bool = False, text: str = SPEC) -> Path:
    return write_spec(tmp_path, text.replace("FIRST_USE", "true" if first_use else "false"))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_warns_run_refuses_train_then_run(tmp_path, capsys):
    spec = _spec(tmp_path)
    code, out, _ = cli(capsys, "validate", str(spec))
    assert code == 0
    assert f"warning: no trained model in {tmp_path / 'models'}; run `llmrec train {spec}`" in out
    assert f"{spec}: ok" in out
    _, errors, warnings = check(spec)
    assert not errors and any("llmrec train" in w.message for w in warnings)

    code, _, err = cli(capsys, "run", str(spec), "--input", '{"user_id": "u3"}')
    assert code == 4
    assert f"error: node 'ranked': no trained model in {tmp_path / 'models'}; run `llmrec train {spec}` first" in err
    assert "Traceback" not in err

    code, out, err = cli(capsys, "train", str(spec))
    assert code == 0, err
    assert "trained node 'ranked' (rank.lambdamart) on 48 cases" in out and "ndcg@10" in out
    folders = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("ranked-") and f"wrote: {folders[0]}" in out
    assert (folders[0] / "model.txt").is_file()

    code, out, _ = cli(capsys, "validate", str(spec))
    assert code == 0 and "warning" not in out

    code, out, err = cli(capsys, "run", str(spec), "--input", '{"user_id": "u3"}')
    assert code == 0, err
    shown = json.loads(out)["shown"]
    assert shown["user_id"] == "u3" and len(shown["items"]) == 5

    code, out, _ = cli(capsys, "train", str(spec))
    assert code == 0 and "up to date" in out
    code, out, _ = cli(capsys, "train", str(spec), "--node", "ranked", "--force")
    assert code == 0 and "wrote:" in out

    # a changed model config makes the artifact stale: a warning again, naming what changed
    spec.write_text(spec.read_text().replace("n_estimators: 20", "n_estimators: 21"))
    code, out, _ = cli(capsys, "validate", str(spec))
    assert code == 0 and "stale" in out and "n_estimators" in out and f"llmrec train {spec}" in out


def test_train_on_first_use(tmp_path):
    spec = _spec(tmp_path, first_use=True)
    result = run(spec, {"user_id": "u7"})
    assert len(result.outputs["shown"].items) == 5
    assert (tmp_path / "models" / "latest").is_file()


def test_a_temporal_split_trains_on_a_validation_split_carved_from_training(tmp_path, capsys):
    """PROTOCOLS.md: tuning never sees test; upstream nodes learn from the carved training events only."""
    import asyncio

    from llmrec.api import validate
    from llmrec.training import validation_dataset

    spec = _spec(tmp_path, text=SPEC.replace("split: user", "split: temporal"))
    graph = validate(spec)
    data = asyncio.run(graph.resources["data"].cls(graph.resources["data"].config).load())
    carved = validation_dataset(data)
    assert carved.split == "temporal-validation" and carved.train_cases and not carved.test_cases
    assert len(carved.train) + len(carved.test) == len(data.train)
    test_items = {(it.user_id, it.item_id) for it in data.test}
    held = {(it.user_id, it.item_id) for it in carved.test}
    assert not held & test_items and not held & {(it.user_id, it.item_id) for it in carved.train}
    assert validation_dataset(carved) is carved  # carving once
    code, out, err = cli(capsys, "train", str(spec))
    assert code == 0, err
    assert "training cases (temporal-validation)" in err and f"on {len(carved.train_cases)} cases" in out


def test_train_errors(tmp_path, capsys):
    spec = _spec(tmp_path)
    code, _, err = cli(capsys, "train", str(spec), "--node", "profile")
    assert code == 4 and "no trainable node or resource 'profile'" in err and "trainable: ranked" in err

    no_model = write_spec(tmp_path, """
        name: plain
        inputs: {user_id: string}
        resources: {data: {type: dataset, config: {name: demo, split: user}}}
        nodes:
          popular: {type: retrieve.popular, inputs: {interactions: "${resources.data.train}"}}
        outputs: {items: "${popular}"}
    """, "plain.yaml")
    code, _, err = cli(capsys, "train", str(no_model))
    assert code == 4 and "has nothing to train" in err

    no_dataset = _spec(tmp_path, text=SPEC.replace("type: dataset\n        config: {name: demo, split: user, options: {n_users: 60}}",
                                                   "type: demo.dataset").replace("data.train", "data.interactions"))
    code, _, err = cli(capsys, "train", str(no_dataset))
    assert code == 4 and "has no dataset resource" in err

    no_cases = _spec(tmp_path, text=SPEC.replace("split: user", "split: none"))
    code, _, err = cli(capsys, "train", str(no_cases))
    assert code == 4 and "has no training cases" in err and "Traceback" not in err

    with pytest.raises(RunError, match="llmrec train"):
        run(spec, {"user_id": "u1"})


# -- labels from a node of the spec (an LLM labeling the training cases) -------------------------------------------

LABELLED = SPEC.replace("""      ranked:
        type: rank.lambdamart
        config: {model_path: models, k: 5, n_estimators: 20, min_data_in_leaf: 10, train_on_first_use: FIRST_USE}""",
                        """      label:
        type: llm.relevance
        config: {k: 10}
        inputs: {model: "${resources.model}", candidates: "${unseen}", catalog: "${resources.data.catalog}",
                 profile: "${profile}"}
        fallback: {value: null}
      ranked:
        type: rank.lambdamart
        config: {model_path: models, k: 5, n_estimators: 20, min_data_in_leaf: 10, labels: LABELS}""").replace(
    "    nodes:\n", "      model: {type: llm}\n    nodes:\n", 1)


def test_a_label_node_labels_the_training_cases_and_without_a_model_the_dataset_does(tmp_path) -> None:
    import asyncio

    from llmrec.api import validate
    from llmrec.testing import FakeProvider
    from llmrec.training import atrain, collect_examples

    graph = validate(write_spec(tmp_path, LABELLED.replace("LABELS", "label")))

    def grade(request):  # the model grades the first candidate shown 3, the rest 0
        ids = __import__("re").findall(r"id=(\S+) \|", request.messages[-1].content)
        return {"grades": [{"id": i, "grade": 3 if n == 0 else 0} for n, i in enumerate(ids)]}

    fake = FakeProvider(grade)
    data = asyncio.run(graph.resources["data"].cls(graph.resources["data"].config).load())
    cases = list(data.train_cases)[:6]
    examples = asyncio.run(collect_examples(graph, "ranked", cases, {"data": data, "model": fake}))
    assert fake.calls == 6 and all(e.labelled_by == "node" for e in examples)
    for e in examples:
        first = e.inputs["candidates"].items[0].id
        assert e.relevant == frozenset({first}) and e.gains == {first: 3.0}

    offline = asyncio.run(collect_examples(graph, "ranked", cases, {"data": data}))
    assert all(e.labelled_by == "dataset" for e in offline)
    assert [e.relevant for e in offline] == [frozenset(c.relevant) for c in cases]
    reports = asyncio.run(atrain(graph, resources={"data": data, "model": fake}, max_cases=20))
    assert reports[0].node_labelled == 20 and reports[0].written


def test_labels_naming_no_node_is_a_validation_error(tmp_path) -> None:
    from llmrec.testing import errors_of

    errors = errors_of(write_spec(tmp_path, LABELLED.replace("LABELS", "lable")))
    assert len(errors) == 1 and "'labels' names 'lable'" in errors[0] and "Did you mean 'label'?" in errors[0]
