"""`llmrec distill` end to end on a small spec, its refusals, and Ctrl-C."""

from __future__ import annotations

import os
import signal

import pytest

from llmrec.cli import main
from llmrec.reclm import RecLM
from llmrec.testing import write_spec

from .conftest import write_folder

SPEC = """
    name: distil
    inputs: {user_id: string}
    resources:
      data: {type: dataset, config: {name: DATA, split: temporal, test_fraction: 0.15}}
    nodes:
      popular: {type: retrieve.popular, inputs: {interactions: "${resources.data.train}"}}
    outputs: {items: "${popular}"}
"""
FAST = ["--student", "tiny", "--init", "next-item", "--loss", "kl", "--epochs", "2", "--init-epochs", "2",
        "--latency-rounds", "1", "--latency-samples", "10"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "synthetic")


def spec_for(tmp_path, data_folder, text: str = SPEC, name: str = "spec.yaml"):
    return write_spec(tmp_path, text.replace("DATA", str(data_folder)), name)


def test_distill_end_to_end(tmp_path, capsys, data_folder, teacher_folder):
    spec = spec_for(tmp_path, data_folder)
    code, out, err = cli(capsys, "distill", spec, "--teacher", teacher_folder, *FAST)
    assert code == 0, err
    assert "| teacher |" in out and "| from scratch |" in out and "| distilled |" in out
    assert "distilled/teacher accuracy" in out and "Traceback" not in err
    assert "distillation: epoch 1/2" in err and "teacher labels: asking reclm-small-" in err
    folder = tmp_path / "models" / "distilled"
    written = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("distilled-")]
    assert len(written) == 1 and f"wrote: {written[0]}" in out
    assert not (folder / ".checkpoints").exists() or not any((folder / ".checkpoints").iterdir())
    rec = RecLM.load(written[0])  # a plain rec-LM folder
    assert rec.config.size == "tiny" and 0 <= rec.metrics["test_accuracy"] <= 1

    code, out, err = cli(capsys, "distill", spec, "--teacher", teacher_folder, *FAST)
    assert code == 0 and "up to date" in out and "| distilled |" in out and "distillation: epoch" not in err
    code, out, err = cli(capsys, "distill", spec, "--teacher", teacher_folder, *FAST, "--force",
                         "--output", tmp_path / "elsewhere")
    assert code == 0 and "wrote:" in out and (tmp_path / "elsewhere" / "latest").is_file()


PLUGIN = '''
from llmrec import hookimpl
from llmrec.llm.provider import Completion
from llmrec.nodes.llm_tasks import PairAnswer


class GenreStub:
    """Prefers the item of the history's most frequent genre (m0-m19, m20-m39, m40-m59), with scores."""

    name = "genre-stub"

    def __init__(self, model=None, **config):
        self.model = model or "stub"

    async def complete(self, request):
        first, second = request.choices[0].values
        genres = [int(i[1:]) // 20 for i, _ in request.items.history] or [0]
        top = max(set(genres), key=genres.count)
        scores = {i: 2.0 if int(i[1:]) // 20 == top else 0.0 for i in (first, second)}
        winner = first if scores[first] >= scores[second] else second
        return Completion(text=winner, parsed=PairAnswer(winner=winner), scores=scores)

    async def close(self):
        pass


@hookimpl
def llmrec_register_providers(register):
    register("stub.genre", GenreStub)
'''


def test_a_provider_resource_as_teacher(tmp_path, capsys, data_folder):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "stub.py").write_text(PLUGIN)
    text = SPEC.replace("    nodes:", "      judge: {type: llm, config: {provider: stub.genre, model: m}}\n    nodes:")
    spec = spec_for(tmp_path, data_folder, text)
    code, out, err = cli(capsys, "distill", spec, "--teacher", "judge", *FAST)
    assert code == 0, err
    assert "| teacher | genre-stub:m |" in out and "teacher labels: asking genre-stub:m" in err


def test_refusals_are_one_line(tmp_path, capsys, data_folder, teacher_folder):
    spec = spec_for(tmp_path, data_folder)
    code, _, err = cli(capsys, "distill", spec, "--teacher", tmp_path / "no-such-model", *FAST)
    assert code == 4 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: teacher folder {tmp_path / 'no-such-model'} does not exist, and "
                                            f"'{tmp_path / 'no-such-model'}' is not a resource of spec 'distil' "
                                            "(resources: data)")
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "distill", spec, "--teacher", tmp_path / "empty", *FAST)
    assert code == 4 and f"error: {tmp_path / 'empty'} is not a rec-LM folder" in err

    no_dataset = write_spec(tmp_path, """
        name: plain
        inputs: {query: string}
        resources: {items: {type: catalog, config: {path: catalog.jsonl}}}
        nodes:
          found: {type: retrieve.bm25, inputs: {catalog: "${resources.items}", query: "${inputs.query}"}}
        outputs: {items: "${found}"}
    """, "plain.yaml")
    (tmp_path / "catalog.jsonl").write_text('{"id": "a", "title": "A"}\n')
    code, _, err = cli(capsys, "distill", no_dataset, "--teacher", teacher_folder)
    assert code == 4 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: spec 'plain' has no dataset resource to distil on;")

    empty = tmp_path / "empty-data"
    empty.mkdir()
    (empty / "catalog.jsonl").write_text('{"id": "a", "title": "A"}\n{"id": "b", "title": "B"}\n')
    (empty / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n")
    code, _, err = cli(capsys, "distill", spec_for(tmp_path, empty, name="empty.yaml"), "--teacher", teacher_folder)
    assert code == 4 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: dataset resource 'data' has no interactions to distil from"

    one = tmp_path / "one-user"
    one.mkdir()
    (one / "catalog.jsonl").write_text("".join(f'{{"id": "i{k}", "title": "T{k}"}}\n' for k in range(5)))
    (one / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n" +
                                          "".join(f"u1,i{k},5,{k}\n" for k in range(4)))
    code, _, err = cli(capsys, "distill", spec_for(tmp_path, one, name="one.yaml"), "--teacher", teacher_folder)
    assert code == 4 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: dataset resource 'data' has only one user ('u1'): ")

    code, _, err = cli(capsys, "distill", spec, "--teacher", teacher_folder, "--student", "huge")
    assert code == 2 and "--student must be one of tiny, small, medium" in err
    code, _, err = cli(capsys, "distill", spec, "--teacher", teacher_folder, "--loss", "mse")
    assert code == 2 and "--loss:" in err


def test_ctrl_c_stops_at_a_safe_point_with_the_resume_command(tmp_path, capsys, data_folder, teacher_folder,
                                                              monkeypatch):
    """The first Ctrl-C only raises the stop flag; the distiller stops at its next safe point and the command
    exits 130 naming the command that resumes."""
    import llmrec.distill.pipeline as pipeline
    from llmrec.training import TrainingInterrupted

    seen = {}

    def fake_distill(prepared, teacher, student, config, *, should_stop, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs in this (the main) thread before the next line
        seen["stop"] = should_stop()
        raise TrainingInterrupted("distillation stopped after epoch 1")

    monkeypatch.setattr(pipeline, "distill", fake_distill)
    spec = spec_for(tmp_path, data_folder)
    code, _, err = cli(capsys, "distill", spec, "--teacher", teacher_folder, *FAST)
    assert code == 130 and seen["stop"] is True
    assert "stopping at the next safe point (Ctrl-C again to stop now)" in err
    assert (f"interrupted: distillation stopped after epoch 1; nothing half-written was kept; resume with "
            f"`llmrec distill {spec} --teacher {teacher_folder} --student tiny --loss kl") in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
