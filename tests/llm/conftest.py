"""A tiny random-weight causal LM and a byte-level BPE tokenizer, built offline once per test session."""

from __future__ import annotations

import json
import random

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_model(folder, vocab_size: int = 512, seed: int = 0, chat_template: bool = True) -> None:
    """Train a byte-level BPE on JSON-ish text and save it with a 2-layer Llama (hidden 64) of random weights."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = ["drama", "comedy", "space", "love", "war", "night", "river", "Amélie", "naïve", "Zoë", "city"]
    corpus = []
    for i in range(400):
        record = {
            "title": " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))),
            "score": round(rng.uniform(-5, 5), rng.randint(0, 4)),
            "items": [{"id": f"m{rng.randint(0, 99)}", "why": rng.choice(words)} for _ in range(rng.randint(0, 4))],
            "genre": rng.choice(["drama", "comedy", None]),
        }
        corpus.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
        corpus.append(f"user: recommend {rng.choice(words)} films\nassistant: sure, {rng.choice(words)}")
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
    hf_tok.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                         pad_token_id=hf_tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)  # initializer_range 0.02: near-uniform logits, every allowed token gets sampled
    model.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("llguidance")
    folder = tmp_path_factory.mktemp("tiny-llm")
    build_tiny_model(folder)
    return folder
