"""A synthetic movie catalog where the next liked titles follow from the prompt, and a tiny random-weight Llama
with a byte-level BPE tokenizer trained on that catalog's prompts, both built offline in the test session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmrec.data import Catalog, Interaction, Interactions, Item
from llmrec.data.splits import make_dataset

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

GENRES = {
    "Western": ["Dusty Trail", "Iron Saddle", "Lone Rider", "Red Canyon", "Gold Creek", "Last Posse", "High Mesa",
                "Wild Rope"],
    "Space": ["Star Voyage", "Moon Base", "Dark Orbit", "Nova Drift", "Comet Tail", "Red Giant", "Void Gate",
              "Solar Wind"],
    "Romance": ["Paris Kiss", "Summer Love", "Rose Letter", "First Dance", "Sweet Vow", "June Bride", "Lace Heart",
                "Soft Rain"],
    "Horror": ["Night Crypt", "Blood Moon", "Grave Shift", "Ghost Mill", "Dead Bell", "Black Attic", "Bone Yard",
               "Pale Doll"],
}


def synthetic_catalog() -> Catalog:
    items = []
    for g, (genre, titles) in enumerate(GENRES.items()):
        for i, title in enumerate(titles):
            items.append(Item(id=f"{genre[0].lower()}{i}", title=title, category=genre,
                              attributes={"genres": genre, "year": 1980 + 3 * g + i}))
    return Catalog(items)


def synthetic_log(n_users: int, seed: int = 0, prefix: str = "u", length: int = 8) -> Interactions:
    """Each user loves one genre and walks its titles in catalog order from a random start (rating 5, no title
    twice), disliking a title of another genre after every third (rating 1): the next liked titles follow from
    the prompt."""
    rng = random.Random(seed)
    genres = list(GENRES)
    events = []
    for u in range(n_users):
        user = f"{prefix}{u}"
        genre = genres[u % len(genres)]
        other = genres[(u + 1 + rng.randrange(len(genres) - 1)) % len(genres)]
        start = rng.randrange(len(GENRES[genre]))
        dislikes = iter(rng.sample(range(len(GENRES[other])), len(GENRES[other])))
        t = 1_000_000
        for k in range(min(length, len(GENRES[genre]))):
            if k % 3 == 2:
                events.append(Interaction(user_id=user, item_id=f"{other[0].lower()}{next(dislikes)}",
                                          event="rating", rating=1.0, timestamp=t))
                t += 10
            i = (start + k) % len(GENRES[genre])
            events.append(Interaction(user_id=user, item_id=f"{genre[0].lower()}{i}", event="rating", rating=5.0,
                                      timestamp=t))
            t += 10
    return Interactions(events)


def synthetic_dataset(n_users: int = 24, seed: int = 0):
    return make_dataset("synthetic-movies", synthetic_catalog(), synthetic_log(n_users, seed), "temporal")


def build_tiny_llama(folder: Path, corpus: list[str], vocab_size: int = 400, seed: int = 0, hidden: int = 64,
                     chat_template: bool = True, embedding_std: float = 0.1) -> Path:
    """A byte-level BPE trained on ``corpus`` and a 2-layer Llama of random weights, saved in ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>")
    if chat_template:
        hf_tok.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, bos_token_id=hf_tok.bos_token_id,
                         eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # tied embeddings this large let the (frozen) head give confident logits
        model.get_input_embeddings().weight.normal_(0.0, embedding_std)
    model.save_pretrained(folder)
    return folder


def corpus() -> list[str]:
    from llmrec.finetune.data import PairConfig, build_pairs

    pairs = build_pairs(synthetic_log(40, seed=99), synthetic_catalog(), PairConfig(n=3, pairs_per_user=4))
    text = [p.prompt + "\n" + p.answer for p in pairs]
    return text + [json.dumps({"items": titles}) for titles in GENRES.values()]


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    pytest.importorskip("peft")
    import torch

    torch.set_num_threads(1)
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-base"), corpus())
