"""The executor applies every per-node policy itself: concurrency, timeout, retries, cache, fallback, when."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import llmrec
from llmrec.plugins import get_registry

HERE = Path(__file__).parent


def node_class(spec, name: str):
    return get_registry(spec.dir).node_types[name]


async def test_independent_branches_run_concurrently(spec) -> None:
    rt = spec("""
        name: par
        nodes:
          a: {type: test.sleep, config: {seconds: 0.2}, inputs: {value: 1}}
          b: {type: test.sleep, config: {seconds: 0.2}, inputs: {value: 2}}
          c: {type: test.sleep, config: {seconds: 0.2}, inputs: {value: 3}}
          join: {type: core.identity, inputs: {value: ["${a}", "${b}", "${c}"]}}
        outputs: {all: "${join}"}
    """)
    result = await rt.run({})
    assert result.outputs == {"all": [1, 2, 3]}
    # three 0.2 s sleeps overlapping: the run takes about one of them, not three
    assert result.trace.wall_ms < 450
    starts = {r.node_id: r.start_ms for r in result.trace.nodes}
    assert max(starts["a"], starts["b"], starts["c"]) < 100
    assert starts["join"] >= 190


async def test_dependent_node_waits_for_its_inputs(spec) -> None:
    rt = spec("""
        name: chain
        nodes:
          first: {type: test.sleep, config: {seconds: 0.05}, inputs: {value: x}}
          second: {type: test.sleep, inputs: {value: "${first}"}}
        outputs: {v: "${second}"}
    """)
    cls = node_class(spec, "test.sleep")
    cls.events.clear()
    result = await rt.run()
    assert result.outputs == {"v": "x"}
    order = [(n, e) for n, e, _ in cls.events]
    assert order == [("first", "start"), ("first", "end"), ("second", "start"), ("second", "end")]


async def test_timeout_then_fallback_value(spec) -> None:
    rt = spec("""
        name: slow
        nodes:
          slow:
            type: test.sleep
            config: {seconds: 5}
            inputs: {value: late}
            timeout: 50ms
            fallback: {value: early}
        outputs: {v: "${slow}"}
    """)
    result = await rt.run()
    assert result.outputs == {"v": "early"}
    rec = result.trace.node("slow")
    assert rec is not None and rec.status == "fallback" and rec.fallback == "value"
    assert "timed out after 0.05s" in (rec.fallback_reason or "")
    assert result.degraded and result.trace.wall_ms < 1000


async def test_timeout_without_fallback_is_a_run_error_with_trace(spec) -> None:
    rt = spec("""
        name: slow
        nodes:
          slow: {type: test.sleep, config: {seconds: 5}, timeout: 0.05}
        outputs: {v: "${slow}"}
    """)
    with pytest.raises(llmrec.RunError) as info:
        await rt.run()
    err = info.value
    assert err.node_id == "slow" and "timed out" in str(err)
    assert err.trace.node("slow").status == "error"


async def test_retries_with_backoff_until_success(spec) -> None:
    rt = spec("""
        name: flaky
        nodes:
          f:
            type: test.flaky
            config: {failures: 2}
            inputs: {value: 7}
            retries: {attempts: 3, backoff: 10ms}
        outputs: {v: "${f}"}
    """)
    node_class(spec, "test.flaky").calls.clear()
    result = await rt.run()
    assert result.outputs["v"] == {"value": 7, "attempts": 3}
    rec = result.trace.node("f")
    assert rec.status == "ok" and rec.retries == 2


async def test_retries_exhausted_then_fallback_node(spec) -> None:
    rt = spec("""
        name: fb
        nodes:
          backup: {type: core.identity, inputs: {value: [safe]}}
          bad:
            type: test.fail
            retries: {attempts: 1, backoff: 0}
            fallback: {node: backup}
        outputs: {v: "${bad}"}
    """)
    result = await rt.run()
    assert result.outputs == {"v": ["safe"]}
    rec = result.trace.node("bad")
    assert rec.status == "fallback" and rec.fallback == "node:backup" and rec.retries == 1
    assert rec.fallback_reason == "ValueError: boom"
    # the fallback-only node ran because it was needed, and shows in the trace
    assert result.trace.node("backup").status == "ok"


async def test_an_input_that_is_also_the_fallback_runs_first_and_serves_both(spec) -> None:
    """`rerank` takes `candidates` as input and falls back to it: a common shape (a failing LLM reranker
    falls back to the order it was given). The input must still run before the node, and once."""
    rt = spec("""
        name: fb
        nodes:
          candidates: {type: core.identity, inputs: {value: [a, b]}}
          rerank:
            type: test.fail
            inputs: {value: "${candidates}"}
            fallback: {node: candidates}
        outputs: {v: "${rerank}"}
    """)
    result = await rt.run()
    assert result.outputs == {"v": ["a", "b"]}
    assert result.trace.node("rerank").status == "fallback"
    assert [r.node_id for r in result.trace.nodes].count("candidates") == 1


async def test_fallback_node_is_not_run_when_not_needed(spec) -> None:
    rt = spec("""
        name: fb
        nodes:
          backup: {type: test.counter, inputs: {key: b}}
          good:
            type: test.counter
            inputs: {key: g}
            fallback: {node: backup}
        outputs: {v: "${good}"}
    """)
    result = await rt.run()
    assert result.trace.node("backup") is None
    assert not result.degraded


async def test_fallback_template_sees_inputs_and_error(spec) -> None:
    rt = spec("""
        name: fbt
        inputs: {user_id: string}
        nodes:
          t:
            type: text.template
            config: {template: "{{ undefined_at_runtime.x }}"}
            inputs: {undefined_at_runtime: null}
            fallback: {template: "sorry {{ inputs.user_id }} ({{ error }})"}
        outputs: {text: "${t}"}
    """)
    result = await rt.run({"user_id": "u9"})
    assert result.outputs["text"].startswith("sorry u9 (")
    assert result.trace.node("t").fallback == "template"


async def test_when_false_skips_and_yields_none(spec) -> None:
    rt = spec("""
        name: cond
        inputs:
          query: {type: string, default: ""}
        nodes:
          search: {type: core.identity, inputs: {value: "${inputs.query}"}, when: inputs.query}
          shown: {type: core.identity, inputs: {value: "${search}"}}
        outputs: {q: "${shown}"}
    """)
    skipped = await rt.run({})
    assert skipped.outputs == {"q": None}
    assert skipped.trace.node("search").status == "skipped"
    ran = await rt.run({"query": "boots"})
    assert ran.outputs == {"q": "boots"}
    assert ran.trace.node("search").status == "ok"


async def test_when_can_read_other_nodes(spec) -> None:
    rt = spec("""
        name: cond2
        inputs: {k: {type: integer, default: 3}}
        nodes:
          n: {type: core.identity, inputs: {value: "${inputs.k}"}}
          big: {type: core.identity, inputs: {value: large}, when: "n > 5"}
        outputs: {v: "${big}"}
    """)
    assert (await rt.run({"k": 3})).outputs == {"v": None}
    assert (await rt.run({"k": 9})).outputs == {"v": "large"}


async def test_cache_hits_and_key_template_and_ttl(spec) -> None:
    rt = spec("""
        name: cached
        inputs: {user: string}
        nodes:
          c:
            type: test.counter
            inputs: {key: "${inputs.user}"}
            cache: {key: "${inputs.user}", ttl: 0.2}
        outputs: {v: "${c}"}
    """)
    counter = node_class(spec, "test.counter")
    counter.calls = 0
    first = await rt.run({"user": "a"})
    second = await rt.run({"user": "a"})
    other = await rt.run({"user": "b"})
    assert first.outputs == second.outputs
    assert counter.calls == 2  # "a" once, "b" once
    assert second.trace.node("c").cache_hit and second.trace.node("c").status == "cached"
    assert not other.trace.node("c").cache_hit
    await asyncio.sleep(0.25)
    third = await rt.run({"user": "a"})
    assert not third.trace.node("c").cache_hit and counter.calls == 3


async def test_default_cache_key_is_the_inputs(spec) -> None:
    rt = spec("""
        name: cached
        inputs: {user: string}
        nodes:
          c: {type: test.counter, inputs: {key: "${inputs.user}"}, cache: true}
        outputs: {v: "${c}"}
    """)
    counter = node_class(spec, "test.counter")
    counter.calls = 0
    for user in ["a", "a", "b", "a"]:
        await rt.run({"user": user})
    assert counter.calls == 2


async def test_failed_results_are_not_cached(spec) -> None:
    rt = spec("""
        name: nocachefail
        nodes:
          f: {type: test.fail, cache: true, fallback: {value: [x]}}
        outputs: {v: "${f}"}
    """)
    await rt.run()
    again = await rt.run()
    assert not again.trace.node("f").cache_hit and again.trace.node("f").status == "fallback"


async def test_blocking_node_runs_in_a_thread_and_does_not_block_the_loop(spec) -> None:
    rt = spec("""
        name: blocking
        nodes:
          b: {type: test.blocking, config: {seconds: 0.2}, inputs: {value: 1}}
          s: {type: test.sleep, config: {seconds: 0.2}, inputs: {value: 2}}
        outputs: {b: "${b}", s: "${s}"}
    """)
    result = await rt.run()
    assert result.outputs == {"b": 1, "s": 2}
    assert result.trace.wall_ms < 380


async def test_request_deadline(spec) -> None:
    rt = spec("""
        name: deadline
        nodes:
          s: {type: test.sleep, config: {seconds: 2}}
        outputs: {v: "${s}"}
    """)
    with pytest.raises(llmrec.RunError, match="deadline of 0.1s exceeded"):
        await rt.run(deadline=0.1)


async def test_input_errors_name_the_field(spec) -> None:
    rt = spec("""
        name: inputs
        inputs:
          user_id: {type: string}
          k: {type: integer, default: 10, minimum: 1, maximum: 100}
        nodes:
          n: {type: core.identity, inputs: {value: "${inputs.k}"}}
        outputs: {k: "${n}"}
    """)
    assert (await rt.run({"user_id": "u1"})).outputs == {"k": 10}
    for bad, field in [({}, "user_id"), ({"user_id": "u1", "k": 0}, "k"), ({"user_id": "u1", "k": "x"}, "k"),
                       ({"user_id": "u1", "kk": 1}, "kk")]:
        with pytest.raises(llmrec.InputError) as info:
            await rt.run(bad)
        assert info.value.field == field


async def test_trace_records_every_node(spec) -> None:
    rt = spec("""
        name: traced
        nodes:
          a: {type: core.identity, inputs: {value: 1}}
          b: {type: core.identity, inputs: {value: "${a}"}}
        outputs: {v: "${b}"}
    """)
    result = await rt.run()
    data = result.to_dict(trace=True)
    assert [n["node_id"] for n in data["trace"]["nodes"]] == ["a", "b"]
    for n in data["trace"]["nodes"]:
        assert n["status"] == "ok" and n["wall_ms"] >= 0 and n["cache_hit"] is False and n["retries"] == 0


def test_run_sync_and_module_level_run(spec) -> None:
    rt = spec("""
        name: sync
        inputs: {x: {type: integer, default: 2}}
        nodes:
          n: {type: core.identity, inputs: {value: "${inputs.x}"}}
        outputs: {v: "${n}"}
    """)
    assert rt.run_sync({"x": 5}).outputs == {"v": 5}
    assert llmrec.run(spec.dir / "spec.yaml", {"x": 4}).outputs == {"v": 4}
