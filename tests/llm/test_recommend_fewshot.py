"""llm.recommend in the book's fine-tuning format (recommend_book.j2) and with few-shot examples drawn from other
users: the prompt is exactly the one `llmrec finetune` trains on, examples are user/assistant turns."""

from __future__ import annotations

import asyncio
import json

from llmrec.data.datasets import load_dataset
from llmrec.finetune.data import render_prompt
from llmrec.nodes.llm_tasks import Recommend, RecommendConfig
from llmrec.nodes.user import Profile
from llmrec.testing import FakeProvider, write_spec
from llmrec.api import check


def _setup():
    ds = load_dataset("demo", split="temporal", n_users=30, n_items=60)
    profile = asyncio.run(Profile(Profile.Config()).run(ds.catalog, ds.train, "u3"))
    fake = FakeProvider(lambda r: {"items": list(r.choices[0].values[:3])})
    return ds, profile, fake


def test_the_book_prompt_is_the_fine_tuning_prompt() -> None:
    ds, profile, fake = _setup()
    node = Recommend(RecommendConfig(template_file="recommend_book.j2", n=3, list_options=0))
    asyncio.run(node.run(model=fake, catalog=ds.catalog, profile=profile))
    prompt = fake.requests[0].messages[-1].content
    liked = [ds.catalog[i] for i in profile.liked[-20:]]
    disliked = [ds.catalog[i] for i in profile.disliked[-20:]]
    assert prompt.rstrip("\n") == render_prompt(liked, disliked, 3)


def test_few_shot_examples_come_from_other_users_and_are_stable() -> None:
    ds, profile, fake = _setup()
    node = Recommend(RecommendConfig(template_file="recommend_book.j2", n=3, list_options=0, examples=2))
    asyncio.run(node.run(model=fake, catalog=ds.catalog, profile=profile, interactions=ds.train))
    asyncio.run(node.run(model=fake, catalog=ds.catalog, profile=profile, interactions=ds.train))
    first, second = (r.messages for r in fake.requests)
    assert [m.role for m in first] == ["user", "assistant", "user", "assistant", "user"]
    assert first == second  # the same examples for every request of a user (cacheable)
    for m in first[1:4:2]:
        answer = json.loads(m.content)["items"]
        assert answer and all(t in {i.title for i in ds.catalog} for t in answer)
    mine = {ds.catalog[i].title for i in profile.seen}
    assert first[0].content != first[-1].content
    assert first[0].content.startswith("I liked these movies:") and "Recommend the next" in first[0].content
    assert not mine >= {line[2:].rsplit(" [", 1)[0] for line in first[0].content.splitlines()[1:3]}


def test_examples_without_interactions_is_a_positioned_error(tmp_path) -> None:
    spec = write_spec(tmp_path, """
        name: fewshot
        inputs: {user_id: string}
        resources:
          data: {type: dataset, config: {name: demo, split: temporal}}
          model: {type: llm, config: {}}
        nodes:
          profile:
            type: user.profile
            inputs: {catalog: "${resources.data.catalog}", interactions: "${resources.data.train}", user_id: "${inputs.user_id}"}
          recs:
            type: llm.recommend
            config: {examples: 3}
            inputs: {model: "${resources.model}", profile: "${profile}", catalog: "${resources.data.catalog}"}
        outputs: {recs: "${recs}"}
    """)
    _, errors, _ = check(spec)
    assert any("'interactions' input" in e.message and e.location is not None for e in errors), errors
