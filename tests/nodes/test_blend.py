"""rank.blend: z-score and rank fusion of candidate lists, weights fixed or fitted by `llmrec train`."""

from __future__ import annotations

import asyncio
import json

import pytest

import llmrec
from llmrec.cli import main
from llmrec.nodes.rank.blend import Blend, BlendConfig, normalised
from llmrec.testing import write_spec
from llmrec.types import Candidates, ScoredItem


def _list(source: str, pairs: list[tuple[str, float]]) -> Candidates:
    return Candidates(items=[ScoredItem(id=i, score=s) for i, s in pairs], source=source)


def test_zscore_gives_a_missing_item_the_lists_lowest_score_and_rrf_zero() -> None:
    a = _list("a", [("x", 10.0), ("y", 0.0)])
    b = _list("b", [("z", -1.0), ("x", -3.0), ("w", -5.0)])
    ids, m = normalised([a, b], "zscore", 60)
    assert ids == ["x", "y", "z", "w"]
    assert m[:, 0].tolist() == [1.0, -1.0, -1.0, -1.0]  # z and w are not in a: a's lowest z
    assert m[0, 1] == pytest.approx(0.0) and m[1, 1] == pytest.approx(m[3, 1])  # y not in b: b's lowest
    ids, m = normalised([a, b], "rrf", 0)
    assert m[:, 0].tolist() == [1.0, 0.5, 0.0, 0.0]


def test_fixed_weights_blend_and_report_every_source() -> None:
    a = _list("a", [("x", 3.0), ("y", 2.0), ("z", 1.0)])
    b = _list("b", [("z", 9.0), ("y", 8.0), ("x", 0.0)])
    only_b = Blend(BlendConfig(weights=[0.0, 1.0]))
    assert asyncio.run(only_b.run(lists=[a, b])).ids == ["z", "y", "x"]
    both = asyncio.run(Blend(BlendConfig(weights=[1.0, 1.0], k=2)).run(lists=[a, b, ][:2]))
    assert both.ids[0] == "y" and len(both.items) == 2  # y is second in both lists: the best compromise
    assert set(both.items[0].sources) == {"a", "b"} and both.source == "blend"
    with pytest.raises(ValueError, match="3 lists but has 2 weights"):
        asyncio.run(only_b.run(lists=[a, b, None]))
    with pytest.raises(ValueError, match="give 'weights'"):
        BlendConfig()


SPEC = """
    name: blend-demo
    inputs:
      user_id: {type: string, default: "u1"}
    resources:
      data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 60, n_items: 80}}}
    nodes:
      popular:
        type: retrieve.popular
        config: {k: 40}
        inputs: {interactions: "${resources.data.train}"}
      ease:
        type: retrieve.cf
        config: {algorithm: ease, regularization: 20, k: 40}
        inputs: {interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
      blend:
        type: rank.blend
        config: {method: METHOD, model_path: models, k: 10}
        inputs: {lists: ["${popular}", "${ease}"]}
    outputs: {items: "${blend}"}
"""


@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_weights_are_fitted_on_validation_by_llmrec_train(tmp_path, capsys, method) -> None:
    spec = write_spec(tmp_path, SPEC.replace("METHOD", method))
    assert main(["run", str(spec)]) == 4
    assert "llmrec train" in capsys.readouterr().err
    assert main(["train", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "trained node 'blend' (rank.blend)" in out and "temporal-validation" in err
    folder = next((tmp_path / "models").glob("blend-*"))
    meta = json.loads((folder / "meta.json").read_text())
    metrics = meta["metrics"]
    assert metrics["ndcg@10"] >= max(metrics["list0_ndcg@10"], metrics["list1_ndcg@10"])
    weights = json.loads((folder / "weights.json").read_text())["weights"]
    assert len(weights) == 2 and max(weights) == 1.0
    items = llmrec.run(spec, {"user_id": "u2"}).outputs["items"]
    assert len(items.items) == 10

    (folder / "weights.json").write_text('{"weights": "x"}')  # hand-edited: checksum mismatch, a clear error
    assert main(["run", str(spec)]) == 4
    err = capsys.readouterr().err
    assert "weights.json" in err and "Traceback" not in err
