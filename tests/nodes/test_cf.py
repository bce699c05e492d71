"""Tests of the collaborative-filtering retrievers (llmrec/nodes/retrieve/cf.py): the algorithms against their
definitions on tiny matrices, planted tastes on the demo shop, cold starts, exclusions, determinism, specs,
and (with LLMREC_DATA_DIR) EASE against popularity on MovieLens 100K."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from llmrec.data import DemoDataset, Interaction, Interactions, generate_demo
from llmrec.metrics import ndcg_at_k
from llmrec.node import read_signature
from llmrec.nodes.retrieve.cf import (
    CF,
    NODE_TYPES,
    DecayConfig,
    ItemKNN,
    _matrix,
    als_user_factors,
    fit_als,
    fit_ease,
    fit_item_knn,
    fit_svd,
    recency_weights,
    top_k,
)
from llmrec.plugins import get_registry
from llmrec.testing import errors_of, run_spec, write_spec
from llmrec.types import Candidates

#: configs that suit the small demo shop (120 users, 300 items): fewer factors, a lighter lambda
DEMO_CONFIGS = {
    "svd": (CF, {"algorithm": "svd", "factors": 8}),
    "ease": (CF, {"algorithm": "ease", "regularization": 20}),
    "als": (CF, {"algorithm": "als", "factors": 8, "regularization": 1, "alpha": 5}),
    "item_knn": (ItemKNN, {"neighbours": 50}),
}


@pytest.fixture(scope="module")
def demo() -> DemoDataset:
    return generate_demo(seed=7)


def _log(*cells: tuple[str, str], rating: float | None = None) -> Interactions:
    return Interactions(
        Interaction(user_id=u, item_id=i, event="rating" if rating else "view", rating=rating, timestamp=n)
        for n, (u, i) in enumerate(cells)
    )


def _random_matrix(seed: int, users: int = 30, items: int = 12, density: float = 0.3) -> Interactions:
    rng = np.random.default_rng(seed)
    cells = [(f"u{u}", f"i{i}") for u in range(users) for i in range(items) if rng.random() < density]
    return _log(*cells)


def _preferred_share(demo: DemoDataset, ranked: dict[str, list[str]]) -> float:
    """Mean share of each user's list that falls in the user's planted categories."""
    shares = []
    for user in demo.users:
        ids = ranked[user.id]
        shares.append(sum(demo.catalog[i].category in user.preferred_categories for i in ids) / len(ids))
    return float(np.mean(shares))


# -- registration and declarations ------------------------------------------------------------------------------


def test_registered_with_strict_configs_and_declared_signatures() -> None:
    registry = get_registry(None)
    for cls in NODE_TYPES:
        assert registry.node_types.get(cls.name) is cls
        assert cls.description and "\n" not in cls.description
        with pytest.raises(ValidationError):
            cls.Config.model_validate({"no_such_key": 1})
        sig = read_signature(cls.run)
        assert sig.output is Candidates
        assert {n for n, p in sig.params.items() if p.required} == {"interactions", "user_id"}
        assert sig.params["exclude"].type == list[str] | None
    with pytest.raises(ValidationError):
        CF.Config(algorithm="svdpp")


def test_check_points_at_the_key(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        version: 1
        name: bad
        inputs: {user_id: {type: string}}
        resources: {demo: {type: demo.dataset}}
        nodes:
          cf:
            type: retrieve.cf
            config: {algorithm: ease, regularization: -1, factors: 0}
            inputs: {interactions: "${resources.demo.interactions}", user_id: "${inputs.user_id}"}
          knn:
            type: retrieve.item_knn
            config: {neighbours: 0}
            inputs: {interactions: "${resources.demo.interactions}", user_id: "${inputs.user_id}"}
        outputs: {a: "${cf}", b: "${knn}"}
    """)
    errors = errors_of(spec)
    assert len(errors) == 3, errors
    assert any("regularization must be positive" in e and "spec.yaml:8:" in e for e in errors)
    assert any("factors must be at least 1" in e for e in errors)
    assert any("neighbours must be at least 1" in e and "spec.yaml:12:" in e for e in errors)


