"""llmrec.progress: a transient bar on a terminal's stderr for long steps; silent otherwise, and never on stdout."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from llmrec import progress
from llmrec.cli import main
from llmrec.embed import Embedder
from llmrec.testing import write_spec


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    monkeypatch.delenv(progress.FORCE_ENV, raising=False)
    before = progress.set_quiet(False)
    yield
    progress.set_quiet(before)
    progress.set_console(None)


@pytest.fixture
def terminal():
    """A terminal-like console over a StringIO: what a user's terminal would get."""
    buf = io.StringIO()
    progress.set_console(Console(file=buf, force_terminal=True, width=120))
    return buf


def test_a_bar_shows_counts_and_a_spinner_step_shows_its_description(terminal) -> None:
    with progress.step("embedding catalog", total=3) as advance:
        advance()
        advance(2)
    with progress.step("loading model all-MiniLM-L6-v2"):
        pass
    out = terminal.getvalue()
    assert "embedding catalog" in out and "3/3" in out
    assert "loading model all-MiniLM-L6-v2" in out
    assert "\x1b[?25h" in out  # the cursor is given back when the last step ends


def test_silent_when_stderr_is_not_a_terminal(capsys) -> None:
    assert not progress.enabled()
    with progress.step("embedding catalog", total=3) as advance:
        advance(3)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("how", ["set_quiet", "LLMREC_QUIET", "LLMREC_PROGRESS=0"])
def test_quiet_wins_even_on_a_terminal(terminal, monkeypatch, how) -> None:
    if how == "set_quiet":
        progress.set_quiet(True)
    elif how == "LLMREC_QUIET":
        monkeypatch.setenv(progress.QUIET_ENV, "1")
    else:
        monkeypatch.setenv(progress.FORCE_ENV, "0")
    with progress.step("embedding catalog", total=3) as advance:
        advance(3)
    assert terminal.getvalue() == ""


def test_llmrec_progress_1_forces_a_bar_on_stderr_that_is_not_a_terminal(monkeypatch, capsys) -> None:
    monkeypatch.setenv(progress.FORCE_ENV, "1")
    with progress.step("training rank.lambdamart 'ranked' (first use)"):
        pass
    out, err = capsys.readouterr()
    assert out == "" and "training rank.lambdamart 'ranked' (first use)" in err


def test_advance_from_worker_threads_and_nested_steps(terminal) -> None:
    async def work() -> None:
        with progress.step("collecting inputs", total=1000) as advance:
            with progress.step("loading dataset resource 'data'"):  # nested: a second line of the same display
                await asyncio.gather(*(asyncio.to_thread(lambda: [advance() for _ in range(100)]) for _ in range(10)))

    asyncio.run(work())
    out = terminal.getvalue()
    assert "1000/1000" in out and "loading dataset resource 'data'" in out
    with progress.step("again", total=1) as advance:  # the display was closed and opens again
        advance()
    assert "again" in terminal.getvalue()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_real_terminal_nested_steps_show_while_stderr_prints_above_the_bar(monkeypatch) -> None:
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    with progress.step("training rank.lambdamart 'ranked' (first use)"):
        assert sys.stderr is not tty  # rich's proxy: what is written to stderr is printed above the bar
        print("a log line", file=sys.stderr)
        with progress.step("embedding catalog", total=300) as advance:
            assert advance is not progress._noop and progress._open == 2  # joined the bar (not silenced)
            advance(300)
            progress._bar.refresh()
    assert sys.stderr is tty
    out = tty.getvalue()
    assert "a log line" in out and "embedding catalog" in out and "300/300" in out


def test_steps_opened_and_closed_in_several_threads(terminal) -> None:
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with progress.step(f"step {i}", total=50) as advance:
                for _ in range(50):
                    advance()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and progress._bar is None and progress._open == 0


