"""A third-party plugin's node types get what built-ins get, by declaring ``Reports`` (issue 12): a model-calling
node not named ``llm.*`` is counted in eval's LLM usage and serve's LLM series, and a grounding verifier of its own
feeds serve's grounding series. (Serve's LLM series for a plugin node: tests/serve, ``servetest.sleep``.) The plugin lives in its own folder, as a separate package would."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from llmrec.data import generate_demo, make_dataset
from llmrec.eval.runner import evaluate
from llmrec.serve.app import ServeOptions, create_app

PLUGIN = '''
from pydantic import BaseModel, ConfigDict
import llmrec


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: int = 7


class AskOracle(llmrec.NodeType):
    """Pretends to call a hosted model: reorders candidates and reports the model's usage."""
    name = "acme.oracle"
    Config = _Cfg
    reports = llmrec.Reports(model_usage=True)

    async def run(self, candidates: llmrec.Candidates, context: llmrec.RunContext) -> llmrec.Candidates:
        context.record.usage = llmrec.ModelUsage(model="acme-1", calls=1, prompt_tokens=self.config.tokens,
                                                 completion_tokens=3, cost=0.002)
        return candidates.model_copy(update={"items": list(reversed(candidates.items))})


class Checked(BaseModel):
    items: list[str]
    dropped: int = 0
    repaired: int = 0
    duplicates: int = 0


class KeepKnown(llmrec.NodeType):
    """A grounding verifier of its own: keeps ids the catalog knows, once each."""
    name = "acme.keep_known"
    reports = llmrec.Reports(grounding=True)

    async def run(self, items: list[str], catalog: llmrec.Catalog) -> Checked:
        kept, seen = [], set()
        dropped = dup = 0
        for i in items:
            if i in seen:
                dup += 1
            elif catalog.get(i) is None:
                dropped += 1
            else:
                seen.add(i)
                kept.append(i)
        return Checked(items=kept, dropped=dropped, duplicates=dup)


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(AskOracle)
    register(KeepKnown)
'''

ORACLE = """
version: 1
name: oracle
inputs:
  user_id: {type: string}
resources:
  shop: {type: dataset, config: {name: demo, split: temporal}}
nodes:
  popular:
    type: retrieve.popular
    config: {k: 8}
    inputs: {interactions: "${resources.shop.train}"}
  ask:
    type: acme.oracle
    inputs: {candidates: "${popular}"}
outputs:
  items: ${ask}
"""

GROUND = """
version: 1
name: ground
inputs:
  items: {type: array, items: string}
resources:
  shop: {type: dataset, config: {name: demo, seed: 7, split: user}}
nodes:
  check:
    type: acme.keep_known
    inputs: {items: "${inputs.items}", catalog: "${resources.shop.catalog}"}
outputs:
  items: ${check.items}
"""


def _write(folder: Path, text: str) -> Path:
    (folder / "plugins").mkdir(exist_ok=True)
    (folder / "plugins" / "acme.py").write_text(PLUGIN, encoding="utf-8")
    path = folder / "spec.yaml"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def test_eval_counts_a_plugin_nodes_model_usage(tmp_path: Path) -> None:
    shop = generate_demo()
    demo = make_dataset("demo", shop.catalog, shop.interactions, "temporal")
    report = evaluate([_write(tmp_path, ORACLE)], demo, ks=(5,), users=6, progress=False)
    llm = report.results[0].llm
    assert llm["llm_nodes"] == 1 and llm["node_runs"] == 6 and llm["calls"] == 6
    assert (llm["prompt_tokens"], llm["completion_tokens"]) == (42, 18)
    assert llm["cost"] == pytest.approx(0.012)


async def test_serve_exports_a_plugin_nodes_grounding(tmp_path: Path) -> None:
    app = create_app(ServeOptions(spec=str(_write(tmp_path, GROUND)), reload_interval=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            for _ in range(500):  # resources load in the background; /readyz says when
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            r = await client.post("/v1/recommend", json={"items": ["i001", "no-such-item", "i001"]})
            assert r.status_code == 200 and r.json()["outputs"]["items"] == ["i001"]
            text = (await client.get("/metrics")).text
    assert 'llmrec_grounding_violations_total{kind="dropped",node="check"} 1.0' in text
    assert 'llmrec_grounding_violations_total{kind="duplicates",node="check"} 1.0' in text
