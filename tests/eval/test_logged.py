"""`llmrec eval SPEC --logged LOG` (issue 14): off-policy evaluation of a spec's variants on the log a real
`llmrec serve` app wrote (in process, the file log store), with clicks simulated from a known position-based click
model, so that each deterministic variant's true value on the logged requests is known exactly: the estimates'
intervals must cover it and the comparison must rank the variants as the truth does. Then what must not work:
deterministic logs (on-policy only), logs of another version of the spec (a warning naming what changed), and
command-line mistakes (one line each, never a traceback)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmrec.cli import main
from llmrec.eval.logged import LOGGED, LogError, PositionModel, evaluate_logged, item_reward, parse_reward
from llmrec.runtime.executor import Runtime
from llmrec.serve.logs import Feedback, read_logs
from llmrec.spec.variants import validate_variant

#: the demo shop's popular items a user has not seen, drawn by rerank.explore (Plackett-Luce), three shown; the
#: variants show a deterministic list instead: the popular order (top) or one item per category (mixed)
SPEC = """
version: 1
name: shop
inputs:
  user_id: {type: string}
  k: {type: integer, default: 3, minimum: 1, maximum: 10}
resources:
  shop: {type: dataset, config: {name: demo, seed: 7, split: user}}
nodes:
  profile:
    type: user.profile
    inputs: {catalog: "${resources.shop.catalog}", interactions: "${resources.shop.train}",
             user_id: "${inputs.user_id}"}
  popular:
    type: retrieve.popular
    config: {k: 8}
    inputs: {interactions: "${resources.shop.train}"}
  unseen:
    type: rerank.filter_seen
    inputs: {candidates: "${popular}", profile: "${profile}"}
  explore:
    type: rerank.explore
    config: {temperature: 0.3, k: 3, seed: 11}
    inputs: {candidates: "${unseen}"}
  mixed:
    type: rerank.diversify
    config: {max_per_category: 1}
    inputs: {candidates: "${unseen}", catalog: "${resources.shop.catalog}"}
  result:
    type: present.items
    inputs: {candidates: "${%s}", catalog: "${resources.shop.catalog}", profile: "${profile}", k: "${inputs.k}"}
outputs:
  recommendations: ${result}
variants:
  top:
    nodes.result.inputs.candidates: "${unseen}"
  mixed:
    nodes.result.inputs.candidates: "${mixed}"
