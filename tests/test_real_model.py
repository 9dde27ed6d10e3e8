"""A real pretrained model: SmolLM2-135M-Instruct (installed offline from the package index).

SWIFT greedy must equal plain greedy (this engine) and transformers `generate` on Spec-Bench prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import skipspec
from skipspec import SwiftConfig, SwiftDecoder, offline_models
from skipspec.engine.stops import tokenizer_stop_token_ids
from skipspec.prompts import encode_prompt

pytestmark = pytest.mark.slow

SPEC_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spec_bench_dev.jsonl"


@pytest.fixture(scope="module")
def smollm2():
    path = offline_models.fetch("smollm2-135m-instruct")
    model, tok = skipspec.load(str(path), device="cpu", dtype="float32")
    return model, tok


def spec_bench_prompts(per_category: int = 1) -> list[str]:
    if not SPEC_BENCH.exists():
        pytest.skip(f"{SPEC_BENCH} not present")
    seen: dict[str, int] = {}
    prompts = []
    for line in SPEC_BENCH.read_text().splitlines():
        q = json.loads(line)
        if seen.get(q["category"], 0) < per_category:
            seen[q["category"]] = seen.get(q["category"], 0) + 1
            prompts.append(q["turns"][0])
    return prompts


def test_swift_greedy_equals_plain_greedy_on_smollm2(smollm2):
    model, tok = smollm2
    stops = tokenizer_stop_token_ids(tok, model)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    prompts = spec_bench_prompts()[:4]
    fixed = (
        SwiftConfig(optimize=False),
        SwiftConfig(skip_attn=[5, 9, 14], skip_mlp=[20], confidence_threshold=0.6, optimize=False),
    )
    for cfg in (*fixed, SwiftConfig()):
        dec = SwiftDecoder(model, cfg, stop_token_ids=stops)
        for text in prompts:
            ids = encode_prompt(tok, text, chat=True)
            swift = dec.generate(ids, 40)
            plain = dec.generate(ids, 40, method="ar")
            assert swift.tokens == plain.tokens, text
            if not cfg.optimize:
                assert swift.stats["drafted_tokens"] > 0
    ids = encode_prompt(tok, prompts[0], chat=True)
    hf = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=40,
        do_sample=False,
        eos_token_id=stops,
    )[0, len(ids) :].tolist()
    ours = SwiftDecoder(model, stop_token_ids=stops).generate(ids, 40).tokens
    assert ours == hf[: len(ours)] and len(ours) == len(hf)