def test_keys_the_algorithm_ignores_are_warnings() -> None:
    problems = CF.check(CF.Config(algorithm="ease", factors=16), None)  # type: ignore[arg-type]
    assert len(problems) == 1 and problems[0].warning and problems[0].field == "factors"
    assert CF.check(CF.Config(algorithm="als", factors=16, alpha=2), None) == []  # type: ignore[arg-type]


# -- the algorithms against their definitions --------------------------------------------------------------------


def test_top_k_orders_ties_by_index_and_skips_blocked() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5])
    assert top_k(scores, 3).tolist() == [1, 4, 0]
    assert top_k(scores, 4, np.array([1])).tolist() == [4, 0, 2, 5]
    assert top_k(scores, 10, np.array([0, 1, 2])).tolist() == [4, 5, 3]
    assert top_k(scores, 0).tolist() == [] and top_k(np.zeros(0), 3).tolist() == []


def test_ease_is_the_constrained_ridge_regression() -> None:
    matrix = _matrix(_random_matrix(1), "binary")
    X = matrix.X.toarray()
    lam = 3.0
    B = fit_ease(matrix, lam)
    assert np.allclose(np.diag(B), 0.0)
    for j in range(X.shape[1]):  # column j: ridge regression of item j on every other item
        others = [i for i in range(X.shape[1]) if i != j]
        A = X[:, others]
        expected = np.linalg.solve(A.T @ A + lam * np.eye(len(others)), A.T @ X[:, j])
        assert np.allclose(B[others, j], expected, atol=1e-8)


def test_pure_svd_projects_onto_the_top_right_singular_vectors() -> None:
    matrix = _matrix(_random_matrix(2), "binary")
    X = matrix.X.toarray()
    users, items = fit_svd(matrix, 4, seed=0)
    _, _, vt = np.linalg.svd(X)
    V = vt[:4].T
    assert np.allclose(users @ items.T, X @ V @ V.T, atol=1e-8)


def test_als_decreases_the_implicit_feedback_objective() -> None:
    matrix = _matrix(_random_matrix(3), "binary")
    X = matrix.X.toarray()

    def loss(U: np.ndarray, V: np.ndarray, reg: float, alpha: float) -> float:
        C = 1.0 + alpha * X
        return float((C * ((X > 0) - U @ V.T) ** 2).sum() + reg * ((U**2).sum() + (V**2).sum()))

    one = fit_als(matrix, 4, 0.5, 2.0, 1, seed=0)
    many = fit_als(matrix, 4, 0.5, 2.0, 15, seed=0)
    assert loss(*many, 0.5, 2.0) < loss(*one, 0.5, 2.0)  # alternating solves decrease the objective
    again = fit_als(matrix, 4, 0.5, 2.0, 15, seed=0)
    assert np.allclose(many[0] @ many[1].T, again[0] @ again[1].T, atol=1e-5)  # seeded: deterministic


def test_item_knn_is_summed_cosine_over_neighbourhoods() -> None:
    matrix = _matrix(_random_matrix(4), "binary")
    X = matrix.X.toarray()
    norms = np.linalg.norm(X, axis=0)
    cosine = (X.T @ X) / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    assert np.allclose(fit_item_knn(matrix, 100).toarray(), cosine)  # everyone is a neighbour
    W = fit_item_knn(matrix, 2, block=5).toarray()  # several blocks
    for j in range(X.shape[1]):  # each item keeps its 2 most similar items
        kept = np.flatnonzero(W[:, j])
        assert len(kept) == 2
        assert np.allclose(np.sort(W[kept, j]), np.sort(cosine[:, j])[-2:])
        assert np.allclose(W[kept, j], cosine[kept, j])


def test_rating_weighting_uses_the_latest_rating() -> None:
    log = Interactions([
        Interaction(user_id="a", item_id="x", event="rating", rating=2, timestamp=1),
        Interaction(user_id="a", item_id="x", event="rating", rating=5, timestamp=2),
        Interaction(user_id="a", item_id="y", event="click", timestamp=3),
    ])
    assert _matrix(log, "rating").X.toarray().tolist() == [[5.0, 2.0]]  # click: its event weight
    assert _matrix(log, "binary").X.toarray().tolist() == [[1.0, 1.0]]


