"""Pairwise examples: what is drawn, from where, deterministically; accuracy and agreement."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from llmrec.distill import DistillConfig, accuracy, agreement, case_pairs, prepare, transfer_pairs
from llmrec.distill.pairs import is_liked


def test_importing_the_package_and_the_command_does_not_import_torch():
    code = ("import sys, llmrec.distill, llmrec.distill.cli, llmrec.distill.pairs; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_case_pairs_follow_the_protocol(dataset):
    pairs = case_pairs(dataset.catalog, dataset.train, dataset.test_cases, n=5, seed=0, held=dataset.test)
    assert len(pairs) == 5 * len(dataset.test_cases) and pairs.n_users == len(dataset.test_cases)
    by_user = {c.inputs["user_id"]: c for c in dataset.test_cases}
    for i in range(len(pairs)):
        user = pairs.users[i]
        preferred = pairs.first[i] if pairs.label[i] else pairs.second[i]
        other = pairs.second[i] if pairs.label[i] else pairs.first[i]
        assert preferred in by_user[user].relevant
        assert other not in dataset.train.seen(user) and other not in dataset.test.seen(user)
        assert pairs.history(i) == tuple((it.item_id, it.rating) for it in dataset.train.history(user))
    # both orders are shown, about half each: always answering "the first" is chance
    assert 0.35 < pairs.label.mean() < 0.65
    again = case_pairs(dataset.catalog, dataset.train, dataset.test_cases, n=5, seed=0, held=dataset.test)
    assert again.pairs == pairs.pairs and np.array_equal(again.label, pairs.label)
    other_seed = case_pairs(dataset.catalog, dataset.train, dataset.test_cases, n=5, seed=1, held=dataset.test)
    assert other_seed.pairs != pairs.pairs


def test_transfer_pairs_cut_each_users_window_at_liked_events(dataset):
    log = dataset.train
    pairs = transfer_pairs(dataset.catalog, log, window=8, min_context=2, seed=3, negatives=2)
    assert len(pairs) and len(pairs) % 2 == 0
    for i in range(len(pairs)):
        user = pairs.users[i]
        window = tuple((it.item_id, it.rating) for it in log.history(user))[-8:]
        history = pairs.history(i)
        assert len(history) >= 2 and window[: len(history)] == history  # a prefix of the window
        liked = window[len(history)]
        preferred = pairs.first[i] if pairs.label[i] else pairs.second[i]
        other = pairs.second[i] if pairs.label[i] else pairs.first[i]
        assert preferred == liked[0] and is_liked(liked[1], 4.0)
        assert other not in log.seen(user)
    capped = transfer_pairs(dataset.catalog, log, per_user=2, seed=3)
    assert max(np.bincount(capped.context)) <= 2


def test_prepare_never_draws_from_test(dataset):
    p = prepare(dataset, DistillConfig())
    test_events = {(it.user_id, it.item_id) for it in dataset.test}
    for pairs in (p.transfer, p.validation):
        for i in range(len(pairs)):
            assert not {(pairs.users[i], item) for item, _ in pairs.history(i)} & test_events
            preferred = pairs.first[i] if pairs.label[i] else pairs.second[i]
            assert (pairs.users[i], preferred) not in test_events
            # the unseen item is drawn without looking at test, so it may be one of the user's test items
    assert len(p.test) == 5 * len(dataset.test_cases)


def test_accuracy_and_agreement_count_ties_as_half():
    label = np.array([1.0, 0.0, 1.0, 0.0])
    assert accuracy(np.array([0.9, 0.1, 0.5, 0.7]), label) == (1 + 1 + 0.5 + 0) / 4
    assert agreement(np.array([0.9, 0.1, 0.5]), np.array([0.6, 0.8, 0.2])) == (1 + 0 + 0.5) / 3
    assert accuracy(np.array([]), np.array([])) == 0.0
