"""Dynamic int8 quantization (torch.ao.quantization.quantize_dynamic on every linear layer) vs float32, on CPU.

A. The transformers provider (``quantize: int8``) on a random-weight Llama of about 4M parameters (4 layers,
   hidden 256, byte-level BPE of 4,096 tokens), built in a temporary folder. Workload per round: greedy
   constrained generations (a schema with a Choices list over catalog titles) and greedy free text of a fixed
   length (EOS ignored), one call at a time. Quality: how often int8's greedy output is exactly fp32's, how long
   the common prefix is, and the error of the next-token logits (teacher-forced on fp32's outputs).
B. The rec-LM (``llmrec.reclm``, GPT-2 over item tokens, size "small"), trained for a few epochs on MovieLens 100K
   (temporal split; ``$LLMREC_DATA_DIR``) or, when that is missing, on a synthetic log, and its ``quantized()``
   copy. Workload per round: ``evaluate_ndcg`` over every test user (full ranking). Quality: NDCG@10.

The two contenders alternate over the rounds (and which goes first), 1 torch thread, and each round's CPU time
(``time.process_time``) is recorded; the tables give medians and the int8/fp32 ratio of the medians.

    LLMREC_DATA_DIR=/path/to/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quantization.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from llmrec.llm.local import TransformersProvider
from llmrec.llm.provider import Choices, CompletionRequest, Message
from results_md import RESULTS, write_section

ROOT = Path(__file__).resolve().parents[1]
MARKER = "## Dynamic int8 quantization"
COMMAND = "LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quantization.py --write"


class Rec(BaseModel):
    title: str
    reason: str = Field(max_length=24)


class Answer(BaseModel):
    summary: str = Field(max_length=24)
    recommendations: list[Rec] = Field(min_length=1, max_length=3)


def titles() -> tuple[tuple[str, ...], str]:
    data = os.environ.get("LLMREC_DATA_DIR")
    path = Path(data) / "ml-100k" / "u.item" if data else None
    if path is not None and path.is_file():
        names = [line.split("|")[1] for line in path.read_text(encoding="latin-1").splitlines() if line]
        return tuple(dict.fromkeys(names)), "MovieLens 100K titles"
    rng = random.Random(0)
    words = ["Night", "River", "Story", "Love", "War", "City", "Heat", "Amélie", "Ghost", "Star", "Road"]
    return tuple(dict.fromkeys(f"{' '.join(rng.choice(words) for _ in range(rng.randint(1, 4)))} ({1930 + i % 70})"
                               for i in range(1682))), "synthetic titles"


def build_llama(folder: Path, catalog: tuple[str, ...], seed: int = 0) -> int:
    """A byte-level BPE trained on JSON answers over ``catalog`` and a random-weight Llama; returns parameters."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = []
    for _ in range(3000):
        recs = [{"title": rng.choice(catalog), "reason": "because you liked it"} for _ in range(rng.randint(1, 3))]
        corpus.append(json.dumps({"summary": "films", "recommendations": recs}, separators=(",", ":"),
                                 ensure_ascii=False))
        corpus.append(f"user: I liked {rng.choice(catalog)}. assistant: try {rng.choice(catalog)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    hf.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def prompts(catalog: tuple[str, ...], n: int, seed: int) -> list[tuple[Message, ...]]:
    rng = random.Random(seed)
    return [(Message("system", "You recommend films. Answer in JSON."),
             Message("user", f"I liked {rng.choice(catalog)} and {rng.choice(catalog)}. Recommend three films."))
            for _ in range(n)]


def requests(catalog: tuple[str, ...], messages: list[tuple[Message, ...]],
             free_tokens: int) -> list[CompletionRequest]:
    choices = (Choices("recommendations[].title", catalog),)
    out = [CompletionRequest(m, schema=Answer, choices=choices, temperature=0.0) for m in messages]
    out += [CompletionRequest(m, temperature=0.0, max_tokens=free_tokens, extra={"ignore_eos": True})
            for m in messages]
    return out


async def generate(provider: TransformersProvider, reqs: list[CompletionRequest]) -> list[Any]:
    return [await provider.complete(r) for r in reqs]


def token_ids(provider: TransformersProvider, completion: Any) -> list[int]:
    return provider.tokenizer()(completion.text, add_special_tokens=False)["input_ids"]


def logit_errors(fp32: TransformersProvider, int8: TransformersProvider, reqs: list[CompletionRequest],
                 outs: list[Any]) -> dict[str, float]:
    """Next-token logits of both models on each prompt + fp32's own output (teacher forcing): relative L2 error
    per position (median), max absolute error, and how often the argmax agrees."""
    import torch

    from llmrec.llm.local import render_prompt

    tok = fp32.tokenizer()
    rel, worst, agree, total, gaps, errs = [], 0.0, 0, 0, [], []
    for req, out in zip(reqs, outs):
        text, templated = render_prompt(tok, req.messages)
        ids = tok(text + out.text, add_special_tokens=not templated)["input_ids"]
        x = torch.tensor([ids])
        with torch.inference_mode():
            a = fp32._loaded.model(input_ids=x).logits[0].float()
            b = int8._loaded.model(input_ids=x).logits[0].float()
        centred = a - a.mean(dim=-1, keepdim=True)
        rel += ((a - b).norm(dim=-1) / centred.norm(dim=-1)).tolist()
        worst = max(worst, float((a - b).abs().max()))
        errs += (a - b).abs().max(dim=-1).values.tolist()
        top2 = a.topk(2, dim=-1).values
        gaps += (top2[:, 0] - top2[:, 1]).tolist()
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    return {"rel_l2_median": statistics.median(rel), "max_abs": worst, "argmax_agree": agree / total,
            "positions": total, "gap_median": statistics.median(gaps), "err_median": statistics.median(errs)}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def bench_provider(rounds: int, n: int, free_tokens: int) -> dict[str, Any]:
    catalog, source = titles()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = build_llama(folder, catalog)
        contenders = {"fp32": TransformersProvider(str(folder), max_batch=1),
                      "int8": TransformersProvider(str(folder), max_batch=1, quantize="int8")}
        for p in contenders.values():
            p.load()
        reqs = requests(catalog, prompts(catalog, n, seed=1), free_tokens)
        warm = requests(catalog, prompts(catalog, 2, seed=99), 8)
        for p in contenders.values():  # grammars compiled, kernels warmed
            asyncio.run(generate(p, warm))
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        outs: dict[str, list[Any]] = {}
        tokens: dict[str, int] = {}
        for r in range(rounds):
            order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
            for name in order:
                t0 = time.process_time()
                done = asyncio.run(generate(contenders[name], reqs))
                cpu[name].append(time.process_time() - t0)
                if name in outs:
                    assert [c.text for c in done] == [c.text for c in outs[name]], "greedy must repeat itself"
                outs[name] = done
                tokens[name] = sum(c.usage.completion_tokens for c in done)
        fp32, int8 = contenders["fp32"], contenders["int8"]
        structured = list(range(n))
        free = list(range(n, 2 * n))
        same = {part: sum(outs["fp32"][i].text == outs["int8"][i].text for i in idx)
                for part, idx in (("structured", structured), ("free", free))}
        prefix = []
        for i in range(2 * n):
            a, b = token_ids(fp32, outs["fp32"][i]), token_ids(fp32, outs["int8"][i])
            prefix.append(common_prefix(a, b) / max(len(a), 1))
        valid = sum(outs["int8"][i].parsed is not None for i in structured)
        errors = logit_errors(fp32, int8, reqs, outs["fp32"])
        report = int8.quantization
    return {"params": params, "source": source, "cpu": cpu, "tokens": tokens, "same": same, "n": n,
            "prefix": statistics.mean(prefix), "valid": valid, "errors": errors, "report": report,
            "free_tokens": free_tokens}


def reclm_data() -> tuple[Any, Any, list[Any], str]:
    """(catalog, training log, test cases, source): MovieLens 100K temporal split, else a synthetic log."""
    from llmrec.data import Catalog, EvalCase, Interaction, Interactions, Item
    from llmrec.errors import DataError

    try:
        from llmrec.data.datasets import load_dataset

        ds = load_dataset("movielens-100k", split="temporal")
        return ds.catalog, ds.train, list(ds.test_cases), "MovieLens 100K, temporal split"
    except DataError:
        pass
    rng = random.Random(0)  # 300 items in 6 genres; each user walks one genre in order
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    items = [Item(id=f"m{g * 50 + j}", title=f"movie {g * 50 + j}", category=genres[g],
                  attributes={"genres": genres[g], "year": 1970 + 5 * (j % 8)}) for g in range(6) for j in range(50)]
    train, cases = [], []
    for u in range(900):
        g, start, length = rng.randrange(6), rng.randrange(50), rng.randint(10, 40)
        seq = [f"m{g * 50 + (start + k) % 50}" for k in range(length)]
        train += [Interaction(user_id=f"u{u}", item_id=i, event="rating", rating=float(rng.randint(3, 5)),
                              timestamp=t) for t, i in enumerate(seq[:-1])]
        cases.append(EvalCase(id=f"u{u}", inputs={"user_id": f"u{u}"}, relevant=frozenset([seq[-1]])))
    return Catalog(items), Interactions(train), cases, "synthetic log (LLMREC_DATA_DIR unset or ml-100k missing)"


def bench_reclm(rounds: int, epochs: int) -> dict[str, Any]:
    from llmrec.reclm import RecLMConfig, evaluate_ndcg, train_reclm

    catalog, train, cases, source = reclm_data()
    t0 = time.perf_counter()
    rec = train_reclm(catalog, train, [], RecLMConfig(size="small", threads=1, device="cpu"), epochs=epochs)
    trained_s = time.perf_counter() - t0
    contenders = {"fp32": rec, "int8": rec.quantized()}
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    ndcg: dict[str, float] = {}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in order:
            t = time.process_time()
            score = evaluate_ndcg(contenders[name], train, cases, k=10)
            cpu[name].append(time.process_time() - t)
            assert ndcg.setdefault(name, score) == score  # deterministic
    return {"source": source, "cases": len(cases), "params": rec.parameters, "epochs": epochs,
            "train_s": trained_s, "cpu": cpu, "ndcg": ndcg, "report": contenders["int8"].quantization}


def med(values: list[float]) -> float:
    return statistics.median(values)


def section(a: dict[str, Any], b: dict[str, Any], total: float, rounds: int) -> str:
    import torch

    ea, ra, rb = a["errors"], a["report"], b["report"]
    ratio_a = med(a["cpu"]["int8"]) / med(a["cpu"]["fp32"])
    ratio_b = med(b["cpu"]["int8"]) / med(b["cpu"]["fp32"])
    n = a["n"]
    lines = [
        f"{MARKER} (transformers provider, rec-LM)",
        "",
        f"`{COMMAND}` ({total:.0f} s; {platform.machine()}, {os.cpu_count()} cores shared with other work, "
        f"torch {torch.__version__} CPU, 1 thread, Python {platform.python_version()})",
        "",
        "`quantize: int8` on the transformers provider and `RecLM.quantized()` both apply "
        "`torch.ao.quantization.quantize_dynamic` to every linear layer (int8 weights, activations quantized on "
        f"the fly). {rounds} rounds, fp32 and int8 alternating (and which goes first); CPU time "
        "(`time.process_time`) per round, medians; ratio = int8 / fp32.",
        "",
        "| model | workload | fp32 s | int8 s | ratio | bytes fp32 -> int8 | quality fp32 | quality int8 |",
        "|---|---|---:|---:|---:|---|---|---|",
        f"| random-weight Llama, {a['params'] / 1e6:.1f}M parameters (provider) | {n} greedy constrained + {n} "
        f"greedy free-text ({a['free_tokens']} tokens) calls, {a['tokens']['fp32']:,} tokens | "
        f"{med(a['cpu']['fp32']):.2f} | {med(a['cpu']['int8']):.2f} | {ratio_a:.2f} | "
        f"{ra['bytes_before'] / 1e6:.1f} MB -> {ra['bytes_after'] / 1e6:.1f} MB | - | identical greedy output "
        f"{a['same']['structured']}/{n} constrained, {a['same']['free']}/{n} free text; {a['valid']}/{n} valid |",
        f"| rec-LM small, {b['params']:,} parameters, {b['epochs']} epoch{'s' if b['epochs'] != 1 else ''} | "
        f"evaluate_ndcg over {b['cases']} users | {med(b['cpu']['fp32']):.2f} | {med(b['cpu']['int8']):.2f} | {ratio_b:.2f} | "
        f"{rb['bytes_before'] / 1e6:.2f} MB -> {rb['bytes_after'] / 1e6:.2f} MB | NDCG@10 {b['ndcg']['fp32']:.4f} | "
        f"NDCG@10 {b['ndcg']['int8']:.4f} ({b['ndcg']['int8'] - b['ndcg']['fp32']:+.4f}) |",
        "",
        f"- Provider, logits (teacher-forced on fp32's outputs, {ea['positions']:,} positions): relative L2 error "
        f"of int8's logits {ea['rel_l2_median']:.3f} (median over positions), max absolute error "
        f"{ea['max_abs']:.4f}, next-token argmax agrees at {100 * ea['argmax_agree']:.1f}% of positions; common "
        f"prefix of the greedy outputs {100 * a['prefix']:.0f}% of fp32's tokens on average (one flipped token and "
        f"the rest of a greedy output differs). A random-weight model is never confident: the median gap between "
        f"fp32's two best logits is {ea['gap_median']:.4f}, against a median largest error of "
        f"{ea['err_median']:.4f} per position, so int8 flips its argmax far more often than it would on a trained "
        "model with clear winners: read the agreement as a lower bound.",
        f"- Per-round CPU seconds: provider fp32 {_list(a['cpu']['fp32'])}, int8 {_list(a['cpu']['int8'])}; "
        f"rec-LM fp32 {_list(b['cpu']['fp32'])}, int8 {_list(b['cpu']['int8'])}.",
        f"- rec-LM data: {b['source']}; trained in {b['train_s']:.0f} s (fixed epochs, no early stopping). "
        f"Provider catalog: {a['source']}. int8 layers: {ra['quantized_layers']} (provider), "
        f"{len(rb['quantized_layers'])} (rec-LM, its GPT-2 Conv1D layers converted to Linear first).",
        "",
    ]
    return "\n".join(lines)


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per round in A (each: constrained + free)")
    parser.add_argument("--free-tokens", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="rec-LM training epochs")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    a = bench_provider(args.rounds, args.prompts, args.free_tokens)
    print(f"A done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    b = bench_reclm(args.rounds, args.epochs)
    text = section(a, b, time.perf_counter() - t0, args.rounds)
    print(text)
    if args.write:
        write_section(MARKER, text)


if __name__ == "__main__":
    main()