# -- planted tastes on the demo shop -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEMO_CONFIGS))
async def test_cf_finds_the_planted_categories_better_than_popularity(demo: DemoDataset, name: str) -> None:
    cls, config = DEMO_CONFIGS[name]
    node = cls(cls.Config(**config))
    await node.warm(interactions=demo.interactions)
    assert node.last_fit_seconds is not None and node.last_fit_seconds >= 0
    ranked = {}
    for user in demo.users:
        out = await node.run(interactions=demo.interactions, user_id=user.id, k=10)
        assert len(out.items) == 10 and out.source == node.config.source
        assert not set(out.ids) & demo.interactions.seen(user.id)
        assert [c.score for c in out.items] == sorted((c.score for c in out.items), reverse=True)
        ranked[user.id] = out.ids
    popular = list(demo.interactions.popularity())
    by_popularity = {u.id: [i for i in popular if i not in demo.interactions.seen(u.id)][:10] for u in demo.users}
    cf_share, popular_share = _preferred_share(demo, ranked), _preferred_share(demo, by_popularity)
    assert cf_share > 0.5 and cf_share > 2 * popular_share, (cf_share, popular_share)


# -- cold start, exclusions, caching, determinism ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEMO_CONFIGS))
async def test_unknown_user_is_a_cold_start(demo: DemoDataset, name: str) -> None:
    cls, config = DEMO_CONFIGS[name]
    out = await cls(cls.Config(**config)).run(interactions=demo.interactions, user_id="newcomer")
    assert out == Candidates(items=[], source=cls.Config().source)


async def test_exclusions_and_k(demo: DemoDataset) -> None:
    node = CF(CF.Config(algorithm="ease", regularization=20, k=7))
    first = await node.run(interactions=demo.interactions, user_id="u3")
    assert len(first.items) == 7
    out = await node.run(interactions=demo.interactions, user_id="u3", exclude=first.ids[:3] + ["not-an-item"], k=4)
    assert out.ids == first.ids[3:7]
    assert (await node.run(interactions=demo.interactions, user_id="u3", k=0)).items == []
    keep_seen = CF(CF.Config(algorithm="ease", regularization=20, exclude_seen=False))
    out = await keep_seen.run(interactions=demo.interactions, user_id="u3", k=300)
    assert demo.interactions.seen("u3") <= set(out.ids)


async def test_fits_once_per_log_and_lazily_without_warm(demo: DemoDataset) -> None:
    node = ItemKNN(ItemKNN.Config())
    assert node.last_fit_seconds is None
    await node.run(interactions=demo.interactions, user_id="u1")  # not warmed: fits on first use
    model = node.model_for(demo.interactions)
    await node.run(interactions=demo.interactions, user_id="u2")
    assert node.model_for(demo.interactions) is model
    other = _log(("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"))
    assert (await node.run(interactions=other, user_id="a")).ids == ["z"]
    assert node.model_for(demo.interactions) is model


async def test_concurrent_first_requests_fit_once(demo: DemoDataset) -> None:
    fits = []

    class Counting(CF):
        def _fit(self, matrix):  # type: ignore[no-untyped-def]
            fits.append(matrix)
            return super()._fit(matrix)

    node = Counting(CF.Config(algorithm="ease", regularization=20))
    outs = await asyncio.gather(*(node.run(interactions=demo.interactions, user_id=f"u{i}") for i in range(1, 6)))
    assert len(fits) == 1 and all(len(o.items) == 50 for o in outs)


@pytest.mark.parametrize("algorithm", ["svd", "als"])
async def test_same_seed_same_answer(demo: DemoDataset, algorithm: str) -> None:
    config = dict(DEMO_CONFIGS[algorithm][1], seed=3)
    a = await CF(CF.Config(**config)).run(interactions=demo.interactions, user_id="u5", k=20)
    b = await CF(CF.Config(**config)).run(interactions=demo.interactions, user_id="u5", k=20)
    assert a == b


