"""Hybrid with and without its rate watch, side by side, at several temperatures.

    python scripts/watch_ab.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --suite spec_bench_dev.jsonl,humaneval --limit 2 --temperatures 0,0.7,1.0 [--device cuda]

For each temperature: one decoder per variant (`ar`, `hybrid` with the watch switched off,
`hybrid` as shipped), each warmed up for the run's longest context and its sampling program, then
every prompt through every variant (the order rotating per prompt), stopping where the chat turn
ends, as `skipspec bench` does. Prints tokens/s over `ar` overall and per category, tokens per
step, and the watch's pauses. A development tool: `skipspec bench` makes the tables of
docs/benchmarks.md; this isolates one mechanism that the bench cannot switch off.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

import skipspec
from skipspec import SamplingParams, SwiftConfig, SwiftDecoder
from skipspec.bench.suites import load_suites
from skipspec.drafting.hybrid import RateWatch
from skipspec.engine.stops import tokenizer_stop_token_ids
from skipspec.prompts import encode_prompt


class NoWatch(RateWatch):
    """A watch that never pauses drafting."""

    def drafted(self, tokens: int, seconds: float, plain_estimate: float) -> None:
        pass


VARIANTS = {"ar": ("ar", None), "hybrid, no watch": ("hybrid", NoWatch), "hybrid": ("hybrid", None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--suite", default="spec-bench,humaneval")
    p.add_argument("--limit", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperatures", default="0,0.7,1.0")
    p.add_argument("--device", default=None)
    args = p.parse_args()

    model, tok = skipspec.load(args.model, device=args.device)
    cuda = next(model.parameters()).device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stops = tokenizer_stop_token_ids(tok, model)
    prompts = load_suites(args.suite.split(","), limit=args.limit)
    ids = [encode_prompt(tok, q.text, q.chat) for q in prompts]
    longest = max(len(x) for x in ids) + args.max_new_tokens
    categories = list(dict.fromkeys(q.category for q in prompts))
    names = list(VARIANTS)
    for temperature in (float(t) for t in args.temperatures.split(",")):
        sampling = SamplingParams(do_sample=temperature > 0, temperature=temperature or 1.0)
        decoders = {}
        for name, (method, watch) in VARIANTS.items():
            dec = SwiftDecoder(model, SwiftConfig(), stop_token_ids=stops)
            dec.warmup(longest, methods=(method,), sampling=(sampling,))
            if watch is not None:
                dec._allocator(method).watch = watch()
            decoders[name] = (dec, method)
        tokens, seconds, steps = collections.Counter(), collections.Counter(), collections.Counter()
        for i, (x, q) in enumerate(zip(ids, prompts)):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                dec, method = decoders[name]
                sync()
                start = time.perf_counter()
                out = dec.generate(x, args.max_new_tokens, method=method, do_sample=sampling.do_sample,
                                   temperature=sampling.temperature, seed=i)  # fmt: skip
                sync()
                for key in (name, (name, q.category)):
                    seconds[key] += time.perf_counter() - start
                    tokens[key] += len(out.tokens)
                steps[name] += out.stats["verify_steps"]

        def rate(key) -> float:
            return tokens[key] / seconds[key]

        print(f"\ntemperature {temperature}: ar {rate('ar'):.1f} tokens/s")
        print(f"| variant | vs ar | tokens per step | " + " | ".join(categories) + " | pauses |")
        print("|---|---:|---:|" + "---:|" * len(categories) + "---:|")
        for name in names:
            per = " | ".join(f"{rate((name, c)) / rate(('ar', c)):.2f}x" for c in categories)
            dec, method = decoders[name]
            alloc = dec._allocators.get(method)
            pauses = alloc.watch.pauses if alloc is not None and not isinstance(alloc.watch, NoWatch) else "–"
            print(f"| {name} | {rate(name) / rate('ar'):.2f}x | {tokens[name] / steps[name]:.2f} | {per} | {pauses} |")


if __name__ == "__main__":
    main()
