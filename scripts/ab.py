"""Decoding variants side by side: one mechanism or setting at a time, on the same prompts.

    python scripts/ab.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --suite spec_bench_dev.jsonl,humaneval --limit 2 --device cuda \
        --variants "ar,hybrid,hybrid+watch=off,hybrid+ngram.max_depth=10" [--temperatures 0,0.7] [--repeats 2]

A variant is a method, optionally followed by `+setting=value` parts:
    ngram.<field>=V, recycle.<field>=V   the built-in drafter of that name with `NgramConfig` /
                                         `RecycleConfig` field changed
    hybrid.<field>=V                     the node allocator's `HybridConfig` field
    watch=off                            the allocator's rate watch never pauses drafting
    runtime.<field>=V                    the decoder's `RuntimeConfig` field (say
                                         `runtime.mode='static'+runtime.device_drafting=True`
                                         to run drafting steps on a CPU)
The first variant is the yardstick (normally `ar`).

`--cost-model h200` prices every verify with an H200's measured SmolLM2 step times (1.05 ms a plain
step, 0.02 ms more for any tree, and 1.7 us per node of the padded bucket: 1.12 ms at 32 nodes,
1.18 ms at 64) instead of this machine's, so the node allocator grows trees as wide as on that
GPU. Tokens per step at a fixed cost model do not depend on the machine, and in float32 outputs
are exact: a CPU then measures the GPU's tokens per step without bf16's noise (pair it with
`watch=off`, and read no speed column).

For each temperature: one decoder per variant, each warmed up for the run's longest context and
its sampling program; then every prompt through every variant (the order rotating per prompt),
stopping where the chat turn ends, as `skipspec bench` does. Prints, per repeat, tokens/s over the
yardstick overall and per category (with tokens per step), tokens per step, tree nodes,
milliseconds per step and the host's share of them, the share of steps drafted on the device, and
the watch's pauses. A development tool: `skipspec bench` makes the
tables of docs/benchmarks.md; this isolates what the bench cannot switch.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import re
import time
import types

import numpy as np
import torch

import skipspec
from skipspec import SamplingParams, SwiftConfig, SwiftDecoder
from skipspec.bench.suites import load_suites
from skipspec.drafting.hybrid import HybridConfig, NodeAllocator, RateWatch
from skipspec.drafting.ngram import NgramDrafter
from skipspec.drafting.recycle import RecycleDrafter
from skipspec.engine.stops import tokenizer_stop_token_ids
from skipspec.prompts import encode_prompt
from skipspec.runtime import RuntimeConfig

DRAFTERS = {"ngram": NgramDrafter, "recycle": RecycleDrafter}


class NoWatch(RateWatch):
    """A watch that never pauses drafting."""

    def drafted(self, tokens: int, seconds: float, plain_estimate: float) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Variant:
    spec: str
    method: str
    drafters: dict[str, dict]  # drafter name -> config fields changed
    hybrid: dict  # HybridConfig fields changed
    watch: bool
    runtime: dict  # RuntimeConfig fields

    @classmethod
    def parse(cls, spec: str) -> Variant:
        method, *parts = spec.split("+")
        drafters: dict[str, dict] = collections.defaultdict(dict)
        hybrid: dict = {}
        runtime: dict = {}
        watch = True
        for part in parts:
            key, sep, raw = part.partition("=")
            if not sep:
                raise SystemExit(f"variant {spec!r}: {part!r} is not setting=value")
            if key == "watch":
                if raw not in ("on", "off"):
                    raise SystemExit(f"variant {spec!r}: watch must be on or off")
                watch = raw == "on"
                continue
            owner, _, field = key.partition(".")
            value = ast.literal_eval(raw)
            if owner in DRAFTERS:
                drafters[owner][field] = value
            elif owner == "hybrid":
                hybrid[field] = value
            elif owner == "runtime":
                runtime[field] = value
            else:
                raise SystemExit(
                    f"variant {spec!r}: unknown setting {key!r} (ngram.*, recycle.*, hybrid.*, runtime.*, watch)"
                )
        return cls(spec, method, dict(drafters), hybrid, watch, runtime)

    def decoder(self, model, stops, longest: int, sampling: SamplingParams, h200_costs: bool) -> SwiftDecoder:
        dec = SwiftDecoder(model, SwiftConfig(), stop_token_ids=stops, runtime=RuntimeConfig(**self.runtime))
        if h200_costs:
            dec._verify_costs = types.MethodType(_h200_verify_costs, dec)
        for name, fields in self.drafters.items():
            drafter = dec._builtin[name]
            dec._builtin[name] = DRAFTERS[name](dataclasses.replace(drafter.config, **fields), name=name)
        if self.hybrid:
            names = [d.name for d in dec._drafters(self.method)]
            dec._allocators[self.method] = NodeAllocator(names, HybridConfig(**self.hybrid))
        dec.warmup(longest, methods=(self.method,), sampling=(sampling,))
        if not self.watch:
            allocator = dec._allocator(self.method)
            if allocator is None:
                raise SystemExit(f"variant {self.spec!r}: {self.method} has no rate watch")
            allocator.watch = NoWatch()
        return dec


def _h200_verify_costs(dec, allocator, costs, context: int, nodes: int) -> np.ndarray:
    """Seconds of a verify of 0..`nodes` drafted nodes on an H200 (SmolLM2, bf16, graphs), by bucket."""
    n = np.arange(nodes + 1)
    bucket = 1 << np.ceil(np.log2(n + 1)).astype(int)
    return 1.05e-3 + 0.02e-3 * (n > 0) + 1.7e-6 * np.where(n > 0, bucket, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--suite", default="spec-bench,humaneval")
    p.add_argument("--limit", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--variants", default="ar,hybrid,hybrid+watch=off")
    p.add_argument("--temperatures", default="0")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--categories", default=None, help="comma-separated: only these categories")
    p.add_argument("--cost-model", choices=("measured", "h200"), default="measured")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    variants = [Variant.parse(s) for s in re.split(r",(?![^()]*\))", args.variants)]  # commas in (a, b) stay

    model, tok = skipspec.load(args.model, device=args.device)
    cuda = next(model.parameters()).device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stops = tokenizer_stop_token_ids(tok, model)
    prompts = load_suites(args.suite.split(","), limit=args.limit)
    if args.categories:
        prompts = [q for q in prompts if q.category in args.categories.split(",")]
    ids = [encode_prompt(tok, q.text, q.chat) for q in prompts]
    longest = max(len(x) for x in ids) + args.max_new_tokens
    categories = list(dict.fromkeys(q.category for q in prompts))
    for temperature in (float(t) for t in args.temperatures.split(",")):
        sampling = SamplingParams(do_sample=temperature > 0, temperature=temperature or 1.0)
        decoders = {v.spec: v.decoder(model, stops, longest, sampling, args.cost_model == "h200") for v in variants}
        for repeat in range(args.repeats):
            tokens, seconds = collections.Counter(), collections.Counter()
            steps, nodes, host = collections.Counter(), collections.Counter(), collections.Counter()
            device, runs = collections.Counter(), collections.Counter()
            for i, (x, q) in enumerate(zip(ids, prompts)):
                for v in variants[i % len(variants) :] + variants[: i % len(variants)]:
                    sync()
                    start = time.perf_counter()
                    out = decoders[v.spec].generate(x, args.max_new_tokens, method=v.method,
                                                    do_sample=sampling.do_sample, temperature=sampling.temperature,
                                                    seed=i)  # fmt: skip
                    sync()
                    for key in (v.spec, (v.spec, q.category)):
                        seconds[key] += time.perf_counter() - start
                        tokens[key] += len(out.tokens)
                    steps[v.spec] += out.stats["verify_steps"]
                    steps[(v.spec, q.category)] += out.stats["verify_steps"]
                    nodes[v.spec] += out.stats["drafted_tokens"]
                    device[v.spec] += out.stats["drafting_steps"]
                    runs[v.spec] += out.stats["drafting_runs"]
                    host[v.spec] += out.stats["draft_time"]
            _report(temperature, repeat, variants, categories, tokens, seconds, steps, nodes, host, device, runs, decoders)


def _report(temperature, repeat, variants, categories, tokens, seconds, steps, nodes, host, device, runs, decoders) -> None:
    def rate(key) -> float:
        return tokens[key] / seconds[key]

    base = variants[0].spec
    print(f"\ntemperature {temperature}, repeat {repeat + 1}: {base} {rate(base):.1f} tokens/s")
    print(f"| variant | vs {base} | tokens per step | nodes | ms per step | host share | drafted on device | "
          + "steps per drafting run | " + " | ".join(categories) + " | pauses |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(categories) + "---:|")
    for v in variants:
        n = steps[v.spec]
        per = " | ".join(
            f"{rate((v.spec, c)) / rate((base, c)):.2f}x / {tokens[(v.spec, c)] / steps[(v.spec, c)]:.2f}"
            for c in categories
        )
        alloc = decoders[v.spec]._allocators.get(v.method)
        pauses = alloc.watch.pauses if alloc is not None and not isinstance(alloc.watch, NoWatch) else "–"
        print(f"| {v.spec} | {rate(v.spec) / rate(base):.2f}x | {tokens[v.spec] / n:.2f} | {nodes[v.spec] / n:.1f} | "
              f"{seconds[v.spec] / n * 1e3:.3f} | {host[v.spec] / seconds[v.spec]:.0%} | {device[v.spec] / n:.0%} | "
              f"{device[v.spec] / runs[v.spec] if runs[v.spec] else 0:.1f} | {per} | {pauses} |")  # fmt: skip


if __name__ == "__main__":
    main()
