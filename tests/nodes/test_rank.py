"""rank.lambdamart called directly: features, fit + predict on demo data, artifacts, staleness, config checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from llmrec.data import generate_demo, make_dataset
from llmrec.errors import RunError
from llmrec.eval.metrics import ndcg_at_k
from llmrec.data import Catalog, Item
from llmrec.nodes.rank import (
    BASE_FEATURES,
    CLOSE_COSINE,
    EMBEDDING_FEATURES,
    Featurizer,
    LambdaMART,
    LambdaMARTConfig,
    default_features,
)
from llmrec.nodes.recsys import FilterSeen, Popular, Profile
from llmrec.testing import errors_of, write_spec
from llmrec.training import Artifact, ModelNotTrainedError, TrainingError, TrainingExample, find_artifact
from llmrec.types import Candidates, ScoredItem, UserProfile


@pytest.fixture(scope="module")
def demo():
    d = generate_demo(seed=7, n_users=100)
    return make_dataset("demo", d.catalog, d.interactions, "user", seed=0)


def _inputs(ds, user_id: str) -> dict:
    """Popularity candidates (not personal), so anything the model gains comes from the user features."""

    async def go() -> dict:
        profile = await Profile(Profile.Config()).run(catalog=ds.catalog, interactions=ds.train, user_id=user_id)
        popular = await Popular(Popular.Config(k=80)).run(interactions=ds.train)
        cands = await FilterSeen(FilterSeen.Config()).run(candidates=popular, profile=profile)
        return {"candidates": cands, "catalog": ds.catalog, "profile": profile, "interactions": ds.train}

    return asyncio.run(go())


@pytest.fixture(scope="module")
def examples(demo):
    train = [TrainingExample(c.id, _inputs(demo, c.inputs["user_id"]), c.relevant) for c in demo.train_cases]
    test = [TrainingExample(c.id, _inputs(demo, c.inputs["user_id"]), c.relevant) for c in demo.test_cases]
    return train, test


def _config(tmp_path: Path, **kw) -> LambdaMARTConfig:
    return LambdaMARTConfig(model_path=tmp_path / "models", n_estimators=40, min_data_in_leaf=10, **kw)


def test_features_are_deterministic_and_mean_what_they_say(examples):
    ex = examples[0][0]
    features = default_features([ex])
    assert features[: len(BASE_FEATURES)] == list(BASE_FEATURES)
    assert {"source:popular", "retrieved:popular", "source_gap:popular"} <= set(features)
    a = Featurizer().matrix(features, **ex.inputs)
    b = Featurizer().matrix(features, **ex.inputs)
    np.testing.assert_array_equal(a, b)  # equal, NaNs in the same places
    cands, profile, catalog = ex.inputs["candidates"], ex.inputs["profile"], ex.inputs["catalog"]
    col = {name: a[:, j] for j, name in enumerate(features)}
    assert col["rank"].tolist() == list(range(1, len(cands.items) + 1))
    assert col["retrieved:popular"].tolist() == [1.0] * len(cands.items)
    assert col["source:popular"].tolist() == [c.sources["popular"] for c in cands.items]
    expected = [profile.category_affinity.get(catalog[c.id].category, 0.0) for c in cands.items]
    assert col["category_affinity"].tolist() == expected
    assert col["seen"].sum() == 0  # filter_seen ran before
    missing = Featurizer().matrix(["source:bm25", "retrieved:bm25", "source_gap:bm25"], cands, catalog)
    assert (missing[:, :2] == 0).all() and np.isnan(missing[:, 2]).all()


def test_fit_then_predict_ranks_relevant_items_first(tmp_path, examples):
    train, test = examples
    cfg = _config(tmp_path)
    artifact = LambdaMART.fit(cfg, train, node_id="ranked")
    assert artifact.meta["rows"] > 1000 and artifact.meta["positives"] > 0
    assert set(artifact.meta["metrics"]) == {"ndcg@10", "input_order_ndcg@10"}
    assert artifact.save()
    node = LambdaMART(cfg)
    asyncio.run(node.start())
    model, baseline = [], []
    for ex in test:
        out = asyncio.run(node.run(**ex.inputs))
        assert sorted(out.ids) == sorted(ex.inputs["candidates"].ids)
        assert [c.score for c in out.items] == sorted((c.score for c in out.items), reverse=True)
        assert all(c.sources["lambdamart"] == c.score and "popular" in c.sources for c in out.items)
        model.append(ndcg_at_k(out.ids, ex.relevant, 10))
        baseline.append(ndcg_at_k(ex.inputs["candidates"].ids, ex.relevant, 10))
    # held-out users: the learned ranker must clearly beat the popularity order it was given
    assert np.mean(model) > np.mean(baseline) + 0.05, (np.mean(model), np.mean(baseline))
    top = asyncio.run(node.run(**test[0].inputs, k=5))
    assert len(top.items) == 5


def test_artifact_is_written_atomically_and_reloads(tmp_path, examples):
    cfg = _config(tmp_path)
    artifact = LambdaMART.fit(cfg, examples[0][:30], node_id="ranked")
    assert artifact.save() is True
    folder = artifact.folder
    assert folder.name.startswith("ranked-") and sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.txt"]
    assert (cfg.model_path / "latest").read_text().strip() == folder.name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["features"] == artifact.meta["features"] and meta["config"]["n_estimators"] == 40
    assert {"data_fingerprint", "created", "llmrec_version", "metrics"} <= set(meta)
    assert artifact.save() is False  # same config and data: already there
    assert artifact.save(force=True) is True
    assert not [p for p in cfg.model_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    node = LambdaMART(cfg)
    asyncio.run(node.start())
    assert node.artifact == folder
    ex = examples[1][0]
    first = node.predict(ex.inputs["candidates"], ex.inputs["catalog"], ex.inputs["profile"], ex.inputs["interactions"])
    again = LambdaMART(cfg)
    asyncio.run(again.start())
    np.testing.assert_array_equal(first, again.predict(**{k: ex.inputs[k] for k in ("candidates", "catalog", "profile",
                                                                                     "interactions")}))
    # a write that fails half-way leaves neither a folder nor a temporary one behind
    broken = Artifact(model_path=cfg.model_path, name="broken", digest="x", files={"model.txt": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        broken.save()
    assert not (cfg.model_path / "broken-x").exists()
    assert not [p for p in cfg.model_path.iterdir() if p.name.startswith(".")]
    assert (cfg.model_path / "latest").read_text().strip() == folder.name


def test_missing_and_stale_artifacts(tmp_path, examples):
    cfg = _config(tmp_path)
    assert "no trained model" in LambdaMART.artifact_status(cfg)
    with pytest.raises(ModelNotTrainedError, match="llmrec train") as info:
        asyncio.run(LambdaMART(cfg).start())
    assert isinstance(info.value, RunError)
    LambdaMART.fit(cfg, examples[0][:20], node_id="ranked").save()
    assert LambdaMART.artifact_status(cfg) is None
    changed = _config(tmp_path, num_leaves=7)
    assert "stale" in LambdaMART.artifact_status(changed) and "num_leaves" in LambdaMART.artifact_status(changed)
    assert find_artifact(changed.model_path, "nope") is None
    # k and model-independent settings do not make it stale
    assert LambdaMART.artifact_status(_config(tmp_path, k=3)) is None


def test_config_errors(tmp_path):
    spec = write_spec(tmp_path, """
        name: bad
        inputs: {user_id: string}
        resources:
          data: {type: dataset, config: {name: demo, split: user}}
        nodes:
          profile:
            type: user.profile
            inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
          popular:
            type: retrieve.popular
            inputs: {interactions: "${resources.data.train}"}
          ranked:
            type: rank.lambdamart
            config: {model_path: models, features: [rank, popularity, colour, "source:popular", rank], learning_rate: 0}
            inputs: {candidates: "${popular}", catalog: "${resources.data.catalog}", profile: "${profile}"}
        outputs: {ranked: "${ranked}"}
    """)
    errors = "\n".join(errors_of(spec))
    assert "learning_rate" in errors
    spec.write_text(spec.read_text().replace(", learning_rate: 0", ""))
    errors = "\n".join(errors_of(spec))
    assert "unknown feature 'colour'" in errors and "source:NAME" in errors
    assert "feature 'rank' listed twice" in errors


# -- embedding features (the optional `model` input) -------------------------------------------------------------


class FakeEmbedder:
    """Stands in for llmrec.embed.Embedder: fixed unit vectors per item id, counting embed_items calls."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.calls = 0

    def embed_items(self, catalog):
        self.calls += 1
        ids = [item.id for item in catalog]
        return ids, np.stack([self.vectors[i] for i in ids])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_embedding_features_mean_what_they_say():
    # two interests (x: sport, y: tech) plus one stray click (z: politics)
    vectors = {"h1": [1, 0.1, 0], "h2": [1, -0.1, 0], "h3": [0, 1, 0.1], "h4": [0.1, 1, 0], "h5": [0, 0, 1],
               "c1": [1, 0, 0], "c2": [0.2, 1, 0], "c3": [0, 0.1, 1], "c4": [1, 1, 1]}
    cats = {"h1": "sport", "h2": "sport", "c1": "sport", "h3": "tech", "h4": "tech", "c2": "tech",
            "h5": "politics", "c3": "politics", "c4": "business"}
    catalog = Catalog([Item(id=i, title=i, category=cats[i]) for i in vectors])
    model = FakeEmbedder(vectors)
    history = ["h1", "h2", "h3", "h4", "h5"]
    profile = UserProfile(user_id="u", known=True, history_size=5, seen=history)
    cands = Candidates(items=[ScoredItem(id=i, score=0.5) for i in ("c1", "c2", "c3", "c4", "not-in-catalog")])
    featurizer = Featurizer()
    x = featurizer.matrix(list(EMBEDDING_FEATURES), cands, catalog, profile, model=model)
    col = {name: x[:, j] for j, name in enumerate(EMBEDDING_FEATURES)}
    h = np.stack([_unit(vectors[i]) for i in history])
    for row, cid in enumerate(("c1", "c2", "c3", "c4")):
        sims = h @ _unit(vectors[cid])
        assert col["history_max_cosine"][row] == pytest.approx(sims.max())
        assert col["history_second_cosine"][row] == pytest.approx(np.sort(sims)[-2])
        assert col["history_mean_cosine"][row] == pytest.approx(sims.mean())
        assert col["history_close_count"][row] == (sims >= CLOSE_COSINE).sum()
        assert col["profile_cosine"][row] == pytest.approx(_unit(h.mean(axis=0)) @ _unit(vectors[cid]))
        near = int(sims.argmax())
        others = [k for k in range(5) if k != near]
        assert col["nearest_support"][row] == pytest.approx((h[others] @ h[near]).mean())
        near_cat = cats[history[near]]
        members = [k for k, i in enumerate(history) if cats[i] == near_cat]
        assert col["nearest_category_centroid_cosine"][row] == pytest.approx(
            _unit(h[members].mean(axis=0)) @ _unit(vectors[cid]))
    # c1 sits in an interest backed by two clicks; c3 only near the stray click: the mean profile misses that
    assert col["history_second_cosine"][0] > 0.9 > col["history_second_cosine"][2]
    assert col["nearest_support"][0] > col["nearest_support"][2]
    sport = _unit(h[:2].mean(axis=0))
    assert col["category_centroid_cosine"][0] == pytest.approx(sport @ _unit(vectors["c1"]))
    assert np.isnan(col["category_centroid_cosine"][3])  # no business article in the history
    assert np.isnan(x[4]).all()  # a candidate without a vector gets no made-up features
    # without a model or a history every embedding feature is missing, never an error
    assert np.isnan(featurizer.matrix(["history_max_cosine"], cands, catalog, profile)).all()
    cold = UserProfile(user_id="new", known=False)
    assert np.isnan(featurizer.matrix(["history_max_cosine"], cands, catalog, cold, model=model)).all()
    assert model.calls == 1  # the catalog's vectors are read once