async def test_als_seed_changes_the_starting_point(demo: DemoDataset) -> None:
    config = DEMO_CONFIGS["als"][1]
    a = CF(CF.Config(**config, seed=1)).model_for(demo.interactions)
    b = CF(CF.Config(**config, seed=2)).model_for(demo.interactions)
    assert not np.allclose(a.user_factors, b.user_factors)  # type: ignore[attr-defined]


# -- recency decay -------------------------------------------------------------------------------------------------


def _two_tastes() -> Interactions:
    """Five users rated old-a and a-fan, five rated new-b and b-fan; user "me" rated old-a long ago, then new-b."""
    events = []
    for n in range(5):
        events += [Interaction(user_id=f"v{n}", item_id=i, timestamp=100 + t) for t, i in enumerate(("old-a", "a-fan"))]
        events += [Interaction(user_id=f"w{n}", item_id=i, timestamp=100 + t) for t, i in enumerate(("new-b", "b-fan"))]
    events += [Interaction(user_id="me", item_id="old-a", timestamp=10),
               Interaction(user_id="me", item_id="new-b", timestamp=10 + 86_400 * 30)]
    return Interactions(events)


DECAY_CONFIGS = {
    "svd": (CF, {"algorithm": "svd", "factors": 2}),
    "ease": (CF, {"algorithm": "ease", "regularization": 1}),
    "als": (CF, {"algorithm": "als", "factors": 2, "regularization": 0.1, "alpha": 10, "iterations": 30}),
    "item_knn": (ItemKNN, {"neighbours": 5}),
}


def _scores(cls: type, config: dict, log: Interactions, user: str = "me") -> dict[str, float]:
    node = cls(cls.Config(**config))
    out = node.recommend(node.model_for(log), user, 10)
    return {item.id: item.score for item in out.items}


@pytest.mark.parametrize("name", list(DECAY_CONFIGS))
@pytest.mark.parametrize("decay", [{"half_life": 1}, {"half_life_days": 7}, {"half_life": 1, "apply_to": "both"}])
def test_decay_raises_the_recent_items_neighbours(name: str, decay: dict) -> None:
    cls, config = DECAY_CONFIGS[name]
    log = _two_tastes()
    plain = _scores(cls, config, log)
    assert plain["b-fan"] == pytest.approx(plain["a-fan"], rel=1e-3, abs=1e-6)  # symmetric tastes: a tie
    decayed = _scores(cls, {**config, "decay": decay}, log)
    assert decayed["b-fan"] > decayed["a-fan"] + 1e-6, decayed  # the neighbour of the latest item rises
    assert list(decayed)[0] == "b-fan"


def test_decay_weights_and_ages() -> None:
    log = Interactions([Interaction(user_id="a", item_id=i, timestamp=t) for i, t in
                        (("x", 0), ("y", 86_400), ("z", 86_400), ("w", 3 * 86_400), ("x", 2 * 86_400))])
    matrix = _matrix(log, "binary")
    assert matrix.items == ["w", "x", "y", "z"]
    # ages in events: how many of the user's events are later (y and z share their second, so their age);
    # x's age is its latest event's
    assert matrix.age_events.tolist() == [0, 1, 2, 2]
    assert (matrix.age_seconds / 86_400).tolist() == [0, 1, 2, 2]
    assert recency_weights(matrix, DecayConfig(half_life=2)).tolist() == pytest.approx([1, 0.5**0.5, 0.5, 0.5])
    assert recency_weights(matrix, DecayConfig(half_life_days=1)).tolist() == pytest.approx([1, 0.5, 0.25, 0.25])
    both = recency_weights(matrix, DecayConfig(half_life=2, half_life_days=1))
    assert both.tolist() == pytest.approx([1, 0.5**1.5, 0.125, 0.125])  # the two weights multiply
    assert matrix.decayed(DecayConfig(half_life=2)).toarray()[0].tolist() == pytest.approx([1, 0.5**0.5, 0.5, 0.5])
    rated = _matrix(Interactions([Interaction(user_id="a", item_id="x", event="rating", rating=4, timestamp=0),
                                  Interaction(user_id="a", item_id="y", event="rating", rating=2, timestamp=5)]),
                    "rating")
    assert rated.decayed(DecayConfig(half_life=1)).toarray().tolist() == [[2.0, 2.0]]  # rating x weight


