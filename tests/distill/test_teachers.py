"""Pair scoring of a rec-LM and the two teachers (a rec-LM folder, any Provider: here a stub)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from llmrec.distill import DistillError, PairScorer, ProviderTeacher, RecLMTeacher, rec_lm_folder
from llmrec.distill.scoring import Encoder, sigmoid
from llmrec.distill.teachers import teacher_logits
from llmrec.llm.provider import Completion
from llmrec.reclm import RecLM, RecLMConfig, Vocab


@pytest.fixture(scope="module")
def random_rec(dataset):
    from llmrec.reclm.model import gpt2_config, new_model

    vocab = Vocab.from_catalog(dataset.catalog)
    config = RecLMConfig(size="tiny", max_events=6, dropout=0.0)
    return RecLM(new_model(gpt2_config(vocab, config), seed=1), vocab, config)


def test_the_encoder_gives_the_vocabularys_tokens(random_rec):
    vocab = random_rec.vocab
    events = [("m1", 4.0), ("nope", 5.0), ("m2", None), ("m3", 2.4), ("m4", float("nan"))] * 3
    for max_events in (0, 1, 4, 6, 100):
        encode = Encoder(vocab, max_events)
        assert list(encode(tuple(events))) == vocab.encode_events(events, max_events)
        assert list(encode(tuple(events))) == vocab.encode_events(events, max_events)  # memoised lookups


def test_pair_logits_are_log_probability_differences(random_rec, dataset):
    """Shared forward passes (prefixes, truncation to max_events, duplicates) give what RecLM.score gives."""
    history = [(it.item_id, it.rating) for it in dataset.train.history("u3")]
    histories = [tuple(history[:k]) for k in (0, 1, 3, 5, 6, 9, len(history))] + [tuple(history[:3])]
    pairs = [("m1", "m2"), ("m5", "m40"), ("m7", "m7"), ("m30", "m3"), ("m0", "m59"), ("m9", "m10"),
             ("m2", "m44"), ("m2", "m44")]
    z = PairScorer(random_rec).logits(histories, pairs)
    for h, (a, b), value in zip(histories, pairs, z):
        s = random_rec.score(list(h), [a, b])
        assert value == pytest.approx(float(s[0] - s[1]), abs=1e-5)
    assert z[2] == 0.0  # an item against itself
    unknown = PairScorer(random_rec).logits([(), (), ()], [("zz", "m1"), ("m1", "zz"), ("zz", "yy")])
    assert list(unknown) == [-np.inf, np.inf, 0.0]


def test_rec_lm_teacher_from_a_folder(teacher_rec, teacher_folder, prepared, tmp_path):
    teacher = RecLMTeacher(teacher_folder, temperature=2.0)
    assert teacher.name == teacher_rec.name and teacher.parameters == teacher_rec.parameters
    test = prepared.test
    z = PairScorer(teacher_rec).logits(test.histories, test.pairs)
    np.testing.assert_allclose(teacher.prefer(test.histories, test.pairs), sigmoid(z / 2.0), rtol=1e-6)
    np.testing.assert_allclose(teacher_logits(teacher, test.histories, test.pairs), np.clip(z / 2.0, -14, 14),
                               atol=0.02)
    with pytest.raises(DistillError, match="does not exist"):
        RecLMTeacher(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="is not a rec-LM folder"):
        rec_lm_folder(tmp_path / "empty")


class StubProvider:
    """A Provider that prefers, for each pairwise question, the item of the history's most frequent genre
    (from the item ids of the synthetic catalog: m0-m19 one genre, m20-m39 the next...)."""

    name = "stub"

    def __init__(self, mode: str = "scores", model: str = "genre-stub") -> None:
        self.mode = mode
        self.model = model
        self.requests = []

    async def complete(self, request):
        from llmrec.nodes.llm_tasks import PairAnswer

        self.requests.append(request)
        first, second = request.choices[0].values
        genres = [int(item[1:]) // 20 for item, _ in request.items.history]
        top = max(set(genres), key=genres.count) if genres else 0
        s = {i: (2.0 if int(i[1:]) // 20 == top else 0.0) for i in (first, second)}
        if self.mode == "fail" or (self.mode == "flaky" and len(self.requests) % 2 == 0):
            raise RuntimeError("no model here")
        if self.mode == "nonsense":
            return Completion(text='{"winner": "m999"}', parsed=PairAnswer(winner="m999"))
        winner = first if s[first] >= s[second] else second
        scores = s if self.mode == "scores" else {}
        return Completion(text=f'{{"winner": "{winner}"}}', parsed=PairAnswer(winner=winner), scores=scores)

    async def close(self):
        pass


def test_provider_teacher_asks_the_pairwise_question(prepared):
    test = prepared.test.subset(range(40))
    stub = StubProvider("scores")
    teacher = ProviderTeacher(stub, prepared.dataset.catalog, temperature=2.0)
    p = teacher.prefer(test.histories, test.pairs)
    request = stub.requests[0]
    first, second = test.pairs[0]
    assert request.schema.__name__ == "PairAnswer" and request.choices[0].path == "winner"
    assert request.choices[0].values == (first, second) and request.items.ids == (first, second)
    assert request.items.history == test.history(0)
    text = request.messages[-1].content
    assert f"id={first} | movie {first[1:]}" in text and "Which of these two" in text
    # with scores: sigmoid of the score difference / T
    assert set(np.round(p, 6)) <= {round(1 / (1 + np.exp(-1.0)), 6), 0.5, round(1 / (1 + np.exp(1.0)), 6)}
    assert teacher.failures == 0 and teacher.scored == 40 and teacher.name == "stub:genre-stub"
    assert 0.6 < float(np.mean((p > 0.5) == (test.label > 0.5))) + 0.5 * float(np.mean(p == 0.5))

    hard = ProviderTeacher(StubProvider("hard"), prepared.dataset.catalog).prefer(test.histories, test.pairs)
    assert set(hard) <= {0.0, 1.0}
    np.testing.assert_array_equal(hard, (p >= 0.5).astype(float))
    z = teacher_logits(ProviderTeacher(StubProvider("hard"), prepared.dataset.catalog), test.histories, test.pairs)
    assert np.all(np.abs(z) > 13)  # a hard answer, clipped: logit(1 - 1e-6)

    flaky = ProviderTeacher(StubProvider("flaky"), prepared.dataset.catalog)
    p_flaky = flaky.prefer(test.histories, test.pairs)
    assert flaky.failures == 20 and np.sum(p_flaky == 0.5) >= 20  # a failed call counts as a tie
    with pytest.raises(DistillError, match="answered none of 40 .*the answer named neither item"):
        ProviderTeacher(StubProvider("nonsense"), prepared.dataset.catalog).prefer(test.histories, test.pairs)
    with pytest.raises(DistillError, match="answered none of 40 pairwise questions .*RuntimeError: no model here"):
        ProviderTeacher(StubProvider("fail"), prepared.dataset.catalog).prefer(test.histories, test.pairs)


def test_provider_teacher_inside_an_event_loop_says_to_await(prepared):
    teacher = ProviderTeacher(StubProvider(), prepared.dataset.catalog)
    test = prepared.test.subset(range(3))

    async def inside():
        with pytest.raises(DistillError, match="await aprefer"):
            teacher.prefer(test.histories, test.pairs)
        return await teacher.aprefer(test.histories, test.pairs)

    assert len(asyncio.run(inside())) == 3