def _with_model(examples, model):
    return [TrainingExample(ex.case_id, {**ex.inputs, "model": model}, ex.relevant) for ex in examples]


@pytest.fixture(scope="module")
def demo_model(demo):
    """Vectors that know each item's category and little else (like a text model on short titles)."""
    rng = np.random.default_rng(0)
    cats = sorted(demo.catalog.categories)
    vectors = {}
    for item in demo.catalog:
        v = rng.normal(0, 0.6, len(cats) + 4)
        v[cats.index(item.category)] += 1.0
        vectors[item.id] = v.tolist()
    return FakeEmbedder(vectors)


def test_model_input_adds_embedding_features_and_is_required_at_run(tmp_path, examples, demo_model):
    train, test = examples
    assert not set(EMBEDDING_FEATURES) & set(default_features(train[:3]))
    with_model = _with_model(train, demo_model)
    features = default_features(with_model[:3])
    assert features[len(BASE_FEATURES): len(BASE_FEATURES) + len(EMBEDDING_FEATURES)] == list(EMBEDDING_FEATURES)
    cfg = _config(tmp_path)
    artifact = LambdaMART.fit(cfg, with_model, node_id="ranked")
    assert artifact.meta["uses_model"] is True and artifact.meta["features"] == features
    artifact.save()
    node = LambdaMART(cfg)
    asyncio.run(node.start())
    ex = test[0]
    asyncio.run(node.warm(interactions=ex.inputs["interactions"], catalog=ex.inputs["catalog"], model=demo_model))
    out = asyncio.run(node.run(**ex.inputs, model=demo_model))
    assert sorted(out.ids) == sorted(ex.inputs["candidates"].ids)
    with pytest.raises(ModelNotTrainedError, match="trained with embedding features.*'model' input"):
        asyncio.run(node.run(**ex.inputs))
    # asking for embedding features without giving a model is a training error, not NaN columns
    explicit = _config(tmp_path / "b", features=["rank", "history_max_cosine"])
    with pytest.raises(TrainingError, match="need the 'model' input"):
        LambdaMART.fit(explicit, train[:20], node_id="ranked")


