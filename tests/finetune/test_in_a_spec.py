"""A fine-tuned model in a spec: the `llm` resource names `llmrec finetune`'s output folder (relative to the
spec), which stands for its latest verified version; llm.recommend asks it in the format it was trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import llmrec
from llmrec.cli import main
from llmrec.testing import write_spec

from .test_cli import FAST

SPEC = """
    name: movies
    inputs:
      user_id: {type: string, default: "u1"}
    resources:
      data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 10, n_items: 40}}}
      model: {type: llm, config: {provider: transformers, model: ../runs/ft, max_tokens: 96, temperature: 0}}
    nodes:
      profile:
        type: user.profile
        inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
      popular:
        type: retrieve.popular
        config: {k: 8}
        inputs: {interactions: "${resources.data.train}"}
      recs:
        type: llm.recommend
        config: {template_file: recommend_book.j2, n: 2, list_options: 0}
        inputs: {model: "${resources.model}", profile: "${profile}", catalog: "${resources.data.catalog}",
                 candidates: "${popular}"}
    outputs:
      recs: ${recs}
"""


def test_the_spec_runs_on_the_latest_fine_tuned_version(tiny_base, tmp_path, capsys) -> None:
    pytest.importorskip("llguidance")
    (tmp_path / "specs").mkdir()
    spec = write_spec(tmp_path / "specs", SPEC)
    assert main(["finetune", str(spec), "--base", str(tiny_base), "--output", str(tmp_path / "runs" / "ft"),
                 *FAST]) == 0
    capsys.readouterr()
    root = tmp_path / "runs" / "ft"
    latest = root / (root / "latest").read_text().strip()
    result = llmrec.run(spec, {"user_id": "u2"})
    node = result.trace.node("recs")
    assert node.status == "ok" and not result.degraded, node
    assert node.usage.model == str(latest)  # the latest version, resolved against the spec's folder
    assert len(result.outputs["recs"].ids) == 2

    meta = latest / "meta.json"
    data = json.loads(meta.read_text())
    weights = next(name for name in data["files"] if name.endswith(".safetensors"))
    with open(latest / weights, "r+b") as f:  # a corrupted version is refused, naming the file
        f.seek(os.path.getsize(latest / weights) // 2)
        f.write(b"\x00\x01\x02\x03")
    assert main(["run", str(spec)]) == 4
    err = capsys.readouterr().err
    assert weights in err and "corrupt" in err and "Traceback" not in err
