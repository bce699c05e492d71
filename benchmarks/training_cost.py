"""Training time and peak memory of each trainer llmrec ships, on this machine's cores, through the CLI.

Each trainer runs as its own process under ``/usr/bin/time`` (wall and CPU seconds, peak resident memory), with
``--force`` so that it really trains:

- ``rank.lambdamart``: ``llmrec train specs/news_ltr.yaml``;
- the rec-LM (``llm`` resource on the ``reclm`` provider): ``llmrec train specs/movielens_blend.yaml --node model``;
- ``rank.blend``: ``llmrec train specs/movielens_blend.yaml --node blend`` (collects its three lists on 943
  validation users, then fits the weights);
- LoRA (``llmrec finetune specs/movielens_llm.yaml``) on a 2-layer random-weight Llama built here (no pretrained
  weights can be downloaded on this machine), 200 users, 40 steps;
- distillation (``llmrec distill specs/movielens_blend.yaml``) of the spec's trained rec-LM into a tiny student.

    LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_cost.py [--write] [--skip-reclm]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "training_cost.md"
LLMREC = [sys.executable, "-m", "llmrec"]


def timed(args: list[str]) -> dict[str, float]:
    """Run ``args`` under /usr/bin/time; wall and CPU seconds, peak RSS in MB."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", report.name, *args], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
        wall, user, system, rss_kb = report.read().split()[-4:]
    return {"wall": float(wall), "cpu": float(user) + float(system), "rss_mb": int(rss_kb) / 1024}


def tiny_llama(folder: Path) -> Path:
    """A byte-level BPE on MovieLens prompts and a 2-layer Llama (hidden 64) of random weights."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from llmrec.data.datasets import load_dataset
    from llmrec.finetune.data import PairConfig, build_pairs

    ds = load_dataset("movielens-100k", split="temporal")
    pairs = build_pairs(ds.train, ds.catalog, PairConfig(n=5))[:300]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([p.prompt + "\n" + p.answer for p in pairs],
                            trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 pad_token="<|endoftext|>")
    hf.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    parser.add_argument("--skip-reclm", action="store_true", help="do not retrain the rec-LM (minutes)")
    args = parser.parse_args()
    if not os.environ.get("LLMREC_DATA_DIR"):
        print("set LLMREC_DATA_DIR to the folder holding ml-100k/ and bbc-news/", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs: list[tuple[str, list[str]]] = [
            ("rank.lambdamart (news_ltr.yaml)", [*LLMREC, "train", "specs/news_ltr.yaml", "--force"])]
        if not args.skip_reclm:
            jobs.append(("rec-LM, llm resource on reclm (movielens_blend.yaml)",
                         [*LLMREC, "train", "specs/movielens_blend.yaml", "--node", "model", "--force"]))
        jobs.append(("rank.blend (movielens_blend.yaml)",
                     [*LLMREC, "train", "specs/movielens_blend.yaml", "--node", "blend", "--force"]))
        base = tiny_llama(work / "tiny-llama")
        jobs.append(("LoRA fine-tune, 2-layer random Llama, 200 users, 40 steps (movielens_llm.yaml)",
                     [*LLMREC, "finetune", "specs/movielens_llm.yaml", "--base", str(base), "--max-users", "200",
                      "--max-steps", "40", "--output", str(work / "ft"), "--force"]))
        teacher_root = ROOT / "runs" / "movielens" / "reclm"
        teacher = teacher_root / (teacher_root / "latest").read_text().strip()
        jobs.append(("distill the rec-LM into a tiny student (movielens_blend.yaml)",
                     [*LLMREC, "distill", "specs/movielens_blend.yaml", "--teacher", str(teacher), "--student",
                      "tiny", "--output", str(work / "distilled"), "--force"]))
        for name, command in jobs:
            print(f"  {name} ...", flush=True)
            result = timed(command)
            shown = " ".join(c if c != sys.executable else ".venv/bin/python" for c in command)
            rows.append((name, shown.replace(str(work), "$TMP").replace(str(ROOT) + "/", ""), result))
            print(f"    {result['wall']:.0f} s wall, {result['cpu']:.0f} s CPU, {result['rss_mb']:.0f} MB", flush=True)
    lines = [
        "# Training time and peak memory of each trainer",
        "",
        "Reproduce: `LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_cost.py "
        "--write`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {time.perf_counter() - started:.0f} s in all. One run per trainer, each its "
        "own process (so each figure includes starting Python, importing torch and loading the data).",
        "",
        "| trainer | wall s | CPU s | peak RSS MB | command |",
        "|---|---|---|---|---|",
        *[f"| {n} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['rss_mb']:.0f} | `{c}` |" for n, c, r in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