def test_silent_steps_import_no_rich() -> None:
    code = ("import sys\nfrom llmrec import progress\n"
            "with progress.step('x', total=3) as advance:\n    advance(3)\n"
            "print('rich' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False" and proc.stderr == ""


# -- the embedder -----------------------------------------------------------------------------------------------


class HashEmbedder(Embedder):
    """An Embedder over a stand-in encoder (llmrec.encoders.Encoder): each text hashed into a vector,
    ``batch_size`` texts per batch, reporting each batch as the real encoders do."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__("hash", *args, **kwargs)

    def load(self) -> Embedder:
        self._model, self._version, self._dim, self._path = _HashEncoder(), "hash-v1", 8, Path(".")
        return self


class _HashEncoder:
    dim, backend = 8, "hash"

    def encode(self, texts, batch_size, normalize, on_batch=None):
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = np.array([[(hash(t) >> s) % 7 + 1 for s in range(8)] for t in texts[start:start + batch_size]],
                             dtype=np.float32)
            if on_batch is not None:
                on_batch(len(batch))
            rows.append(batch / np.linalg.norm(batch, axis=1, keepdims=True))
        return np.concatenate(rows) if rows else np.zeros((0, 8), np.float32)


def test_embedding_many_texts_shows_a_bar_moving_per_batch_with_the_same_vectors(tmp_path, terminal,
                                                                                  monkeypatch) -> None:
    texts = [f"item {i}" for i in range(150)]
    plain = HashEmbedder(cache_dir=tmp_path / "a", batch_size=64).embed(texts, progress=False)
    assert terminal.getvalue() == ""
    shown = HashEmbedder(cache_dir=tmp_path / "b", batch_size=64).embed(texts, label="catalog")
    assert np.array_equal(plain, shown)
    out = terminal.getvalue()
    assert "embedding catalog (hash)" in out and "150/150" in out

    steps: list[tuple[str, object, list]] = []
    real_step = progress.step

    def recording(description, total=None):  # what the bar is told, frame rate aside
        steps.append((description, total, []))
        return _Recorded(real_step(description, total), steps[-1][2])

    monkeypatch.setattr(progress, "step", recording)
    HashEmbedder(cache_dir=tmp_path / "c", batch_size=64).embed(texts, label="catalog")
    assert steps == [("embedding catalog (hash)", 150, [64, 64, 22])]  # batch by batch within one encode call
    terminal.seek(0)
    terminal.truncate()
    HashEmbedder(cache_dir=tmp_path / "c").embed(["one query"])  # a few texts: no bar
    assert terminal.getvalue() == ""


class _Recorded:
    def __init__(self, inner, calls: list) -> None:
        self.inner, self.calls = inner, calls

    def __enter__(self):
        advance = self.inner.__enter__()

        def recorded(n=1):
            self.calls.append(n)
            advance(n)

        return recorded

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


# -- the commands -------------------------------------------------------------------------------------------------

SPEC = """
    name: greet
    inputs:
      user: {type: string}
    nodes:
      hello:
        type: text.template
        config: {template: "hello {{ who }}"}
        inputs: {who: "${inputs.user}"}
    outputs:
      text: ${hello}
"""


@pytest.fixture
def slow_run(monkeypatch):
    """`llmrec run` whose run opens a progress step, as embedding or first-use training would."""
    from llmrec.runtime.executor import Runtime

    original = Runtime.run_sync

    def run_sync(self, *args, **kwargs):
        with progress.step("pretending to embed", total=2) as advance:
            advance(2)
            return original(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "run_sync", run_sync)


@pytest.mark.parametrize("flag", ["--quiet", "-q", None])
def test_run_quiet_hides_the_bar_and_stdout_never_changes(tmp_path, capsys, monkeypatch, slow_run, flag) -> None:
    spec = write_spec(tmp_path, SPEC)
    monkeypatch.setenv(progress.FORCE_ENV, "1")  # stderr is captured, not a terminal: force the bar
    args = ["run", str(spec), "-i", "user=ann"] + ([flag] if flag else [])
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"text": "hello ann"}
    assert ("pretending to embed" in err) is (flag is None)
    assert not progress.is_quiet()  # --quiet lasts one command


def test_run_is_silent_on_a_pipe_and_with_llmrec_quiet(tmp_path, capsys, monkeypatch, slow_run) -> None:
    spec = write_spec(tmp_path, SPEC)
    assert main(["run", str(spec), "-i", "user=ann"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.FORCE_ENV, "1")
    monkeypatch.setenv(progress.QUIET_ENV, "1")
    assert main(["run", str(spec), "-i", "user=ann"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"text": "hello ann"} and err == ""


TRAIN_SPEC = """
    name: ltr
    inputs:
      user_id: string
    resources:
      data:
        type: dataset
        config: {name: demo, split: user, options: {n_users: 40}}
    nodes:
      profile:
        type: user.profile
        inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
      popular:
        type: retrieve.popular
        config: {k: 40}
        inputs: {interactions: "${resources.data.train}"}
      ranked:
        type: rank.lambdamart
        config: {model_path: models, k: 5, n_estimators: 10, min_data_in_leaf: 10, train_on_first_use: true}
        inputs:
          candidates: ${popular}
          catalog: ${resources.data.catalog}
          profile: ${profile}
          interactions: ${resources.data.train}
    outputs:
      ranked: ${ranked}
"""


def test_first_use_training_and_train_show_their_steps_and_quiet_hides_them(tmp_path, capsys, monkeypatch) -> None:
    spec = write_spec(tmp_path, TRAIN_SPEC)
    monkeypatch.setenv(progress.FORCE_ENV, "1")
    assert main(["run", str(spec), "-i", "user_id=u1"]) == 0
    out, err = capsys.readouterr()
    assert "ranked" in json.loads(out)
    assert "training rank.lambdamart 'ranked' (first use)" in err
    assert "collecting inputs of node 'ranked'" in err

    assert main(["train", str(spec), "--force", "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("trained node 'ranked' (rank.lambdamart)")  # stdout: the report, as without -q
    assert err == ""


def test_eval_shows_each_spec_as_a_step_of_the_same_display(tmp_path, terminal) -> None:
    """`llmrec eval` draws its per-spec bars through llmrec.progress (so --quiet and LLMREC_PROGRESS apply), and
    evaluate(progress=False) draws nothing."""
    from llmrec.eval.runner import evaluate

    spec = write_spec(tmp_path, """
        name: pop
        inputs: {user_id: {type: string}}
        resources:
          data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 12, n_items: 40}}}
        nodes:
          top: {type: retrieve.popular, inputs: {interactions: "${resources.data.train}"}}
        outputs: {items: "${top}"}
    """)
    report = evaluate([str(spec)], ks=(5,), output="items")
    out = terminal.getvalue()
    cases = report.results[0].n_cases
    assert "evaluating pop" in out and f"{cases}/{cases}" in out
    terminal.truncate(0)
    terminal.seek(0)
    evaluate([str(spec)], ks=(5,), output="items", progress=False)
    assert terminal.getvalue() == ""
