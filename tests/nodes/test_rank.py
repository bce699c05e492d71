"""rank.lambdamart called directly: features, fit + predict on demo data, artifacts, staleness, config checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from llmrec.data import generate_demo, make_dataset
from llmrec.errors import RunError
from llmrec.metrics import ndcg_at_k
from llmrec.data import Catalog, Item
from llmrec.nodes.rank.lambdamart import (
    BASE_FEATURES,
    CLOSE_COSINE,
    EMBEDDING_FEATURES,
    Featurizer,
    LambdaMART,
    LambdaMARTConfig,
    default_features,
)
from llmrec.nodes.rerank import FilterSeen
from llmrec.nodes.retrieve import Popular
from llmrec.nodes.user import Profile
from llmrec.testing import errors_of, write_spec
from llmrec.artifacts import ArtifactError, ArtifactStore
from llmrec.training import ModelNotTrainedError, Target, TrainingError, TrainingExample, fit_target, standalone_start
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


def _target(cfg: LambdaMARTConfig, inputs=()) -> Target:
    return Target("node", "ranked", LambdaMART, cfg, frozenset(inputs))


def _fit(cfg: LambdaMARTConfig, examples, force: bool = False, inputs=()):
    """Train outside a spec, as `llmrec train` does: (verified artifact, written?)."""
    artifact, written, _ = fit_target(_target(cfg, inputs), examples=examples, force=force)
    return artifact, written


def _start(node: LambdaMART, inputs=()) -> LambdaMART:
    asyncio.run(node.start(standalone_start(_target(node.config, inputs))))
    return node


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
    artifact, written = _fit(cfg, train)
    assert written and artifact.meta["rows"] > 1000 and artifact.meta["positives"] > 0
    assert set(artifact.metrics) == {"ndcg@10", "input_order_ndcg@10", "train_seconds"}
    node = _start(LambdaMART(cfg))
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
    artifact, written = _fit(cfg, examples[0][:30])
    assert written is True
    folder = artifact.folder
    assert folder.name.startswith("ranked-") and sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.txt"]
    assert (cfg.model_path / "latest").read_text().strip() == folder.name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["features"] == artifact.meta["features"] and meta["params"]["n_estimators"] == 40
    assert {"data_hash", "params_hash", "created", "llmrec_version", "metrics", "files", "trainer"} <= set(meta)
    assert meta["files"]["model.txt"]["bytes"] == (folder / "model.txt").stat().st_size
    assert _fit(cfg, examples[0][:30])[1] is False  # same config and data: already there
    assert _fit(cfg, examples[0][:30], force=True)[1] is True
    assert not [p for p in cfg.model_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    node = _start(LambdaMART(cfg))
    assert node.artifact == folder
    ex = examples[1][0]
    first = node.predict(ex.inputs["candidates"], ex.inputs["catalog"], ex.inputs["profile"], ex.inputs["interactions"])
    again = _start(LambdaMART(cfg))
    np.testing.assert_array_equal(first, again.predict(**{k: ex.inputs[k] for k in ("candidates", "catalog", "profile",
                                                                                     "interactions")}))
    # a trainer that fails half-way leaves neither a folder nor a staging one behind, and latest untouched
    store = ArtifactStore(cfg.model_path, "broken")
    with pytest.raises(RuntimeError):
        with store.staging() as staging:
            staging.write("model.txt", "half")
            raise RuntimeError("trainer died")
    assert not list(cfg.model_path.glob("broken-*"))
    assert not [p for p in cfg.model_path.iterdir() if p.name.startswith(".")]
    assert (cfg.model_path / "latest").read_text().strip() == folder.name


@pytest.mark.parametrize("damage", ["truncate", "garbage_meta", "edit", "delete"])
def test_a_corrupt_artifact_is_an_error_naming_the_file_never_an_abort(tmp_path, examples, damage):
    """A truncated LightGBM model file used to kill the process with SIGABRT inside LightGBM."""
    cfg = _config(tmp_path)
    artifact, _ = _fit(cfg, examples[0][:20])
    model, meta = artifact.folder / "model.txt", artifact.folder / "meta.json"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    elif damage == "garbage_meta":
        meta.write_bytes(b"\x00\xffnot json")
    elif damage == "edit":
        text = model.read_text()
        model.write_text(text.replace("Tree=0", "Tree=9", 1))
    else:
        model.unlink()
    with pytest.raises(ArtifactError) as info:
        _start(LambdaMART(cfg))
    message = str(info.value)
    culprit = "meta.json" if damage == "garbage_meta" else ("ranked-" if damage == "delete" else "model.txt")
    assert culprit in message and "Retrain" not in message or "train" in message
    assert isinstance(info.value, RunError)


def test_missing_and_stale_artifacts(tmp_path, examples):
    cfg = _config(tmp_path)
    store = _target(cfg).store()
    assert "no trained model" in store.status(_target(cfg).params)
    with pytest.raises(ModelNotTrainedError, match="train it first") as info:
        _start(LambdaMART(cfg))
    assert isinstance(info.value, RunError)
    _fit(cfg, examples[0][:20])
    assert store.status(_target(cfg).params) is None
    changed = _target(_config(tmp_path, num_leaves=7))
    problem = changed.store().status(changed.params)
    assert "stale" in problem and "num_leaves" in problem
    assert store.find("nope") is None
    # k and model-independent settings do not make it stale
    assert store.status(_target(_config(tmp_path, k=3)).params) is None


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
    artifact, _ = _fit(cfg, with_model, inputs={"model"})
    assert artifact.meta["uses_model"] is True and artifact.meta["features"] == features
    node = _start(LambdaMART(cfg), inputs={"model"})
    ex = test[0]
    asyncio.run(node.warm(interactions=ex.inputs["interactions"], catalog=ex.inputs["catalog"], model=demo_model))
    out = asyncio.run(node.run(**ex.inputs, model=demo_model))
    assert sorted(out.ids) == sorted(ex.inputs["candidates"].ids)
    with pytest.raises(RunError, match="trained with embedding features.*'model' input"):
        asyncio.run(node.run(**ex.inputs))
    # asking for embedding features without giving a model is a training error, not NaN columns
    explicit = _config(tmp_path / "b", features=["rank", "history_max_cosine"])
    with pytest.raises(TrainingError, match="need the 'model' input"):
        _fit(explicit, train[:20])


def test_artifact_is_stale_when_the_model_input_changes(tmp_path, examples, demo_model):
    cfg = _config(tmp_path)
    _fit(cfg, examples[0][:30])
    without, with_model = _target(cfg), _target(cfg, {"model"})
    assert without.store().status(without.params) is None
    problem = with_model.store().status(with_model.params)
    assert "stale" in problem and "embedding_features" in problem
    with pytest.raises(ModelNotTrainedError, match="stale"):
        _start(LambdaMART(cfg), inputs={"model"})
    _fit(cfg, _with_model(examples[0][:30], demo_model), force=True, inputs={"model"})
    assert with_model.store().status(with_model.params) is None
    # the version trained without the model input is kept: switching back reuses it
    assert without.store().status(without.params) is None
    assert with_model.store().find(__import__("llmrec.artifacts").artifacts.params_hash(with_model.params))


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


def test_meta_json_naming_a_file_outside_the_artifact_is_corrupt(tmp_path, examples):
    """A hostile meta.json cannot make llmrec read (hash) files outside the artifact folder."""
    cfg = _config(tmp_path)
    artifact, _ = _fit(cfg, examples[0][:20])
    meta_file = artifact.folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["files"]["../../outside.txt"] = {"bytes": 1, "sha256": "0"}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        _start(LambdaMART(cfg))


NATIVE_VS_RANKER = """
import numpy as np, lightgbm
from llmrec.nodes.rank.lambdamart import LambdaMARTConfig, lambdarank_params
rng = np.random.default_rng(0)
x = rng.normal(size=(600, 6))
y = (x[:, 0] + 0.5 * rng.normal(size=600) > 0.8).astype(np.int32)
groups = [30] * 20
cfg = LambdaMARTConfig(model_path="unused", n_estimators=40, seed=3)
native = lightgbm.train(lambdarank_params(cfg), lightgbm.Dataset(x, y, group=groups), num_boost_round=40)
ranker = lightgbm.LGBMRanker(
    objective="lambdarank", n_estimators=cfg.n_estimators, learning_rate=cfg.learning_rate,
    num_leaves=cfg.num_leaves, min_child_samples=cfg.min_data_in_leaf, random_state=cfg.seed,
    n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1,
).fit(x, y, group=groups)
assert np.array_equal(native.predict(x), ranker.predict(x))
print("same")
"""


def test_native_training_is_the_model_lgbmranker_would_train():
    """lightgbm.train with lambdarank_params predicts exactly what LGBMRanker(objective="lambdarank") does (in a
    fresh process: this one may have loaded lightgbm without its scikit-learn estimators)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", NATIVE_VS_RANKER], capture_output=True, text=True)
    assert out.stdout.strip() == "same", out.stderr


def test_lightgbm_loads_without_importing_scikit_learn():
    import subprocess
    import sys

    code = ("import sys; from llmrec.nodes.rank.lambdamart import import_lightgbm; lgb = import_lightgbm(); "
            "print('sklearn' in sys.modules, hasattr(lgb, 'Booster')); import sklearn; print(sklearn.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "sklearn"]  # hidden while lightgbm loads, importable afterwards
