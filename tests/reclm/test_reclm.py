"""The rec-LM library: tokens, training (loss, early stopping, determinism, checkpoints), inference, storage."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from llmrec.data import Catalog, EvalCase, Interaction, Interactions, Item
from llmrec.metrics import ndcg_at_k
from llmrec.reclm import RecLM, RecLMConfig, RecLMError, TrainingInterrupted, Vocab, evaluate_ndcg, train_reclm
from llmrec.reclm.tokens import rating_token

GENRES = ("Action", "Comedy", "Drama")
PER_GENRE = 20
FAST = {"size": "tiny", "threads": 1, "device": "cpu", "batch_size": 16}


def synthetic(n_users: int = 150, seed: int = 0):
    """60 items in 3 genres; each user walks one genre in order (after item i comes item i+1 of its genre).

    Returns catalog, train log (all but the last two events), full log (all but the last), validation cases
    (second-to-last item) and test cases (last item)."""
    rng = random.Random(seed)
    items = [Item(id=f"m{g * PER_GENRE + j}", title=f"movie {g * PER_GENRE + j}", category=GENRES[g],
                  attributes={"genres": GENRES[g], "year": 1975 + 10 * (j % 3)})
             for g in range(len(GENRES)) for j in range(PER_GENRE)]
    train, full, validation, test = [], [], [], []
    for u in range(n_users):
        g, start, length = rng.randrange(len(GENRES)), rng.randrange(PER_GENRE), rng.randint(8, 14)
        sequence = [f"m{g * PER_GENRE + (start + k) % PER_GENRE}" for k in range(length)]
        user = f"u{u}"
        events = [Interaction(user_id=user, item_id=item, event="rating", rating=float(rng.randint(3, 5)),
                              timestamp=1000 + t) for t, item in enumerate(sequence)]
        train.extend(events[:-2])
        full.extend(events[:-1])
        validation.append(EvalCase(id=user, inputs={"user_id": user}, relevant=frozenset([sequence[-2]])))
        test.append(EvalCase(id=user, inputs={"user_id": user}, relevant=frozenset([sequence[-1]])))
    return Catalog(items), Interactions(train), Interactions(full), validation, test


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def trained(data):
    catalog, train, _, validation, _ = data
    return train_reclm(catalog, train, validation, RecLMConfig(**FAST, max_epochs=30, patience=30))


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reclm") / "model"
    trained.save(folder)
    return folder


def history_of(log: Interactions, user: str) -> list[tuple[str, float | None]]:
    return [(it.item_id, it.rating) for it in log.history(user)]


def states_equal(a: RecLM, b: RecLM) -> bool:
    import torch

    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- package, config, vocabulary ------------------------------------------------------------------------------


def test_importing_the_package_does_not_import_torch():
    code = "import sys, llmrec.reclm; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_config_presets_overrides_and_forbidden_keys():
    assert RecLMConfig(size="tiny").dimensions == (1, 32, 1)
    assert RecLMConfig().dimensions == (2, 64, 2)
    assert RecLMConfig(size="medium", n_layer=2).dimensions == (2, 128, 4)
    with pytest.raises(ValueError):
        RecLMConfig(epochs=3)
    with pytest.raises(ValueError, match="multiple"):
        RecLMConfig(n_embd=30, n_head=4)


def test_vocab_tokens_sequences_and_composition(data):
    catalog = data[0]
    vocab = Vocab.from_catalog(catalog)
    assert vocab.tokens[:2] == ("<pad>", "<bos>")
    assert vocab.n_items == 60 and vocab.item_token("m0") == 2 and vocab.item_token("nope") is None
    assert {"genre:Action", "genre:Comedy", "genre:Drama", "year:1970s", "year:1980s", "year:1990s",
            "rating:1", "rating:5", "rating:none"} <= set(vocab.tokens)
    assert rating_token(4.6) == "rating:5" and rating_token(0.5) == "rating:1" and rating_token(None) == "rating:none"
    ids = vocab.encode_events([("m1", 4.0), ("nope", 5.0), ("m2", None), ("m3", 2.0)], max_events=2)
    assert [vocab.tokens[i] for i in ids] == ["<bos>", "item:m2", "rating:none", "item:m3", "rating:2"]
    index, weight = vocab.composition()
    row = vocab.item_token("m0")
    composed = {vocab.tokens[j]: float(w) for j, w in zip(index[row], weight[row]) if w}
    assert composed == {"item:m0": 1.0, "genre:Action": 1.0, "year:1970s": 1.0}
    bos = vocab.id_of("<bos>")
    assert {vocab.tokens[j]: float(w) for j, w in zip(index[bos], weight[bos]) if w} == {"<bos>": 1.0}
    assert Vocab.from_dict(json.loads(vocab.to_json())) == vocab


def test_multi_genre_items_average_their_genre_embeddings():
    catalog = Catalog([Item(id="1", title="a", attributes={"genres": "Action|Comedy"}),
                       Item(id="2", title="b", category="Books")])
    vocab = Vocab.from_catalog(catalog)
    index, weight = vocab.composition()
    first = {vocab.tokens[j]: float(w) for j, w in zip(index[2], weight[2]) if w}
    second = {vocab.tokens[j]: float(w) for j, w in zip(index[3], weight[3]) if w}
    assert first == {"item:1": 1.0, "genre:Action": 0.5, "genre:Comedy": 0.5}
    assert second == {"item:2": 1.0, "genre:Books": 1.0}


# -- training -------------------------------------------------------------------------------------------------


def test_loss_falls_and_metrics_are_reported(trained):
    losses = [h["train_loss"] for h in trained.history]
    assert losses[-1] < 0.7 * losses[0]
    m = trained.metrics
    assert set(m) >= {"best_epoch", "epochs_run", "val_ndcg10", "train_loss", "seconds", "parameters"}
    assert m["epochs_run"] == 30 and 1 <= m["best_epoch"] <= 30
    assert m["val_ndcg10"] == max(h["val_ndcg10"] for h in trained.history)
    assert m["parameters"] == trained.parameters > 0
    assert trained.name.startswith("reclm-tiny-")


def test_beats_popularity_on_held_out_next_items(data, trained):
    catalog, _, full, _, test = data
    popularity = list(full.popularity())
    popularity += [i for i in catalog.ids if i not in set(popularity)]
    pop = np.mean([ndcg_at_k([i for i in popularity if i not in full.seen(c.id)], c.relevant, 10) for c in test])
    model = evaluate_ndcg(trained, full, test)
    assert model > pop + 0.3, (model, pop)


def test_early_stopping_stops_before_max_epochs(data):
    catalog, train, _, validation, _ = data
    # A relevant id no model can rank: validation NDCG never improves after the first epoch.
    hopeless = [EvalCase(id=c.id, inputs=c.inputs, relevant=frozenset(["not-an-item"])) for c in validation]
    seen = []
    rec = train_reclm(catalog, train, hopeless, RecLMConfig(**FAST, max_epochs=20, patience=2),
                      progress=seen.append)
    assert rec.metrics["epochs_run"] == 3 and rec.metrics["best_epoch"] == 1
    assert [p["epoch"] for p in seen] == [1, 2, 3]
    assert set(seen[0]) >= {"epoch", "max_epochs", "train_loss", "val_ndcg10", "best_epoch", "seconds", "eta_seconds"}
    assert seen[-1]["eta_seconds"] == 0


def test_a_fixed_number_of_epochs_needs_no_validation_and_keeps_the_last(data):
    catalog, train, _, validation, _ = data
    seen = []
    rec = train_reclm(catalog, train, (), RecLMConfig(**FAST, max_epochs=40, patience=1), progress=seen.append,
                      epochs=2)
    assert [p["epoch"] for p in seen] == [1, 2] and rec.metrics["best_epoch"] == 2
    assert all(p["val_ndcg10"] != p["val_ndcg10"] for p in seen)  # nan: nothing was validated
    same = train_reclm(catalog, train, validation, RecLMConfig(**FAST), epochs=2)  # cases given: still 2 epochs
    assert same.metrics["epochs_run"] == 2
    with pytest.raises(RecLMError, match="at least 1"):
        train_reclm(catalog, train, (), RecLMConfig(**FAST), epochs=0)


def test_same_seed_same_weights_other_seed_other_weights(data):
    catalog, train, _, validation, _ = data
    config = RecLMConfig(**FAST, max_epochs=2)
    a = train_reclm(catalog, train, validation, config)
    b = train_reclm(catalog, train, validation, config)
    c = train_reclm(catalog, train, validation, config.model_copy(update={"seed": 1}))
    assert states_equal(a, b) and a.name == b.name
    assert not states_equal(a, c)


def test_resume_from_checkpoint_continues_from_the_saved_epoch(data, tmp_path):
    catalog, train, _, validation, _ = data
    config = RecLMConfig(**FAST, max_epochs=4, patience=10)
    straight = train_reclm(catalog, train, validation, config)
    calls = []
    with pytest.raises(TrainingInterrupted) as stopped:
        train_reclm(catalog, train, validation, config, checkpoint_dir=tmp_path,
                    should_stop=lambda: len(calls) >= 2, progress=calls.append)
    assert stopped.value.epoch == 2 and stopped.value.checkpoint == tmp_path / "checkpoint.safetensors"
    assert stopped.value.checkpoint.is_file() and stopped.value.result.metrics["epochs_run"] == 2
    resumed_epochs = []
    resumed = train_reclm(catalog, train, validation, config, checkpoint_dir=tmp_path,
                          progress=lambda p: resumed_epochs.append(p["epoch"]))
    assert resumed_epochs == [3, 4]
    assert resumed.metrics["epochs_run"] == 4 and [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert states_equal(resumed, straight)  # optimizer state and per-epoch randomness restored exactly
    # an incompatible checkpoint (other seed) is ignored: training starts at epoch 1
    fresh_epochs = []
    train_reclm(catalog, train, validation, config.model_copy(update={"seed": 5, "max_epochs": 1}),
                checkpoint_dir=tmp_path, progress=lambda p: fresh_epochs.append(p["epoch"]))
    assert fresh_epochs == [1]


def test_bad_training_inputs_raise_clear_errors(data):
    catalog, train, _, validation, _ = data
    with pytest.raises(RecLMError, match="empty catalog"):
        train_reclm(Catalog([]), train, validation, RecLMConfig(**FAST))
    with pytest.raises(RecLMError, match="empty training log"):
        train_reclm(catalog, Interactions([]), validation, RecLMConfig(**FAST))
    with pytest.raises(ValueError, match="validation cases"):
        train_reclm(catalog, train, [], RecLMConfig(**FAST))
    other = Interactions([Interaction(user_id="u", item_id="zz", timestamp=1)])
    with pytest.raises(RecLMError, match="names an item"):
        train_reclm(catalog, other, validation, RecLMConfig(**FAST))


# -- inference ------------------------------------------------------------------------------------------------


def test_score_is_a_log_softmax_over_items(data, trained):
    full = data[2]
    history = history_of(full, "u3")
    everything = trained.score(history, trained.item_ids)
    assert everything.shape == (60,) and math.isclose(float(np.logaddexp.reduce(everything)), 0.0, abs_tol=1e-4)
    scores = trained.score(history, ["m1", "not-an-item", "m2"])
    assert scores[1] == -np.inf and np.isfinite(scores[[0, 2]]).all()
    # unknown items in the history are skipped
    noisy = [("junk", 5.0), *history[:3], ("more-junk", None), *history[3:]]
    assert np.array_equal(trained.score(noisy, trained.item_ids), everything)


def test_the_model_predicts_the_pattern(data, trained):
    full = data[2]
    history = history_of(full, "u0")
    last = int(history[-1][0][1:])
    expected = f"m{last // PER_GENRE * PER_GENRE + (last % PER_GENRE + 1) % PER_GENRE}"
    top = trained.recommend(history, 3, trained.item_ids)
    assert expected in [item for item, _ in top]


def test_score_batch_matches_single_scoring(data, trained):
    full = data[2]
    users = ["u1", "u2", "u7", "u11"]
    histories = [history_of(full, u) for u in users]
    histories[2] = histories[2][:2]  # rows of very different lengths share one padded batch
    candidates = [["m1", "m5"], trained.item_ids, ["m40", "x"], []]
    batch = trained.score_batch(histories, candidates)
    for history, cands, row in zip(histories, candidates, batch):
        assert np.allclose(row, trained.score(history, cands), atol=1e-5)
    with pytest.raises(ValueError):
        trained.score_batch(histories, candidates[:2])


def test_recommend_returns_n_distinct_allowed_unseen_items(data, trained):
    full = data[2]
    history = history_of(full, "u4")
    seen = {item for item, _ in history}
    allowed = [i for i in trained.item_ids if i not in seen][:25]
    recs = trained.recommend(history, 10, allowed + allowed[:5])
    ids = [item for item, _ in recs]
    assert len(ids) == 10 == len(set(ids)) and set(ids) <= set(allowed)
    scores = [s for _, s in recs]
    assert scores == sorted(scores, reverse=True)
    assert len(trained.recommend(history, 100, allowed)) == len(allowed)
    # seen and unknown ids are masked, not returned
    mixed = trained.recommend(history, 10, [*seen, "unknown", allowed[0]])
    assert [item for item, _ in mixed] == [allowed[0]]
    assert trained.recommend(history, 0, allowed) == []
    assert trained.recommend([], 5, allowed)  # cold start: <bos> only


def test_concurrent_calls_from_threads_agree(data, trained):
    full = data[2]
    histories = [history_of(full, f"u{i}") for i in range(16)]
    expected = [trained.score(h, trained.item_ids) for h in histories]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda h: trained.score(h, trained.item_ids), histories * 3))
    for i, row in enumerate(results):
        assert np.array_equal(row, expected[i % 16])


def test_quantized_copy_keeps_the_ranking_and_is_smaller(data, trained):
    full = data[2]
    quantized = trained.quantized()
    report = quantized.quantization
    assert report["conv1d_converted_to_linear"] == 4 * trained.gpt2_config.n_layer
    assert len(report["quantized_layers"]) == 4 * trained.gpt2_config.n_layer + 1  # and lm_head
    assert report["bytes_after"] < report["bytes_before"] and trained.quantization is None
    assert quantized.name.endswith("-int8")
    overlaps = []
    for user in ("u0", "u5", "u9", "u13"):
        history = history_of(full, user)
        a = {i for i, _ in trained.recommend(history, 10, trained.item_ids)}
        b = {i for i, _ in quantized.recommend(history, 10, trained.item_ids)}
        overlaps.append(len(a & b))
    assert min(overlaps) >= 7, overlaps
    with pytest.raises(RecLMError, match="quantized"):
        quantized.save("unused")


# -- storage --------------------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_scores(data, trained, saved):
    assert {p.name for p in saved.iterdir()} == {"model.safetensors", "vocab.json", "config.json"}
    config = json.loads((saved / "config.json").read_text())
    assert config["gpt2"]["n_layer"] == 1 and config["reclm"]["size"] == "tiny"
    assert config["metrics"]["best_epoch"] == trained.metrics["best_epoch"]
    loaded = RecLM.load(saved)
    assert loaded.name == trained.name and loaded.item_ids == trained.item_ids
    assert loaded.parameters == trained.parameters and loaded.metrics == json.loads(json.dumps(trained.metrics))
    full = data[2]
    for user in ("u0", "u10", "u20"):
        history = history_of(full, user)
        assert np.array_equal(loaded.score(history, trained.item_ids), trained.score(history, trained.item_ids))


def copy_model(saved, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir(parents=True)
    for path in saved.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_truncated_weights_raise_reclm_error_naming_the_file(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    for cut in (len(data) // 2, 10, 0):
        (folder / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(RecLMError, match=r"model\.safetensors is corrupt"):
            RecLM.load(folder)


def test_garbage_vocab_and_config_raise_reclm_error_naming_the_file(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    for garbage in (b"\x00\xff garbage", b'{"format": "llmrec.reclm.vocab/1", "tokens": 3}', b"[]"):
        (folder / "vocab.json").write_bytes(garbage)
        with pytest.raises(RecLMError, match=r"vocab\.json is corrupt"):
            RecLM.load(folder)
    folder = copy_model(saved, tmp_path / "again")
    (folder / "config.json").write_text('{"format": "llmrec.reclm/1", "gpt2": {"n_embd": -1}}')
    with pytest.raises(RecLMError, match=r"config\.json is corrupt"):
        RecLM.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(RecLMError, match=r"config\.json is missing"):
        RecLM.load(folder)


def test_weights_from_another_model_are_refused(saved, trained, data, tmp_path):
    folder = copy_model(saved, tmp_path)
    catalog, train, _, validation, _ = data
    other = train_reclm(catalog, train, validation, RecLMConfig(**FAST, max_epochs=1, n_embd=16))
    other.save(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(RecLMError, match=r"model\.safetensors is corrupt.*shape"):
        RecLM.load(folder)
