"""Serving logs (issue 14): provenance stamps on every answer, impressions logged to a real store (JSONL files,
SQLite), feedback validated and joined, a failing store that never breaks a request, and rerank.explore's
propensities (exact sums, and frequencies over seeded draws)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from llmrec.nodes.rerank import Explore, explore_draw, plackett_luce_marginals, plackett_luce_weights
from llmrec.serve.logs import FileLogStore, LogWriter, read_logs, stamp_changes
from llmrec.types import Candidates, ScoredItem

from .conftest import SHOP

#: the demo shop spec with a stochastic ranking before the presented list
EXPLORE = SHOP.replace('''  result:
    type: present.items
    inputs: {candidates: "${unseen}",''', '''  explore:
    type: rerank.explore
    config: {temperature: 0.05, k: 8, seed: 11}
    inputs: {candidates: "${unseen}"}
  result:
    type: present.items
    inputs: {candidates: "${explore}",''')

#: the demo shop spec with a text.template node reading a template file
TEMPLATED = SHOP.replace('''outputs:
''', '''  note:
    type: text.template
    config: {template_file: note.j2}
    inputs: {user_id: "${inputs.user_id}"}
outputs:
  note: ${note}
''')

BROKEN_STORE = '''
import llmrec


class Broken:
    """A log store whose every write fails."""

    def __init__(self, location=None, **options):
        self.location = location

    def append_impressions(self, records):
        raise OSError("disk on fire")

    def append_feedback(self, records):
        raise OSError("disk on fire")

    def impressions(self):
        return iter(())

    def feedback(self):
        return iter(())

    def close(self):
        pass


@llmrec.hookimpl
def llmrec_register_log_stores(register):
    register("broken", Broken)
'''


def _store(kind: str, tmp_path: Path) -> dict[str, str]:
    where = tmp_path / ("logs" if kind == "file" else "logs.db")
    return {"log_store": kind, "log_location": str(where)}


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_answers_are_logged_with_positions_propensities_and_provenance_and_feedback_joins(
        serve, tmp_path, kind) -> None:
    options = _store(kind, tmp_path)
    async with serve(**options) as client:
        r = await client.post("/v1/recommend", json={"user_id": "u1", "k": 3}, headers={"X-Session-Id": "s-1"})
        assert r.status_code == 200 and set(r.json()) == {"outputs", "degraded", "session_id", "turn"}
        rid, prov = r.headers["X-Request-Id"], r.headers["X-Llmrec-Provenance"]
        stamp = (await client.get("/v1/provenance")).json()
        assert stamp["id"] == prov and stamp["spec_name"] == "small" and stamp["datasets"]["shop"]
        shown = [i["id"] for i in r.json()["outputs"]["recommendations"]["items"]]
        mine = await client.post("/v1/recommend", json={"user_id": "u2", "k": 2}, headers={"X-Request-Id": "abc-7"})
        assert mine.headers["X-Request-Id"] == "abc-7"
        batch = (await client.post("/v1/recommend/batch", json={"requests": [{"user_id": "u3", "k": 1},
                                                                              {"k": 1}]})).json()
        assert [x["status"] for x in batch["results"]] == [200, 422]
        batch_rid = batch["results"][0]["request_id"]

        events = [{"request_id": rid, "item_id": shown[1], "type": "click", "position": 2},
                  {"request_id": rid, "item_id": shown[0], "type": "rating", "value": 4.5,
                   "timestamp": "2024-05-01T12:00:00Z"},
                  {"request_id": rid, "item_id": "not-shown", "type": "dismissal"},
                  {"request_id": "nobody-asked", "item_id": shown[0], "type": "purchase", "value": 19.99}]
        fb = await client.post("/v1/feedback", json={"events": events})
        assert fb.status_code == 202 and fb.json() == {"accepted": 4}
        one = await client.post("/v1/feedback", json={"request_id": batch_rid, "item_id": "x", "type": "click"})
        assert one.status_code == 202
        assert client.server.logs.flush()
        metrics = (await client.get("/metrics")).text
    assert 'llmrec_log_records_total{kind="impressions",outcome="written"} 3.0' in metrics
    assert 'llmrec_log_records_total{kind="feedback",outcome="written"} 5.0' in metrics
    assert 'llmrec_feedback_events_total{type="click"} 2.0' in metrics

    reader = read_logs(f"{kind}:{options['log_location']}")
    logged = {imp.request_id: imp for imp in reader}
    assert set(logged) == {rid, "abc-7", batch_rid}
    imp = logged[rid]
    assert imp.provenance == prov and imp.spec == "small" and imp.variant is None
    assert imp.user_id == "u1" and imp.session_id == "s-1" and imp.endpoint == "recommend"
    assert imp.inputs["user_id"] == "u1" and imp.inputs["k"] == 3
    assert imp.ids == shown
    assert [(i.output, i.position, i.propensity, i.cascade) for i in imp.items] == [
        ("recommendations", p, 1.0, 1.0) for p in (1, 2, 3)]
    assert imp.policy is None and imp.degraded is False
    assert [(f.type, f.item_id, f.shown) for f in imp.feedback] == [
        ("click", shown[1], True), ("rating", shown[0], True), ("dismissal", "not-shown", False)]
    rating = imp.feedback[1]
    assert rating.value == 4.5 and rating.ts == 1714564800.0 and rating.received > rating.ts
    assert logged[batch_rid].endpoint == "batch" and [f.item_id for f in logged[batch_rid].feedback] == ["x"]
    assert [(f.request_id, f.type) for f in reader.unmatched] == [("nobody-asked", "purchase")]

    kept = Path(options["log_location"]) if kind == "file" else tmp_path  # beside the log, for llmrec replay
    assert json.loads((kept / f"provenance-{prov}.json").read_text(encoding="utf-8")) == stamp
    if kind == "sqlite":  # a real database file, in WAL mode, that SQLite's own JSON functions can read
        with sqlite3.connect(options["log_location"]) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            ids = db.execute("SELECT json_extract(record, '$.items[0].id') FROM impressions WHERE request_id = ?",
                             (rid,)).fetchall()
            assert ids == [(shown[0],)]
            assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 5
    else:  # one JSONL segment per kind, a record a line
        folder = Path(options["log_location"])
        assert len(list(folder.glob("impressions-*.jsonl"))) == 1 == len(list(folder.glob("feedback-*.jsonl")))


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog) -> None:
    store = FileLogStore(tmp_path)
    record = {"v": 1, "kind": "impression", "request_id": "r1", "ts": 1.0, "items": []}
    store.append_impressions([record, {**record, "request_id": "r2"}])
    store.close()
    segment = next(tmp_path.glob("impressions-*.jsonl"))
    with segment.open("ab") as fh:
        fh.write(b'{"v": 1, "kind": "impression", "request_id": "r3", "ts"')  # the writer died mid-record
    caplog.set_level(logging.WARNING, logger="llmrec.serve.logs")
    reader = read_logs(tmp_path)
    assert [i.request_id for i in reader] == ["r1", "r2"]
    assert reader.skipped == 1 and "torn last line" in caplog.text


def test_rotation_starts_a_new_segment_and_readers_read_them_in_order(tmp_path) -> None:
    store = FileLogStore(tmp_path, max_bytes=150)
    for n in range(12):
        store.append_impressions([{"v": 1, "request_id": f"r{n:02d}", "ts": float(n), "items": []}])
    store.close()
    assert len(list(tmp_path.glob("impressions-*.jsonl"))) > 2
    assert all(p.stat().st_size <= 150 for p in tmp_path.glob("impressions-*.jsonl"))
    assert [i.request_id for i in read_logs(tmp_path)] == [f"r{n:02d}" for n in range(12)]


BAD_FEEDBACK = [
    ({"item_id": "i1", "type": "click"}, "request_id"),
    ({"request_id": "r1", "item_id": "i1", "type": "like"}, "type"),
    ({"request_id": "r1", "item_id": "i1", "type": "rating"}, "value"),
    ({"request_id": "r1", "item_id": "i1", "type": "rating", "value": 11}, "value"),
    ({"request_id": "r1", "item_id": "i1", "type": "click", "value": 1}, "value"),
    ({"request_id": "r1", "item_id": "i1", "type": "purchase", "value": -3}, "value"),
    ({"request_id": "r1", "item_id": "i1", "type": "click", "position": 0}, "position"),
    ({"request_id": "r1", "item_id": "i1", "type": "click", "timestamp": "yesterday"}, "timestamp"),
    ({"request_id": "r 1", "item_id": "i1", "type": "click"}, "request_id"),
    ({"request_id": "r1", "item_id": "i1", "type": "click", "colour": "red"}, "colour"),
    ([{"request_id": "r1", "item_id": "i1", "type": "click"}, {"request_id": "r1", "item_id": "i1"}], "1.type"),
    ({"events": [{"request_id": "r1", "type": "click"}]}, "events.0.item_id"),
    ([{"request_id": "r1", "item_id": "i1", "type": "click"}, "click"], "1"),
]


async def test_bad_feedback_is_a_4xx_naming_the_field_and_nothing_is_logged(serve, tmp_path) -> None:
    async with serve(**_store("file", tmp_path), api_key="k") as client:
        auth = {"X-API-Key": "k"}
        assert (await client.post("/v1/feedback", json={"request_id": "r1", "item_id": "i", "type": "click"})
                ).status_code == 401
        for body, field in BAD_FEEDBACK:
            r = await client.post("/v1/feedback", json=body, headers=auth)
            assert r.status_code == 422, (body, r.text)
            error = r.json()["error"]
            assert error["type"] == "invalid_feedback" and error["field"] == field, (body, error)
            assert field in error["message"] and "Traceback" not in r.text
        r = await client.post("/v1/feedback", json={"request_id": "r1", "item_id": "i1", "type": "rating",
                                                    "value": 11}, headers=auth)
        assert "between 0 and 5" in r.json()["error"]["message"]
        for body, status, field in (("click", 400, None), ([], 400, None), ({"events": [], "x": 1}, 400, "events"),
                                    ([{"request_id": "r", "item_id": "i", "type": "click"}] * 101, 413, None)):
            r = await client.post("/v1/feedback", json=body, headers=auth)
            assert r.status_code == status and r.json()["error"]["field"] == field, (body, r.text)
        client.server.logs.flush()
        assert list(read_logs(tmp_path / "logs")) == [] and not read_logs(tmp_path / "logs").unmatched
    async with serve() as client:  # no log store: no feedback either, and a clear message why
        r = await client.post("/v1/feedback", json={"request_id": "r1", "item_id": "i1", "type": "click"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "logging_off"
        assert "--log-dir" in r.json()["error"]["message"]


async def test_a_store_that_raises_never_breaks_recommend_and_is_counted(serve, tmp_path, caplog) -> None:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "brokenstore.py").write_text(BROKEN_STORE, encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="llmrec.serve.logs")
    async with serve(log_store="broken", log_location="anywhere") as client:
        for user in ("u1", "u2", "u3"):
            r = await client.post("/v1/recommend", json={"user_id": user})
            assert r.status_code == 200 and r.json()["outputs"]["recommendations"]["items"]
        fb = await client.post("/v1/feedback", json={"request_id": r.headers["X-Request-Id"], "item_id": "i",
                                                     "type": "click"})
        assert fb.status_code == 202
        assert client.server.logs.flush()
        assert (await client.post("/v1/recommend", json={"user_id": "u4"})).status_code == 200
        client.server.logs.flush()
        text = (await client.get("/metrics")).text
    assert 'llmrec_log_records_total{kind="impressions",outcome="failed"} 4.0' in text
    assert 'llmrec_log_records_total{kind="feedback",outcome="failed"} 1.0' in text
    assert 'llmrec_log_records_total{kind="impressions",outcome="written"} 0.0' in text
    assert "disk on fire" in caplog.text


async def test_a_full_queue_drops_impressions_counted_and_refuses_feedback_with_503(serve, tmp_path) -> None:
    async with serve(**_store("file", tmp_path)) as client:
        server = client.server
        await asyncio.to_thread(server.logs.close)
        # a writer whose thread sleeps (nothing wakes it but a flush, a close or a full batch): the queue only fills
        server.logs = LogWriter(FileLogStore(tmp_path / "logs"), max_pending=2, interval=3600.0,
                                counter=server.metrics.count_log)
        for user in ("u1", "u2", "u3", "u4"):
            assert (await client.post("/v1/recommend", json={"user_id": user})).status_code == 200
        r = await client.post("/v1/feedback", json={"request_id": "r1", "item_id": "i1", "type": "click"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "log_overloaded" and r.headers["Retry-After"]
        text = (await client.get("/metrics")).text
        assert 'llmrec_log_records_total{kind="impressions",outcome="dropped"} 2.0' in text
        assert 'llmrec_log_records_total{kind="feedback",outcome="dropped"} 1.0' in text
        assert "llmrec_log_pending 2.0" in text
    assert len(list(read_logs(tmp_path / "logs"))) == 2  # shutdown wrote what was queued


async def test_the_provenance_id_changes_when_a_template_file_changes_and_the_server_reloads(serve, tmp_path) -> None:
    (tmp_path / "note.j2").write_text("hello {{ user_id }}", encoding="utf-8")
    async with serve(TEMPLATED, **_store("file", tmp_path)) as client:
        first = await client.post("/v1/recommend", json={"user_id": "u1"})
        assert first.json()["outputs"]["note"] == "hello u1"
        before = (await client.get("/v1/provenance")).json()
        assert before["files"]["note.j2"] and first.headers["X-Llmrec-Provenance"] == before["id"]

        assert await client.server.reload(force=True)  # nothing changed: the same stamp
        assert (await client.get("/v1/provenance")).json() == before

        (tmp_path / "note.j2").write_text("hi {{ user_id }}", encoding="utf-8")
        assert await client.server.reload(force=True)  # SIGHUP does this
        second = await client.post("/v1/recommend", json={"user_id": "u1"})
        after = (await client.get("/v1/provenance")).json()
        assert second.json()["outputs"]["note"] == "hi u1"
        assert after["id"] != before["id"] and second.headers["X-Llmrec-Provenance"] == after["id"]
        assert stamp_changes(before, after) == ["files:note.j2"]
        client.server.logs.flush()
    logged = {i.request_id: i.provenance for i in read_logs(tmp_path / "logs")}
    assert logged == {first.headers["X-Request-Id"]: before["id"], second.headers["X-Request-Id"]: after["id"]}
    for stamp in (before, after):  # each stamp's components kept beside the log, for llmrec replay
        kept = json.loads((tmp_path / "logs" / f"provenance-{stamp['id']}.json").read_text(encoding="utf-8"))
        assert kept == stamp


# -- rerank.explore ----------------------------------------------------------------------------------------------


def _policy_lists(scores: list[float], k: int, method: str, knobs: dict) -> dict[tuple[int, ...], float]:
    """Every list of k items the policy can show, with its probability, by enumeration (independently of the
    node's code): Plackett-Luce as a product of softmax choices among the items left; epsilon-greedy as the
    input order with probability 1 - epsilon, else a uniformly random list."""
    n = len(scores)
    out = {}
    for prefix in itertools.permutations(range(n), k):
        if method == "plackett_luce":
            w = [math.exp(x / knobs["temperature"]) for x in scores]
            prob = 1.0
            for j, i in enumerate(prefix):  # the weight left summed afresh: subtracting loses a sharp policy's tail
                prob *= w[i] / math.fsum(w[r] for r in range(n) if r not in prefix[:j])
        else:
            prob = (1 - knobs["epsilon"]) * (prefix == tuple(range(k))) + knobs["epsilon"] / math.perm(n, k)
        out[prefix] = prob
    return out


@pytest.mark.parametrize("method, knobs", [("plackett_luce", {"temperature": 0.7}),
                                           ("epsilon_greedy", {"epsilon": 0.3})])
def test_explore_propensities_are_exact_marginals_that_sum_to_one_and_match_seeded_draws(method, knobs) -> None:
    scores, k = [2.0, 1.5, 1.4, 0.2, -1.0], 3
    lists = _policy_lists(scores, k, method, knobs)
    marginal = np.zeros((len(scores), k))  # P(item a at position j), summed over every list
    for prefix, prob in lists.items():
        for j, a in enumerate(prefix):
            marginal[a, j] += prob
    assert np.allclose(marginal.sum(axis=0), 1.0)  # the probabilities of all items at each position sum to 1
    assert (marginal > 0).all()  # full support: every item can be at every position
    if method == "plackett_luce":  # the node's closed form (an integral) against the enumeration
        w = plackett_luce_weights(scores, knobs["temperature"])
        for j in range(1, k + 1):
            got = plackett_luce_marginals(w, list(range(len(scores))), [j] * len(scores))
            assert np.allclose(got, marginal[:, j - 1], atol=1e-8)

    rng = np.random.default_rng(2024)
    draws = 8_000
    seen = np.zeros_like(marginal)
    for _ in range(draws):
        order, props, cascade = explore_draw(scores, k, method, rng, **knobs)
        for j, a in enumerate(order):
            seen[a, j] += 1
        assert props == pytest.approx([marginal[a, j] for j, a in enumerate(order)], abs=1e-8)
        assert cascade[-1] == pytest.approx(lists[tuple(order)], abs=1e-12)  # the whole list's probability
    tolerance = 4 * np.sqrt(marginal * (1 - marginal) / draws) + 1e-3
    assert np.all(np.abs(seen / draws - marginal) <= tolerance), (seen / draws, marginal)


def test_plackett_luce_marginals_hold_for_sharp_and_flat_policies() -> None:
    rng = np.random.default_rng(5)
    for temperature in (0.05, 1.0, 20.0):
        scores = rng.normal(size=6).tolist()
        lists = _policy_lists(scores, 4, "plackett_luce", {"temperature": temperature})
        w = plackett_luce_weights(scores, temperature)
        for j in range(1, 5):
            exact = [sum(p for prefix, p in lists.items() if prefix[j - 1] == a) for a in range(6)]
            assert np.allclose(plackett_luce_marginals(w, list(range(6)), [j] * 6), exact, atol=1e-7)


async def test_explore_config_and_node_report_propensities_in_the_trace() -> None:
    with pytest.raises(ValueError, match="'epsilon' is for method 'epsilon_greedy'"):
        Explore.Config(epsilon=0.2)
    cands = Candidates(items=[ScoredItem(id=f"i{n}", score=float(-n)) for n in range(6)], source="x")
    node = Explore(Explore.Config(k=4, seed=3))
    out = await node.run(candidates=cands)
    assert len(out.items) == 4 and len({c.id for c in out.items}) == 4 and out.source == "x"
    same_run = [(await node.run(candidates=cands, context=_context("req-1"))).ids for _ in range(2)]
    assert same_run[0] == same_run[1]  # seed + run id: the same draw (a logged request replays)
    assert len({tuple((await node.run(candidates=cands, context=_context(f"r{n}"))).ids) for n in range(20)}) > 1


def _context(run_id: str):
    from llmrec.node import RunContext
    from llmrec.runtime.trace import NodeRecord

    return RunContext(run_id=run_id, node_id="explore", inputs={}, record=NodeRecord("explore", "rerank.explore"))


async def test_served_explore_logs_the_policys_propensities_and_replays_by_request_id(serve, tmp_path) -> None:
    async with serve(EXPLORE, **_store("sqlite", tmp_path)) as client:
        lists = {}
        for rid in ("a-1", "a-2", "a-3", "a-1"):
            r = await client.post("/v1/recommend?trace=true", json={"user_id": "u5", "k": 5},
                                  headers={"X-Request-Id": rid})
            assert r.status_code == 200
            ids = [i["id"] for i in r.json()["outputs"]["recommendations"]["items"]]
            lists.setdefault(rid, []).append(ids)
            node = next(n for n in r.json()["trace"]["nodes"] if n["node_id"] == "explore")
            assert list(node["extra"]["propensities"])[:5] == ids and list(node["extra"]["cascade"])[:5] == ids
        assert lists["a-1"][0] == lists["a-1"][1]  # the same request id draws the same list
        client.server.logs.flush()
    reader = read_logs(tmp_path / "logs.db")
    logged = list(reader)
    assert reader.duplicates == ["a-1"]
    assert [i.request_id for i in logged] == ["a-1", "a-2", "a-3", "a-1"]
    for imp in logged:
        assert imp.policy == ["explore"]
        props = [i.propensity for i in imp.items]
        assert all(0 < p <= 1 for p in props) and len(props) == 5
        cascade = [i.cascade for i in imp.items]  # each position multiplies in a probability: never growing
        assert cascade[0] == pytest.approx(props[0]) and all(a >= b > 0 for a, b in zip(cascade, cascade[1:]))
    assert json.dumps(logged[0].inputs) == json.dumps({"user_id": "u5", "k": 5})


# -- the command ---------------------------------------------------------------------------------------------------


def test_llmrec_serve_log_options_refuse_what_cannot_work(tmp_path, capsys) -> None:
    from llmrec.cli import main

    from .conftest import write

    spec = str(write(tmp_path, SHOP))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    for argv, expected in (
        (["--log-dir", str(tmp_path / "a"), "--log-store", "sqlite:b.db"], "not both"),
        (["--log-store", "sqlit:b.db"], "unknown log store 'sqlit'; did you mean 'sqlite'?"),
        (["--log-dir", str(blocked / "logs")], "cannot log to"),
        (["--rating-range", "5", "1"], "lowest rating first"),
    ):
        assert main(["serve", spec, "--port", "0", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert expected in " ".join(err.split()) and "Traceback" not in err, (argv, err)


def test_llmrec_serve_with_a_log_store_logs_answers_and_feedback_and_closes_it_on_sigterm(tmp_path) -> None:
    import signal
    import subprocess

    import httpx

    from .conftest import write
    from llmrec.testing import free_port, wait_until_ready

    from .test_server import LLMREC, ROOT, _env

    spec = write(tmp_path, SHOP)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "served.db"
    proc = subprocess.Popen([*LLMREC, "serve", str(spec), "--port", str(port), "--reload-interval", "0",
                             "--log-store", f"sqlite:{db}", "--rating-range", "1", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        wait_until_ready(url, proc)
        with httpx.Client(base_url=url, timeout=10) as client:
            r = client.post("/v1/recommend", json={"user_id": "u1", "k": 2})
            rid = r.headers["X-Request-Id"]
            first = r.json()["outputs"]["recommendations"]["items"][0]["id"]
            fb = client.post("/v1/feedback", json=[{"request_id": rid, "item_id": first, "type": "rating",
                                                    "value": 9}])
            assert fb.status_code == 202, fb.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) in (0, -signal.SIGTERM)
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (imp,) = list(read_logs(db))
    assert imp.request_id == rid and imp.items[0].id == first and imp.provenance == r.headers["X-Llmrec-Provenance"]
    assert [(f.type, f.value, f.shown) for f in imp.feedback] == [("rating", 9.0, True)]
