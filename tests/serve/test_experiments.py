"""Online experiments in ``llmrec serve`` (issue 14): the A/B split by a stable hash (the same arm for a user in
every request, server and process; the weights honoured), team-draft interleaving (a valid draft for any two
rankings, deterministic per request id, replayable from the log), and the results read back from a real log
store: a simulated experiment where one arm is truly better is found significant, A/A tests mostly are not, a
broken split is flagged as a sample ratio mismatch; and the CLI's errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.cli import main
from llmrec.serve.app import ServeOptions, create_app
from llmrec.serve.experiments import (
    BUCKETS,
    ExperimentError,
    experiment_results,
    format_results,
    interleave_outputs,
    mark_teams,
    parse_experiment,
    team_draft,
)
from llmrec.serve.logs import FeedbackEvent, FileLogStore, feedback_record, impression_record, read_logs

from .conftest import SHOP, write

#: the demo shop with a variant that retrieves from a shorter popular list
VARIANTS = SHOP + """
variants:
  short:
    nodes.popular.config.k: 8
  shorter:
    nodes.popular.config.k: 5
"""


def _ids(response: Any) -> list[str]:
    return [i["id"] for i in response.json()["outputs"]["recommendations"]["items"]]


# -- assignment ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("ab", "is not an experiment"), ("abc:a,b", "is not an experiment"), ("ab:a", "at least two arms"),
    ("ab:a,,b", "at least two arms"), ("ab:a,a", "named twice"), ("interleave:a,b,c", "exactly two"),
    ("interleave:a,b:1,1", "takes no weights"), ("ab:a,b:1", "1 weights for 2 arms"), ("ab:a,b:x,1", "numbers"),
    ("ab:a,b:0,0", "not all 0"), ("ab:a,b:-1,2", "non-negative")])
def test_a_malformed_experiment_says_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_experiment(text)


def test_the_split_follows_the_weights_and_raising_a_weight_only_moves_users_into_that_arm() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    for text, shares in (("ab:c,t:90,10", [0.9, 0.1]), ("ab:c,t1,t2:50,30,20", [0.5, 0.3, 0.2]),
                         ("ab:c,t", [0.5, 0.5])):
        exp = parse_experiment(text, name="split")
        arms = [exp.assign(u)[0] for u in users]
        for arm, share in zip(exp.arms, shares):
            assert abs(arms.count(arm) / len(users) - share) < 0.012  # 5 binomial standard deviations at most
    ten = parse_experiment("ab:c,t:90,10", name="ramp")
    half = parse_experiment("ab:c,t:50,50", name="ramp")
    before = {u for u in users if ten.assign(u)[0] == "t"}
    after = {u for u in users if half.assign(u)[0] == "t"}
    assert before and before <= after  # every user in the 10% treatment stays in it at 50%
    other = parse_experiment("ab:c,t:90,10", name="ramp", salt="reshuffle")
    assert {u for u in users if other.assign(u)[0] == "t"} != before  # a new salt reshuffles
    buckets = [ten.bucket(u) for u in users]
    assert min(buckets) >= 0 and max(buckets) < BUCKETS


def test_the_assignment_is_the_same_in_another_process() -> None:
    users = [f"u{i}" for i in range(200)] + ["ünïcode", "a b", "42"]
    exp = parse_experiment("ab:default,short:70,30", name="cross-process", salt="s1")
    here = [exp.assign(u) for u in users]
    code = ("import json, sys; from llmrec.serve.experiments import parse_experiment; "
            "e = parse_experiment('ab:default,short:70,30', name='cross-process', salt='s1'); "
            "print(json.dumps([e.assign(u) for u in json.loads(sys.stdin.read())]))")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(users), capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=60, check=True)
    assert [tuple(x) for x in json.loads(done.stdout)] == here


async def test_a_user_keeps_an_arm_across_requests_and_servers_and_it_is_logged(serve, tmp_path: Path) -> None:
    options = {"experiment": "ab:default,short", "experiment_name": "shop-test", "log_store": "file",
               "log_location": str(tmp_path / "logs")}
    seen: dict[str, set[str]] = {}
    stamps: dict[str, str] = {}
    for _ in range(2):  # two server instances of the same experiment
        async with serve(VARIANTS, **options) as client:
            server = client.server
            assert server.arms["default"].runtime.resources["shop"] is server.arms["short"].runtime.resources["shop"]
            for i in range(24):
                for _ in range(2):
                    r = await client.post("/v1/recommend", json={"user_id": f"u{i}", "k": 3})
                    assert r.status_code == 200
                    arm = r.headers["X-Llmrec-Variant"]
                    seen.setdefault(f"u{i}", set()).add(arm)
                    assert stamps.setdefault(arm, r.headers["X-Llmrec-Provenance"]) == r.headers["X-Llmrec-Provenance"]
            batch = (await client.post("/v1/recommend/batch", json={"requests": [{"user_id": "u0"}, {"user_id": "u1"}]}
                                       )).json()["results"]
            assert [b["variant"] for b in batch] == [next(iter(seen["u0"])), next(iter(seen["u1"]))]
            info = (await client.get("/v1/experiment")).json()
            assert info["name"] == "shop-test" and [a["arm"] for a in info["arms"]] == ["default", "short"]
            assert info["override"] is False
            assert (await client.get("/v1/provenance?arm=short")).json()["id"] == info["arms"][1]["provenance"]
            # overrides are off unless the operator turns them on
            r = await client.post("/v1/recommend?variant=short", json={"user_id": "u0"})
            assert r.status_code == 403 and r.json()["error"]["field"] == "variant"
            assert server.logs.flush()
    assert all(len(arms) == 1 for arms in seen.values())
    assert {next(iter(a)) for a in seen.values()} == {"default", "short"}
    assert stamps["default"] != stamps["short"]
    logged = list(read_logs(tmp_path / "logs"))
    assert len(logged) == 2 * (24 * 2 + 2)
    for imp in logged:
        arm = imp.experiment["arm"]
        assert imp.experiment["name"] == "shop-test" and imp.experiment["unit"] == "user"
        assert arm in seen[imp.user_id] and imp.provenance == stamps[arm]
        assert imp.variant == (None if arm == "default" else arm)  # the variant applied, as a replay needs it
    report = experiment_results(logged, permutations=500, resamples=200)
    (ab,) = report.results
    assert sum(a.units for a in ab.arms) == 24 and sum(a.impressions for a in ab.arms) == len(logged)


async def test_an_override_when_allowed_is_logged_as_forced_and_left_out(serve, tmp_path: Path) -> None:
    async with serve(VARIANTS, experiment="ab:default,short", experiment_override=True, log_store="file",
                     log_location=str(tmp_path / "logs")) as client:
        natural = await client.post("/v1/recommend", json={"user_id": "u5"})
        other = "short" if natural.headers["X-Llmrec-Variant"] == "default" else "default"
        forced = await client.post(f"/v1/recommend?variant={other}", json={"user_id": "u5"})
        assert forced.status_code == 200 and forced.headers["X-Llmrec-Variant"] == other
        bad = await client.post("/v1/recommend?variant=nope", json={"user_id": "u5"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "variant"
        assert "default, short" in bad.json()["error"]["message"]
        assert client.server.logs.flush()
    logged = {imp.request_id: imp for imp in read_logs(tmp_path / "logs")}
    assert logged[forced.headers["X-Request-Id"]].experiment["forced"] is True
    (ab,) = experiment_results(logged.values(), permutations=200, resamples=200).results
    assert ab.forced == 1 and sum(a.impressions for a in ab.arms) == 1


def test_an_unknown_arm_or_a_malformed_experiment_stops_the_server_from_starting(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, VARIANTS)  # (a variant that does not apply makes the spec itself invalid)
    with pytest.raises(ExperimentError, match="arm 'fast' is not a variant of the spec .*short, shorter"):
        create_app(ServeOptions(spec=str(path), trust=True, experiment="ab:default,fast"))
    with pytest.raises(ValueError, match="at least two arms"):
        create_app(ServeOptions(spec=str(path), trust=True, experiment="ab:short"))
    assert main(["serve", str(path), "--trust", "--experiment", "ab:default,fast", "--port", "0"]) == 2
    assert "'--experiment'" in capsys.readouterr().err
    assert main(["serve", str(path), "--trust", "--experiment", "ab:default", "--port", "0"]) == 2
    assert "at least two arms" in capsys.readouterr().err


async def test_a_reload_rebuilds_every_arm(serve) -> None:
    async with serve(VARIANTS, experiment="ab:default,short") as client:
        server = client.server
        before = {a: s.stamp.id for a, s in server.arms.items()}
        client.spec_path.write_text(VARIANTS.replace("nodes.popular.config.k: 8", "nodes.popular.config.k: 9"))
        assert await server.reload(force=True)
        after = {a: s.stamp.id for a, s in server.arms.items()}
        assert after["short"] != before["short"]  # (and the default's: its file, variants included, changed)
        assert server.arms["short"].graph.nodes["popular"].config.k == 9
        assert server.arms["default"].graph.nodes["popular"].config.k == 50
        client.spec_path.write_text(SHOP)  # the variant is gone: the reload is refused, the arms keep serving
        assert not await server.reload(force=True)
        assert "arm 'short' is not a variant" in " ".join(server.reload_errors)
        assert (await client.post("/v1/recommend", json={"user_id": "u1"})).status_code == 200


# -- interleaving -------------------------------------------------------------------------------------------------


def _check_draft(a: list[str], b: list[str], merged: Any) -> None:
    assert len(merged.ids) == len(set(merged.ids)) == len(merged.teams)
    in_list: set[str] = set()
    count = {"A": 0, "B": 0}
    for item, team in zip(merged.ids, merged.teams):
        count[team] += 1
        assert abs(count["A"] - count["B"]) <= 1  # every prefix is balanced
        own = a if team == "A" else b
        assert item == next(x for x in own if x not in in_list)  # the team's best item not yet shown
        in_list.add(item)
    # it stops only when a list has nothing new left, or at the longer list's length
    stopped = len(merged.ids) == max(len(a), len(b)) or set(a) <= in_list or set(b) <= in_list
    assert stopped
    assert len(merged.flips) == (len(merged.ids) + 1) // 2


rankings = st.lists(st.sampled_from([f"i{n}" for n in range(15)]), max_size=12, unique=True)


@settings(max_examples=300, deadline=None)
@given(a=rankings, b=rankings, seed=st.integers(0, 2**32))
def test_team_draft_is_a_valid_draft_and_replays_from_its_flips(a: list[str], b: list[str], seed: int) -> None:
    merged = team_draft(a, b, random.Random(seed))
    _check_draft(a, b, merged)
    assert team_draft(a, b, flips=merged.flips) == merged


def test_team_draft_flips_fair_coins() -> None:
    rng = random.Random(1)
    firsts = [team_draft(["a", "b"], ["c", "d"], rng).flips[0] for _ in range(4000)]
    assert abs(firsts.count("A") / 4000 - 0.5) < 0.04


async def test_interleaving_merges_both_arms_deterministically_per_request_id(serve, tmp_path: Path) -> None:
    async with serve(VARIANTS, experiment="interleave:default,shorter", experiment_override=True,
                     log_store="file", log_location=str(tmp_path / "logs")) as client:
        lists = {}
        for arm in ("default", "shorter"):
            r = await client.post(f"/v1/recommend?variant={arm}", json={"user_id": "u3", "k": 6})
            lists[arm] = _ids(r)
        assert lists["default"] != lists["shorter"]
        answers = []
        for rid in ("req-1", "req-1", "req-2", "req-3", "req-4"):
            r = await client.post("/v1/recommend", json={"user_id": "u3", "k": 6}, headers={"X-Request-Id": rid})
            assert r.status_code == 200 and r.headers["X-Llmrec-Variant"] == "default+shorter"
            items = r.json()["outputs"]["recommendations"]["items"]
            assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
            answers.append(_ids(r))
        assert answers[0] == answers[1]  # the same request id, the same coin flips
        trace = await client.post("/v1/recommend?trace=true", json={"user_id": "u3"})
        assert set(trace.json()["trace"]) == {"default", "shorter"}
        assert client.server.logs.flush()
    logged = {imp.request_id: imp for imp in read_logs(tmp_path / "logs")}
    for rid, shown in zip(("req-1", "req-2", "req-3", "req-4"), answers[1:]):
        imp = logged[rid]
        exp = imp.experiment
        assert exp["kind"] == "interleave" and exp["arms"] == ["default", "shorter"] and exp["seed"] == 0
        assert imp.ids == shown and all(i.propensity is None for i in imp.items)
        replay = team_draft(lists["default"], lists["shorter"], flips=exp["flips"]["recommendations"])
        _check_draft(lists["default"], lists["shorter"], replay)
        assert shown[:len(replay.ids)] == replay.ids  # the draft, then the rest credited to neither team
        names = {"A": "default", "B": "shorter"}
        assert [i.team for i in imp.items][:len(replay.ids)] == [names[t] for t in replay.teams]
        assert all(i.team is None for i in imp.items[len(replay.ids):])


def test_interleave_outputs_keeps_the_spec_shape_and_other_outputs() -> None:
    a = {"recs": {"user_id": "u", "items": [{"rank": 1, "id": "x", "title": "X"}, {"rank": 2, "id": "y"}]},
         "note": "from A", "ids": [{"id": 1}, {"id": 2}]}
    b = {"recs": {"user_id": "u", "items": [{"rank": 1, "id": "y", "title": "Y from B"}, {"rank": 2, "id": "z"}]},
         "note": "from B", "ids": [{"id": 2}, {"id": 3}]}
    outputs, teams, flips = interleave_outputs(a, b, lambda name: random.Random(3))
    assert outputs["note"] == "from A" and outputs["recs"]["user_id"] == "u"
    assert [i["rank"] for i in outputs["recs"]["items"]] == [1, 2]
    assert set(teams) == set(flips) == {"recs", "ids"}
    by_team = {i["id"]: t for i, t in zip(outputs["recs"]["items"], teams["recs"])}
    assert [i for i in outputs["recs"]["items"] if i["id"] == "y"][0].get("title") == (
        "Y from B" if by_team["y"] == "B" else None)


# -- results from the logs ----------------------------------------------------------------------------------------


def _simulate_ab(folder: Path, seed: int, ctr: dict[str, float], users: int = 500, per_user: int = 6,
                 drop: float = 0.0) -> Path:
    """A/B impressions and clicks written to a real file store: each user's click probability is their own
    (beta-distributed around the arm's CTR, so impressions of a user are correlated). ``drop`` loses that share of
    the treatment's users (a broken logger: a sample ratio mismatch)."""
    exp = parse_experiment("ab:default,better", name=f"sim-{seed}")
    rng = np.random.default_rng(seed)
    store = FileLogStore(folder)
    impressions, feedback = [], []
    outputs = {"recommendations": {"user_id": "", "items": [{"rank": k, "id": f"i{k}", "score": 1.0 / k}
                                                             for k in range(1, 6)]}}
    for u in range(users):
        uid = f"user{u}"
        arm, bucket = exp.assign(uid)
        if arm == "better" and rng.random() < drop:
            continue
        p = rng.beta(4, 4 * (1 - ctr[arm]) / ctr[arm])
        for j in range(per_user):
            rid = f"{uid}-{j}"
            record = impression_record(rid, 1.7e9 + j, "recommend", "sim", f"stamp-{arm}", None, {"user_id": uid},
                                       outputs, False, None, None)
            record["experiment"] = exp.arm_record(arm, bucket, "user")
            impressions.append(record)
            if rng.random() < p:
                item = f"i{rng.integers(1, 6)}"
                feedback.append(feedback_record(FeedbackEvent(request_id=rid, item_id=item, type="click"), 1.7e9))
                if rng.random() < 0.2:
                    feedback.append(feedback_record(FeedbackEvent(request_id=rid, item_id=item, type="purchase",
                                                                  value=10.0), 1.7e9))
    store.append_impressions(impressions)
    store.append_feedback(feedback)
    store.close()
    return folder


def _simulate_interleaving(folder: Path, seed: int, noise: dict[str, float], users: int = 300,
                           per_user: int = 4) -> Path:
    """Interleaved impressions from two rankers of known quality (the true relevance plus Gaussian noise of the
    arm's size), merged by the server's own interleave_outputs, clicked by a position-biased user model."""
    exp = parse_experiment("interleave:a,b", name=f"sim-il-{seed}", seed=seed)
    rng = np.random.default_rng(seed)
    store = FileLogStore(folder)
    impressions, feedback = [], []
    catalog = [f"i{n}" for n in range(40)]
    for u in range(users):
        uid = f"user{u}"
        relevance = rng.random(len(catalog)) < 0.2
        for j in range(per_user):
            rid = f"{uid}-{j}"
            answers = {}
            for arm in exp.arms:
                order = np.argsort(-(relevance + rng.normal(0, noise[arm], len(catalog))))[:10]
                answers[arm] = {"recommendations": {"items": [{"id": catalog[i], "score": 0.0} for i in order]}}
            outputs, teams, flips = interleave_outputs(answers["a"], answers["b"], lambda out: exp.rng(rid, out))
            record = impression_record(rid, 1.7e9, "recommend", "sim", "pa+pb", None, {"user_id": uid}, outputs,
                                       False, None, None)
            arm_of = {"A": "a", "B": "b", None: None}
            mark_teams(record, {k: [arm_of[t] for t in ts] for k, ts in teams.items()})
            record["experiment"] = exp.interleave_record("user", {"a": "pa", "b": "pb"}, flips)
            impressions.append(record)
            for position, item in enumerate(outputs["recommendations"]["items"], 1):
                if relevance[catalog.index(item["id"])] and rng.random() < 0.9 / position ** 0.5:
                    feedback.append(feedback_record(FeedbackEvent(request_id=rid, item_id=item["id"], type="click"),
                                                    1.7e9))
    store.append_impressions(impressions)
    store.append_feedback(feedback)
    store.close()
    return folder


def test_an_ab_test_where_one_arm_is_truly_better_is_found_significant(tmp_path: Path) -> None:
    log = _simulate_ab(tmp_path / "ab", seed=1, ctr={"default": 0.10, "better": 0.16})
    report = experiment_results(log, permutations=2000, resamples=1000)
    (ab,) = report.results
    control, treatment = ab.arms
    assert (control.arm, treatment.arm) == ("default", "better")
    assert control.units + treatment.units == 500 and control.impressions == 6 * control.units
    assert control.ctr == control.clicked / control.impressions
    assert control.ctr_ci[0] < control.ctr < control.ctr_ci[1] and treatment.ctr_ci[0] > control.ctr_ci[0]
    assert treatment.feedback["click"] == treatment.clicks and treatment.feedback["purchase"] > 0
    (c,) = ab.comparisons
    assert c.diff == pytest.approx(treatment.ctr - control.ctr)
    assert c.diff > 0 and c.ci[0] > 0 and c.p_value < 0.05 and c.significant
    assert not ab.srm and ab.srm_p > 0.001
    text = format_results(report)
    assert "better - default: ctr +" in text and "significant at 0.05" in text and "sample ratio" in text


def test_a_broken_split_is_flagged_as_a_sample_ratio_mismatch(tmp_path: Path) -> None:
    log = _simulate_ab(tmp_path / "srm", seed=2, ctr={"default": 0.1, "better": 0.1}, users=2000, per_user=1,
                       drop=0.3)
    (ab,) = experiment_results(log, permutations=200, resamples=200).results
    assert ab.srm and ab.srm_p < 0.001
    assert "MISMATCH" in format_results(experiment_results(log, permutations=200, resamples=200))


def test_aa_tests_are_rarely_significant(tmp_path: Path) -> None:
    ab_hits = [experiment_results(_simulate_ab(tmp_path / f"aa{s}", seed=100 + s, ctr={"default": 0.12, "better": 0.12},
                                               users=300, per_user=4), permutations=1000, resamples=200
                                  ).results[0].comparisons[0].p_value for s in range(10)]
    il_hits = [experiment_results(_simulate_interleaving(tmp_path / f"il{s}", seed=200 + s,
                                                         noise={"a": 0.6, "b": 0.6}, users=120),
                                  resamples=200).results[0].p_value for s in range(10)]
    # at the 5% level, 10 A/A tests are all insignificant with probability 0.6 and have 2 or more false alarms
    # with probability 0.09; 3 or more would be a broken test (probability 0.012)
    assert sum(p < 0.05 for p in ab_hits) <= 2 and sum(p < 0.05 for p in il_hits) <= 2
    assert max(ab_hits) > 0.3 and max(il_hits) > 0.3


def test_interleaving_finds_the_truly_better_ranker(tmp_path: Path) -> None:
    log = _simulate_interleaving(tmp_path / "il", seed=5, noise={"a": 1.2, "b": 0.3})
    report = experiment_results(log, resamples=1000)
    (il,) = report.results
    assert (il.arm_a, il.arm_b) == ("a", "b") and il.impressions == 1200 and il.units == 300
    assert il.wins_b > il.wins_a and il.with_clicks == il.wins_a + il.wins_b + il.ties
    assert il.delta == pytest.approx((il.wins_a - il.wins_b) / il.with_clicks)
    assert il.delta < 0 and il.ci[1] < 0 and il.p_value < 0.05 and il.preferred == "b"
    assert il.first_a + il.first_b == 1200 and il.first_p > 0.001
    assert "b preferred" in format_results(report)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["experiments"][0]["kind"] == "interleave" and as_json["experiments"][0]["wins_b"] == il.wins_b


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_llmrec_experiment_prints_a_table_or_json_and_clear_errors(tmp_path: Path, capsys) -> None:
    log = _simulate_ab(tmp_path / "ab", seed=3, ctr={"default": 0.1, "better": 0.2}, users=200, per_user=3)
    assert main(["experiment", str(log), "--permutations", "500", "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert "experiment sim-3 (A/B)" in text and "better - default" in text
    assert main(["experiment", str(log), "--json", "--permutations", "500", "--resamples", "200"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["experiments"][0]["name"] == "sim-3" and data["experiments"][0]["comparisons"][0]["significant"]

    assert main(["experiment", str(tmp_path / "missing")]) == 3
    assert "no log at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["experiment", str(tmp_path / "empty")]) == 3
    assert "holds no impressions" in capsys.readouterr().err
    plain = FileLogStore(tmp_path / "plain")
    plain.append_impressions([impression_record("r1", 1.7e9, "recommend", "s", "p", None, {}, {}, False, None,
                                                None)])
    plain.close()
    assert main(["experiment", str(tmp_path / "plain")]) == 3
    err = capsys.readouterr().err
    assert "none of the log's 1 impressions belongs to any experiment" in err and "--experiment" in err
    assert main(["experiment", str(log), "--name", "other"]) == 3
    assert "experiment 'other'" in capsys.readouterr().err
    assert main(["experiment", "nosuchstore:x"]) == 3
    assert "unknown log store 'nosuchstore'" in capsys.readouterr().err