def test_artifact_is_stale_when_the_model_input_changes(tmp_path, examples, demo_model):
    from types import SimpleNamespace

    def bound(has_model: bool) -> LambdaMARTConfig:
        cfg = _config(tmp_path)
        inputs = {"candidates": "${popular}", **({"model": "${resources.minilm}"} if has_model else {})}
        graph = SimpleNamespace(nodes={"ranked": SimpleNamespace(spec=SimpleNamespace(inputs=inputs))}, order=[],
                                document=SimpleNamespace(display="spec.yaml"))
        LambdaMART.bind(cfg, node_id="ranked", graph=graph)
        return cfg

    LambdaMART.fit(_config(tmp_path), examples[0][:30], node_id="ranked").save()
    assert bound(False) and LambdaMART.artifact_status(bound(False)) is None
    problem = LambdaMART.artifact_status(bound(True))
    assert "stale" in problem and "without the 'model' input" in problem
    with pytest.raises(ModelNotTrainedError, match="stale.*run `llmrec train spec.yaml`"):
        asyncio.run(LambdaMART(bound(True)).start())
    LambdaMART.fit(_config(tmp_path), _with_model(examples[0][:30], demo_model), node_id="ranked").save(force=True)
    assert LambdaMART.artifact_status(bound(True)) is None
    assert "with the 'model' input" in LambdaMART.artifact_status(bound(False))


def test_embedding_features_need_the_model_input(tmp_path):
    spec = write_spec(tmp_path, """
        name: bad
        inputs: {user_id: string}
        resources:
          data: {type: dataset, config: {name: demo, split: user}}
        nodes:
          profile:
            type: user.profile
            inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
          popular:
            type: retrieve.popular
            inputs: {interactions: "${resources.data.train}"}
          ranked:
            type: rank.lambdamart
            config: {model_path: models, features: [rank, history_max_cosine, category_centroid_cosine]}
            inputs: {candidates: "${popular}", catalog: "${resources.data.catalog}", profile: "${profile}"}
        outputs: {ranked: "${ranked}"}
    """)
    errors = "\n".join(errors_of(spec))
    assert "features 'history_max_cosine', 'category_centroid_cosine' need the 'model' input" in errors
    assert "unknown feature" not in errors
