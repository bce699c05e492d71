"""The training contract as a third-party plugin author meets it: a trainable node in a local plugin, trained by
`llmrec train` on the dataset split, started from its verified artifact, resumable after Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import llmrec
from llmrec.cli import main
from llmrec.testing import write_spec

PLUGIN = '''
import json
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from llmrec import hookimpl
from llmrec.node import NodeType, SpecPath, StartContext
from llmrec.training import TrainContext, TrainOutput, data_hash
from llmrec.types import Candidates, ScoredItem


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_path: SpecPath
    min_count: int = 1
    train_on_first_use: bool = False


class MostLiked(NodeType):
    """Items by how many training users rated them 4 or more: learned once, read from its artifact."""

    name = "acme.most_liked"
    Config = Config
    trains_on: ClassVar[str] = "dataset"

    @classmethod
    def training_params(cls, config, target):
        return {"min_count": config.min_count}

    @classmethod
    def fit(cls, config, ctx: TrainContext) -> TrainOutput:
        counts = {}
        for it in ctx.dataset.train:
            if (it.rating or 0) >= 4:
                counts[it.item_id] = counts.get(it.item_id, 0) + 1
        kept = {k: v for k, v in counts.items() if v >= config.min_count}
        ctx.staging.write("counts.json", json.dumps(kept))
        ctx.progress(f"counted {len(kept)} items")
        return TrainOutput(data_hash=data_hash(ctx.dataset), metrics={"items": len(kept)},
                           rows=len(ctx.dataset.train))

    async def start(self, ctx: StartContext) -> None:
        artifact = await ctx.artifact()
        self.counts = json.loads(artifact.path("counts.json").read_text())

    async def run(self, k: int = 5) -> Candidates:
        top = sorted(self.counts, key=lambda i: (-self.counts[i], i))[:k]
        return Candidates(items=[ScoredItem(id=i, score=float(self.counts[i])) for i in top], source="liked")


@hookimpl
def llmrec_register_node_types(register):
    register(MostLiked)
'''

SPEC = """
    name: liked
    inputs: {}
    resources:
      data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 40}}}
    nodes:
      liked:
        type: acme.most_liked
        config: {model_path: models, train_on_first_use: FIRST_USE}
    outputs: {items: "${liked}"}
"""


def _setup(tmp_path: Path, first_use: bool) -> Path:
    (tmp_path / "plugins").mkdir(parents=True, exist_ok=True)
    (tmp_path / "plugins" / "acme.py").write_text(PLUGIN)
    return write_spec(tmp_path, SPEC.replace("FIRST_USE", "true" if first_use else "false"))


def test_a_plugin_node_trains_through_the_same_contract(tmp_path, capsys) -> None:
    spec = _setup(tmp_path, first_use=False)
    assert main(["validate", str(spec)]) == 0
    assert "no trained model" in capsys.readouterr().out
    assert main(["run", str(spec)]) == 4
    assert f"run `llmrec train {spec}` first" in capsys.readouterr().err

    assert main(["train", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "trained node 'liked' (acme.most_liked)" in out and "counted" in err
    assert "temporal-validation" in err  # learned from the validation split carved from training, never test
    folder = next((tmp_path / "models").glob("liked-*"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["trainer"] == "acme.most_liked" and meta["params"] == {"min_count": 1}
    assert set(meta["files"]) == {"counts.json"} and meta["metrics"]["items"] > 0

    items = llmrec.run(spec, {}).outputs["items"].items
    assert len(items) == 5 and items[0].score >= items[-1].score

    assert main(["train", str(spec)]) == 0  # same params, same data: not trained again
    out, err = capsys.readouterr()
    assert "is up to date" in err and "counted" not in err
    assert main(["train", str(spec), "--force"]) == 0
    assert "counted" in capsys.readouterr().err

    (folder / "counts.json").write_text("{}")  # edited by hand: the checksum no longer matches
    assert main(["run", str(spec)]) == 4
    err = capsys.readouterr().err
    assert "counts.json" in err and "corrupt" in err and "--force" in err and "Traceback" not in err


def test_train_on_first_use_trains_a_corrupt_or_missing_artifact_again(tmp_path, capsys) -> None:
    spec = _setup(tmp_path, first_use=True)
    assert main(["validate", str(spec)]) == 0
    assert "warning" not in capsys.readouterr().out
    first = llmrec.run(spec, {}).outputs["items"].ids
    assert "training it now" in capsys.readouterr().err
    folder = next((tmp_path / "models").glob("liked-*"))
    (folder / "counts.json").write_bytes(b"\x00")
    assert llmrec.run(spec, {}).outputs["items"].ids == first


def test_a_finished_training_leaves_no_resume_checkpoint(tmp_path) -> None:
    """A checkpoint is for resuming an interrupted run; once the artifact is committed it is removed, so that
    `llmrec train --force` trains from the start instead of resuming a finished run."""
    from llmrec.api import validate
    from llmrec.training import targets, train

    spec = write_spec(tmp_path, """
        name: ckpt
        inputs: {user_id: {type: string, default: "u1"}}
        resources:
          data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 20, n_items: 40}}}
          model: {type: llm, config: {provider: reclm, model: models, extra: {size: tiny, max_epochs: 2, threads: 1}}}
        nodes:
          pick:
            type: llm.recommend
            inputs: {model: "${resources.model}", catalog: "${resources.data.catalog}"}
        outputs: {items: "${pick}"}
    """)
    train(spec)
    t = targets(validate(spec))[0]
    folder = t.store().checkpoint_dir(t.params)
    assert not folder.exists()
    reports = train(spec, force=True)
    assert reports[0].metrics["epochs"] == 2  # trained again from epoch 1, not resumed at the end
