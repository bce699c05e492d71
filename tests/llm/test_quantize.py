"""quantize: int8 on the transformers provider: every linear layer becomes a dynamic int8 one, the model gets
smaller, its logits stay close, and constrained decoding works on it as on the float model."""

from __future__ import annotations

import asyncio

import pytest

from llmrec.llm.local import TransformersProvider, transformers_provider
from llmrec.llm.provider import Choices, CompletionRequest, Message

from .test_local import CATALOG, Plan


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    fp32 = TransformersProvider(str(tiny_model_dir))
    int8 = TransformersProvider(str(tiny_model_dir), quantize="int8")
    fp32.load()
    int8.load()
    return fp32, int8


def test_linear_layers_are_quantized_and_the_model_shrinks(pair):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    fp32, int8 = pair
    assert fp32.quantization is None
    report = int8.quantization
    model = int8._loaded.model
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    dynamic = [n for n, m in model.named_modules() if isinstance(m, DynamicLinear)]
    assert linear == [] and len(dynamic) == report["quantized_layers"] == 2 * 7 + 1  # q k v o gate up down, head
    assert report["bytes_after"] < 0.75 * report["bytes_before"]

    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.inference_mode():
        a = fp32._loaded.model(input_ids=ids).logits
        b = model(input_ids=ids).logits
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max()) + 1e-3


def test_constrained_decoding_on_the_int8_model(pair):
    _, int8 = pair
    req = CompletionRequest((Message("user", "Recommend films."),), schema=Plan,
                            choices=(Choices("picks[].id", CATALOG),), temperature=1.0, seed=3, max_tokens=400)

    async def main():
        return await asyncio.gather(*(int8.complete(req) for _ in range(3)))

    out = asyncio.run(main())
    for c in out:
        assert isinstance(c.parsed, Plan) and {p.id for p in c.parsed.picks} <= set(CATALOG)
    assert len({c.text for c in out}) == 1  # same seed, same answer, batched or not


def test_quantize_options(tiny_model_dir):
    assert transformers_provider(model=str(tiny_model_dir), quantize="int8").quantize == "int8"
    assert TransformersProvider(str(tiny_model_dir)).quantize == "none"
    with pytest.raises(ValueError, match="unknown quantize 'int4'"):
        TransformersProvider(str(tiny_model_dir), quantize="int4")
    with pytest.raises(ValueError, match="CPU in float32 only"):
        TransformersProvider(str(tiny_model_dir), quantize="int8", device="cuda")
    with pytest.raises(ValueError, match="CPU in float32 only"):
        TransformersProvider(str(tiny_model_dir), quantize="int8", dtype="bfloat16")
