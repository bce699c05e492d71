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
    assert code == 1
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


def test_train_errors(tmp_path, capsys):
    spec = _spec(tmp_path)
    code, _, err = cli(capsys, "train", str(spec), "--node", "profile")
    assert code == 1 and "no trainable node 'profile'" in err and "trainable: ranked" in err

    no_model = write_spec(tmp_path, """
        name: plain
        inputs: {user_id: string}
        resources: {data: {type: dataset, config: {name: demo, split: user}}}
        nodes:
          popular: {type: retrieve.popular, inputs: {interactions: "${resources.data.train}"}}
        outputs: {items: "${popular}"}
    """, "plain.yaml")
    code, _, err = cli(capsys, "train", str(no_model))
    assert code == 1 and "has no trainable node" in err

    no_dataset = _spec(tmp_path, text=SPEC.replace("type: dataset\n        config: {name: demo, split: user, options: {n_users: 60}}",
                                                   "type: demo.dataset").replace("data.train", "data.interactions"))
    code, _, err = cli(capsys, "train", str(no_dataset))
    assert code == 1 and "has no dataset resource" in err

    temporal = _spec(tmp_path, text=SPEC.replace("split: user", "split: temporal"))
    code, _, err = cli(capsys, "train", str(temporal))
    assert code == 1 and "has no training cases" in err and "Traceback" not in err

    with pytest.raises(RunError, match="llmrec train"):
        run(spec, {"user_id": "u1"})