def test_query_decay_keeps_the_fitted_model_and_scores_weighted_rows() -> None:
    log = _random_matrix(5)
    decay = DecayConfig(half_life=3)
    matrix = _matrix(log, "binary")
    weighted = matrix.decayed(decay)
    ease = CF(CF.Config(algorithm="ease", regularization=3, decay={"half_life": 3})).model_for(log)
    B = fit_ease(matrix, 3)
    assert np.allclose(ease.weights, B)  # fitted on the plain matrix
    assert np.allclose(ease.scores(2), weighted[2].toarray().ravel() @ B)
    svd = CF(CF.Config(algorithm="svd", factors=3, decay={"half_life": 3})).model_for(log)
    V = fit_svd(matrix, 3, seed=0)[1]
    assert np.allclose(svd.scores(2), weighted[2].toarray().ravel() @ V @ V.T)
    fit_only = CF(CF.Config(algorithm="ease", regularization=3, decay={"half_life": 3, "apply_to": "fit"}))
    model = fit_only.model_for(log)
    assert np.allclose(model.weights, fit_ease(replace(matrix, X=weighted), 3))  # fitted on the weighted cells
    assert model.query is model.matrix.X and np.allclose(model.matrix.X.toarray(), matrix.X.toarray())


def test_als_user_factors_solve_what_implicit_solves() -> None:
    matrix = _matrix(_random_matrix(6), "binary")
    users, items = fit_als(matrix, 4, 0.5, 2.0, 30, seed=0)
    again = als_user_factors(items, matrix.X, 0.5, 2.0)
    # implicit's conjugate-gradient steps in float32 against the exact solve
    assert np.allclose(users @ items.T, again @ items.T, atol=0.05)


@pytest.mark.parametrize("name", list(DECAY_CONFIGS))
def test_no_decay_is_unchanged(name: str) -> None:
    cls, config = DECAY_CONFIGS[name]
    log = _random_matrix(7)
    node = cls(cls.Config(**config))
    assert node.config.decay is None
    model = node.model_for(log)
    assert model.query is model.matrix.X  # scores the plain rows it was fitted on
    plain = _matrix(log, "binary")
    scores = np.vstack([model.scores(r) for r in range(plain.X.shape[0])])
    if name == "ease":
        assert np.allclose(scores, plain.X.toarray() @ fit_ease(plain, 1))
    elif name == "svd":
        users, items = fit_svd(plain, 2, seed=0)
        assert np.allclose(scores, users @ items.T)
    elif name == "item_knn":
        assert np.allclose(scores, (plain.X @ fit_item_knn(plain, 5)).toarray())
    # a half-life far beyond any history weighs every cell ~1: the same lists
    far = cls(cls.Config(**config, decay={"half_life": 1e9}))
    for user in ("u1", "u2", "u3"):
        assert far.recommend(far.model_for(log), user, 5).ids == node.recommend(model, user, 5).ids


async def test_decay_fits_once_per_log_and_differs_per_config(demo: DemoDataset) -> None:
    plain = CF(CF.Config(algorithm="ease", regularization=20))
    decayed = CF(CF.Config(algorithm="ease", regularization=20, decay={"half_life": 5}))
    await decayed.warm(interactions=demo.interactions)
    model = decayed.model_for(demo.interactions)
    first = await decayed.run(interactions=demo.interactions, user_id="u4", k=10)
    assert decayed.model_for(demo.interactions) is model  # warm's model serves the requests
    assert first == decayed.recommend(model, "u4", 10)
    assert first != await plain.run(interactions=demo.interactions, user_id="u4", k=10)
    other = _log(("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"))
    assert (await decayed.run(interactions=other, user_id="a")).ids == ["z"]  # a new log: its own model
    assert decayed.model_for(demo.interactions) is model