"""

#: the click model: P(click) = THETA[position] * GAMMA(category)
THETA = (1.0, 0.6, 0.4)
REQUESTS = 400


def gamma(category: str) -> float:
    return 0.7 if category == "kitchen" else 0.15


def write(folder: Path, source: str = "explore", name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text((SPEC % source).lstrip("\n"), encoding="utf-8")
    return path


async def serve_and_log(spec: Path, logs: Path, requests: list[dict[str, Any]], *, clicks: Any = None,
                        batch: int = 50) -> dict[str, Any]:
    """Serve ``spec`` in process with the file log store in ``logs``, send ``requests`` to /v1/recommend/batch
    (request ids ``b<n>-<i>``), send ``clicks(position, item)`` (True to click) as feedback; the server's
    provenance stamp is saved beside the log as provenance.json and returned."""
    import httpx

    from llmrec.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(spec=str(spec), reload_interval=0, log_store="file", log_location=str(logs)))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            for _ in range(500):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            events = []
            for n, start in enumerate(range(0, len(requests), batch)):
                r = await client.post("/v1/recommend/batch", json={"requests": requests[start:start + batch]},
                                      headers={"X-Request-Id": f"b{n}"})
                assert r.status_code == 200, r.text
                for res in r.json()["results"]:
                    assert res["status"] == 200, res
                    for k, item in enumerate(res["outputs"]["recommendations"]["items"]):
                        if clicks is not None and clicks(k, item):
                            events.append({"request_id": res["request_id"], "item_id": item["id"], "type": "click"})
            for start in range(0, len(events), 100):
                assert (await client.post("/v1/feedback", json=events[start:start + 100])).status_code == 202
            stamp = (await client.get("/v1/provenance")).json()
            assert app.state.server.logs.flush()
    (logs / "provenance.json").write_text(json.dumps(stamp), encoding="utf-8")
    return stamp


def users(n: int) -> list[dict[str, Any]]:
    return [{"user_id": f"u{1 + i % 120}", "k": 3} for i in range(n)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Explore logs with simulated clicks (seeded), and deterministic logs of the 'top' list."""
    folder = tmp_path_factory.mktemp("logged")
    rng = np.random.default_rng(2024)

    def clicks(position: int, item: dict[str, Any]) -> bool:
        return bool(rng.random() < THETA[position] * gamma(item["category"]))

    spec = write(folder / "explore")
    asyncio.run(serve_and_log(spec, folder / "logs", users(REQUESTS), clicks=clicks))
    fixed = write(folder / "fixed", "unseen")
    asyncio.run(serve_and_log(fixed, folder / "fixed-logs", users(60), clicks=clicks))
    return {"spec": spec, "logs": folder / "logs", "fixed": fixed, "fixed_logs": folder / "fixed-logs"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands keep stamps under ./runs/provenance: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


def true_value(spec: Path, variant: str, logs: Path) -> float:
    """The click model's expected reward per logged row for ``variant``'s deterministic lists."""
    runtime = Runtime(validate_variant(spec, variant))
    total = rows = 0.0
    for imp in read_logs(logs):
        shown = runtime.run_sync(imp.inputs).outputs["recommendations"].items
        for item in imp.items:
            k = item.position - 1
            rows += 1
            total += THETA[k] * gamma(shown[k].category) if k < len(shown) else 0.0
    return total / rows


def test_estimates_cover_the_true_value_and_rank_the_variants_as_the_truth_does(served) -> None:
    truth = {v: true_value(served["spec"], v, served["logs"]) for v in ("top", "mixed")}
    assert truth["top"] - truth["mixed"] > 0.04  # the click model prefers kitchen items, which 'mixed' caps at one
    for weights in ("position", "cascade"):
        report = evaluate_logged([(served["spec"], "top"), (served["spec"], "mixed")], served["logs"],
                                 weights=weights, archive=False)
        assert [p.label for p in report.policies] == [LOGGED, "spec.yaml[top]", "spec.yaml[mixed]"]
        assert report.n_requests == REQUESTS and report.problems() == []
        comp = report.comparison
        for variant, value in truth.items():
            for est in ("ips", "snips", "dr"):
                e = comp.get(f"spec.yaml[{variant}]", est)
                assert e.lower <= value <= e.upper, (weights, variant, est, e.value, e.lower, e.upper, value)
        # the comparison has the truth's sign (the log is seeded: request ids, draws and clicks)
        diff = {d.estimator: d for d in comp.differences if (d.a, d.b) == ("spec.yaml[top]", "spec.yaml[mixed]")}
        assert all(d.value > 0 for d in diff.values()), (weights, diff)
        assert diff["dr"].significant, diff["dr"]
        # the logging policy's own column: weights 1, its value the mean reward the log observed
        observed = [item_reward([f for f in imp.feedback if f.item_id == i.id], {"click": 1.0})
                    for imp in read_logs(served["logs"]) for i in imp.items]
        assert comp.get(LOGGED, "ips").value == pytest.approx(np.mean(observed), abs=1e-12)
        assert comp.get(LOGGED, "ips").weights.ess == pytest.approx(report.n_rows)
    # DR narrows the interval (its reward model is fitted on the other half of the requests)
    e = {est: report.comparison.get("spec.yaml[top]", est) for est in ("ips", "dr")}
    assert e["dr"].upper - e["dr"].lower < e["ips"].upper - e["ips"].lower


def test_the_command_prints_the_table_or_json_with_each_columns_provenance(served, capsys) -> None:
    code = main(["eval", str(served["spec"]), "--logged", str(served["logs"]), "--variants", "top", "--users", "100",
                 "--estimators", "ips,dr", "--bootstrap", "200", "--json", "-", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["requests"] == 100 and data["reward"] == {"click": 1.0} and data["weights"] == "position"
    labels = [p["label"] for p in data["policies"]]
    assert labels == [LOGGED, "spec.yaml", "spec.yaml[top]"]
    assert data["policies"][1]["stochastic_nodes"] == ["explore"]  # evaluated by draws independent of the log's
    top = data["policies"][2]
    assert top["variant"] == "top" and set(top["estimates"]) == {"ips", "dr"} and top["supported"]
    stamp = json.loads((served["logs"] / "provenance.json").read_text())
    assert data["policies"][1]["provenance"]["id"] == stamp["id"]  # the served spec is the spec evaluated
    assert top["provenance"]["id"] != stamp["id"] and data["logged_provenance"] == {stamp["id"]: 100}
    assert {(d["a"], d["b"]) for d in data["differences"]} == {(LOGGED, "spec.yaml"), (LOGGED, "spec.yaml[top]"),
                                                               ("spec.yaml", "spec.yaml[top]")}
    assert (Path("runs") / "provenance" / f"{top['provenance']['id']}.json").is_file()  # kept for replay

    code = main(["eval", str(served["spec"]), "--logged", str(served["logs"]), "--variants", "none", "--users", "40",
                 "--reward", "click=2", "--weights", "cascade", "--bootstrap", "100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "40 requests" in out and "reward click=2" in out and "cascade weights" in out and "DR" in out
    assert "Traceback" not in out + err


def test_deterministic_logs_support_only_the_policy_that_was_logged(served, capsys) -> None:
    report = evaluate_logged([served["spec"]], served["fixed_logs"], archive=False, n_bootstrap=200)
    assert report.deterministic_logger
    by = {p.label: p for p in report.policies}
    assert by["spec.yaml[top]"].unsupported is None  # what the fixed spec showed: on-policy
    top = report.comparison.get("spec.yaml[top]", "ips")
    assert top.value == report.comparison.get(LOGGED, "ips").value and top.weights.matched == report.n_rows
    for label in ("spec.yaml", "spec.yaml[mixed]"):
        assert "deterministic (every logged propensity is 1.0)" in by[label].unsupported
    assert set(report.problems()) == {"spec.yaml", "spec.yaml[mixed]"}
    assert not any("spec.yaml[mixed]" in (d.a, d.b) for d in report.comparison.differences)

    code = main(["eval", str(served["spec"]), "--logged", str(served["fixed_logs"]), "--bootstrap", "100",
                 "--variants", "mixed"])
    out, err = capsys.readouterr()
    assert code == 4
    assert "unsupported" in out and "only evaluate a policy that shows exactly what was logged" in " ".join(out.split())
    assert "no estimate for: spec.yaml, spec.yaml[mixed]" in err and "Traceback" not in out + err
    code = main(["eval", str(served["spec"]), "--logged", str(served["fixed_logs"]), "--bootstrap", "100",
                 "--variants", "mixed", "--allow-unsupported", "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    mixed = next(p for p in json.loads(out)["policies"] if p["label"] == "spec.yaml[mixed]")
    assert not mixed["supported"] and mixed["estimates"]["ips"]["value"] is not None


def test_logs_of_another_version_of_the_spec_warn_naming_what_changed(served, tmp_path) -> None:
    edited = tmp_path / "edited" / "spec.yaml"
    edited.parent.mkdir()
    edited.write_text(served["spec"].read_text().replace("config: {k: 8}", "config: {k: 9}"), encoding="utf-8")
    report = evaluate_logged([edited], served["logs"], variants=False, n_bootstrap=100, limit=60)
    (warning,) = [w for w in report.warnings if "provenance" in w]
    assert "60 logged requests were served by spec 'shop'" in warning
    assert "changed: the spec's settings" in warning
    # without the logged stamp's components (no provenance.json, no archive), it says so and how to fix it
    bare = tmp_path / "bare-logs"
    shutil.copytree(served["logs"], bare)
    for kept in bare.glob("provenance*.json"):  # what the operator saved and what the server wrote
        kept.unlink()
    report = evaluate_logged([edited], bare, variants=False, n_bootstrap=100, limit=60, archive=False)
    (warning,) = [w for w in report.warnings if "provenance" in w]
    assert "what changed is unknown" in warning and "GET /v1/provenance" in warning
    # a spec of another name: its inputs are still replayed, with a warning
    other = tmp_path / "other.yaml"
    other.write_text(served["spec"].read_text().replace("name: shop", "name: elsewhere"), encoding="utf-8")
    report = evaluate_logged([other], served["logs"], variants=False, n_bootstrap=100, limit=30, archive=False)
    assert any("which is none of the specs evaluated (elsewhere)" in w for w in report.warnings)


def test_command_line_mistakes_are_one_line_errors(served, tmp_path, capsys, monkeypatch) -> None:
    spec = str(served["spec"])
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["--logged", str(tmp_path / "nowhere")], 2, "no log folder at"),
        (["--logged", str(a_file)], 2, "is a file, not a log folder"),
        (["--logged", "sqlit:x.db"], 2, "unknown log store 'sqlit'; did you mean 'sqlite'?"),
        (["--logged", str(tmp_path / "none.db")], 2, "no SQLite log at"),
        (["--logged", str(empty)], 4, "holds no impressions"),
        (["--logged", str(served["logs"]), "--since", "2999-01-01T00:00:00Z"], 4, "is at or after --since"),
        (["--logged", str(served["logs"]), "--since", "yesterday"], 2, "is not a time"),
        (["--logged", str(served["logs"]), "--reward", "like"], 2, "'like' is not a feedback type"),
        (["--logged", str(served["logs"]), "--weights", "slate"], 2, "'slate' is not one of position, cascade"),
        (["--logged", str(served["logs"]), "--estimators", "ips,magic"], 2, "'magic': choose from"),
        (["--logged", str(served["logs"]), "--dataset", "demo"], 2, "does not apply with --logged"),
        (["--logged", str(served["logs"]), "--variants", "nope"], 2, "no spec declares variant 'nope'"),
        (["--logged", str(served["logs"]), "--output", "nothing"], 4, "nothing to evaluate in output 'nothing'"),
        (["--reward", "click"], 2, "applies with --logged LOG only"),
    ]
    for args, code, expected in cases:
        assert main(["eval", spec, *args, "-q"]) == code, args
        out, err = capsys.readouterr()
        assert expected in " ".join(err.split()), (args, err)
        assert "Traceback" not in out + err

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("llmrec.eval.logged.evaluate_logged", interrupted)  # the command imports it when it runs
    assert main(["eval", spec, "--logged", str(served["logs"])]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_rewards_and_the_reward_model_are_what_the_docs_say() -> None:
    assert parse_reward("click") == {"click": 1.0}
    assert parse_reward("click=1, purchase=5,dismissal=-1") == {"click": 1.0, "purchase": 5.0, "dismissal": -1.0}
    with pytest.raises(ValueError, match="weight of 'click' must be a number"):
        parse_reward("click=lots")

    def event(kind: str, value: float | None = None, ts: float = 1.0) -> Feedback:
        return Feedback("r", "i", kind, value, None, None, ts, ts, True)

    weights = {"click": 1.0, "purchase": 5.0, "rating": 0.5}
    assert item_reward([event("click"), event("click"), event("purchase", 20.0)], weights) == 6.0  # each type once
    assert item_reward([event("rating", 4.0, ts=1.0), event("rating", 2.0, ts=2.0)], weights) == 1.0  # the last
    assert item_reward([event("dismissal")], weights) == 0.0

    # the position-based model with shrinkage: position factors over the mean, item rates shrunk toward it
    position = np.array([0, 1, 0, 1, 0, 1])
    action = np.array([0, 0, 1, 1, 2, 2])
    reward = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    model = PositionModel.fit(position, action, reward, 2)
    g = reward.mean()
    theta = (np.array([2.0, 1.0]) + 10 * g) / (3 + 10) / g
    assert np.allclose(model.theta, theta)
    assert model.gamma[0] == pytest.approx((2 + 10 * g) / (theta.sum() + 10))
    assert model.predict(np.array([7, -1]), np.array([1, 0])).tolist() == pytest.approx([theta[1] * g, 0.0])
    assert not math.isnan(model.mean)


def test_the_api_refuses_what_it_cannot_evaluate(served, tmp_path) -> None:
    with pytest.raises(LogError, match="no log folder") as info:
        evaluate_logged([served["spec"]], tmp_path / "missing")
    assert info.value.usage
    with pytest.raises(ValueError, match="weights must be one of"):
        evaluate_logged([served["spec"]], served["logs"], weights="slate")


def test_eval_cases_carry_the_provenance_stamp_that_serve_puts_on_its_answers(served, tmp_path, capsys) -> None:
    results = tmp_path / "cases.jsonl"
    code = main(["eval", str(served["spec"]), "--variants", "none", "--users", "6", "--k", "3", "--results",
                 str(results), "--out", str(tmp_path / "store"), "--json", "-", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (column,) = json.loads(out)["results"]
    served_stamp = json.loads((served["logs"] / "provenance.json").read_text())
    assert column["provenance"] == served_stamp  # the same spec and data: the very stamp serve computed
    cases = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(cases) == 6 and {c["provenance"] for c in cases} == {served_stamp["id"]}
    (store,) = (tmp_path / "store").glob("*.jsonl")
    header, *stored = [json.loads(line) for line in store.read_text().splitlines()]
    assert header["header"]["provenance"] == served_stamp["id"]
    assert [c["provenance"] for c in stored] == [served_stamp["id"]] * 6
    # the resume store still resumes: the same command reuses every case
    code = main(["eval", str(served["spec"]), "--variants", "none", "--users", "6", "--k", "3",
                 "--out", str(tmp_path / "store"), "--json", "-", "-q"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["results"][0]["reused_cases"] == 6, err
