"""`llmrec init`: a starter spec a new user can run at once, offline, with the schema its first line names."""

from __future__ import annotations

import json

import jsonschema
import yaml

from llmrec.api import check
from llmrec.cli import main


def test_init_writes_a_spec_that_validates_and_runs(tmp_path, capsys) -> None:
    folder = tmp_path / "myrec"
    assert main(["init", str(folder)]) == 0
    spec, schema = folder / "spec.yaml", folder / "llmrec-spec.schema.json"
    assert spec.read_text().startswith("# yaml-language-server: $schema=llmrec-spec.schema.json\n")
    jsonschema.validate(yaml.safe_load(spec.read_text()), json.loads(schema.read_text()))  # what an editor checks
    assert check(spec)[1] == []
    capsys.readouterr()
    assert main(["run", str(spec), "-i", "user_id=newcomer", "-i", "query=hiking boots", "-i", "k:=3"]) == 0
    recs = json.loads(capsys.readouterr().out)["recommendations"]
    assert recs["cold_start"] is True and len(recs["items"]) == 3
    assert "Hiking" in recs["items"][0]["title"] and recs["items"][0]["reason"] == 'matches your search "hiking boots"'


def test_init_never_overwrites_without_force(tmp_path, capsys) -> None:
    (tmp_path / "spec.yaml").write_text("mine\n")
    assert main(["init", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err and (tmp_path / "spec.yaml").read_text() == "mine\n"
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert check(tmp_path / "spec.yaml")[1] == []