def test_bad_decay_configs_are_positioned_spec_errors(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        version: 1
        name: bad-decay
        inputs: {user_id: {type: string}}
        resources: {demo: {type: demo.dataset}}
        nodes:
          zero:
            type: retrieve.cf
            config:
              algorithm: ease
              decay: {half_life: 0}
            inputs: {interactions: "${resources.demo.interactions}", user_id: "${inputs.user_id}"}
          empty:
            type: retrieve.item_knn
            config:
              decay: {apply_to: query}
            inputs: {interactions: "${resources.demo.interactions}", user_id: "${inputs.user_id}"}
          typo:
            type: retrieve.cf
            config:
              decay:
                half_lives: 10
                apply_to: sometimes
            inputs: {interactions: "${resources.demo.interactions}", user_id: "${inputs.user_id}"}
        outputs: {a: "${zero}", b: "${empty}", c: "${typo}"}
    """)
    errors = errors_of(spec)
    assert len(errors) == 4, errors
    assert any("decay.half_life" in e and "greater than 0" in e and "spec.yaml:10:" in e for e in errors), errors
    assert any("give half_life (events) and/or half_life_days" in e and "spec.yaml:15:" in e for e in errors), errors
    assert any("unknown key 'half_lives'" in e and "Did you mean 'half_life'?" in e and "spec.yaml:21:" in e
               for e in errors), errors
    assert any("decay.apply_to" in e and "spec.yaml:22:" in e for e in errors), errors


# -- through a spec ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEMO_CONFIGS))
async def test_each_algorithm_runs_in_a_spec(tmp_path: Path, name: str) -> None:
    cls, config = DEMO_CONFIGS[name]
    config_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in config.items()) + "}"
    spec = write_spec(tmp_path, f"""
        version: 1
        name: cf-{name}
        inputs:
          user_id: {{type: string}}
          k: {{type: integer, default: 5}}
        resources:
          demo: {{type: demo.dataset, config: {{seed: 7}}}}
        nodes:
          recs:
            type: {cls.name}
            config: {config_yaml}
            inputs:
              interactions: ${{resources.demo.interactions}}
              user_id: ${{inputs.user_id}}
              k: ${{inputs.k}}
        outputs:
          recommendations: ${{recs}}
    """)
    result = await run_spec(spec, {"user_id": "u1"})
    recs = result.outputs["recommendations"]
    demo = generate_demo(seed=7)
    assert len(recs.items) == 5 and not set(recs.ids) & demo.interactions.seen("u1")
    direct = await cls(cls.Config(**config)).run(interactions=demo.interactions, user_id="u1", k=5)
    assert recs.ids == direct.ids
    cold = await run_spec(spec, {"user_id": "stranger", "k": 3})
    assert cold.outputs["recommendations"].items == []


@pytest.mark.parametrize("name", ["movielens_cf.yaml", "movielens_ease.yaml"])
def test_movielens_specs_validate(name: str) -> None:
    spec = Path(__file__).resolve().parents[2] / "specs" / name
    assert errors_of(spec) == []  # without the data files that is a warning, not an error


# -- MovieLens 100K ------------------------------------------------------------------------------------------------


def _movielens():
    data_dir = os.environ.get("LLMREC_DATA_DIR")
    if not data_dir:
        pytest.skip("LLMREC_DATA_DIR is not set (MovieLens 100K lives there)")
    if not (Path(data_dir) / "ml-100k" / "u.data").is_file():
        pytest.skip(f"{data_dir}/ml-100k/u.data is absent")
    from llmrec.data.datasets import load_dataset

    return load_dataset("movielens-100k", split="temporal", data_dir=data_dir)


async def test_ease_beats_popularity_on_movielens() -> None:
    dataset = _movielens()
    node = CF(CF.Config(algorithm="ease", regularization=100))  # as specs/movielens_ease.yaml
    model = node.model_for(dataset.train)
    popular = list(dataset.train.popularity())
    ease, pop = [], []
    for case in dataset.test_cases:
        user = case.inputs["user_id"]
        ease.append(ndcg_at_k(node.recommend(model, user, 10).ids, case.relevant, 10))
        pop.append(ndcg_at_k([i for i in popular if i not in case.exclude][:10], case.relevant, 10))
    assert len(ease) == 943
    assert np.mean(ease) > 1.5 * np.mean(pop), (np.mean(ease), np.mean(pop))
