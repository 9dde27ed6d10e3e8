"""Where a drafting method's step time goes: host phases, the GPU's wait, and torch's own view.

    python scripts/profile_step.py --model SmolLM2-135M-Instruct.Q4_1.gguf --suite spec-bench,humaneval \
        --method hybrid --limit 1 --max-new-tokens 256 [--device cuda]

Runs plain decoding and `--method` on the suite's prompts (one decoder, warmed up first; trees
drafted on the host unless `--device-drafting`, see `RuntimeConfig.device_drafting`), prints
their speed, then repeats the method with each phase of the decode loop timed by wrapping it
(drafters' propose/observe, the node allocator, assembling the tree, staging and launching the
step, the wait for the device, the read-back), per step, and ends with torch.profiler's host-side
table (CUDA runtime calls such as `cudaGraphLaunch` included). The wrappers cost a few
microseconds each: read the phases against each other, and the speed from the unwrapped run.
A development tool, not a benchmark: `skipspec bench` makes the numbers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

import skipspec
import skipspec.engine.decoder as decoder_module
from skipspec import SwiftConfig, SwiftDecoder
from skipspec.bench.suites import load_suites
from skipspec.engine.assemble import Owners
from skipspec.engine.counters import Counters
from skipspec.prompts import encode_prompt
from skipspec.runtime import RuntimeConfig
from skipspec.runtime.executor import Reading


class PhaseTimes:
    """Seconds and calls per phase, gathered by wrapping callables in place (`restore` puts them back)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()
        self._wrapped: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        if not hasattr(owner, name):
            return
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        self.replace(owner, name, timed)

    def replace(self, owner, name: str, value) -> None:
        """Set `owner.name` to `value` until `restore`."""
        self._wrapped.append((owner, name, vars(owner).get(name)))  # None: found on a class above
        setattr(owner, name, value)

    def restore(self) -> None:
        """Put every wrapped callable back, the last wrapped first."""
        while self._wrapped:
            owner, name, original = self._wrapped.pop()
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] += seconds
        self.calls[label] += 1

    def table(self, steps: int) -> str:
        rows = [f"{'phase':24s} {'us/call':>9s} {'us/step':>9s} {'calls':>7s}"]
        for label in sorted(self.seconds, key=lambda k: -self.seconds[k]):
            s, n = self.seconds[label], self.calls[label]
            rows.append(f"{label:24s} {s / max(n, 1) * 1e6:9.1f} {s / max(steps, 1) * 1e6:9.1f} {n:7d}")
        return "\n".join(rows)


def instrument(dec: SwiftDecoder, method: str, times: PhaseTimes) -> None:
    """Wrap the decode loop's phases of `dec` running `method` (and the classes it calls) to time them."""
    for name, drafter in dec._builtin.items():
        times.wrap(drafter, "propose", f"{name}.propose")
        times.wrap(drafter, "observe", f"{name}.observe")
    times.wrap(dec, "_allocate", "allocate")
    times.wrap(dec, "_verify_costs", "allocate: verify costs")
    allocator = dec._allocator(method)
    if allocator is not None:
        times.wrap(allocator, "plan", "allocate: plan")
    times.wrap(decoder_module, "assemble", "assemble")
    times.wrap(dec, "_emit", "emit")
    times.wrap(Counters, "count_step", "count_step")
    times.wrap(Owners, "paths", "owners.paths")
    executor = dec.executor
    times.wrap(executor, "verify", "verify (all)")
    times.wrap(executor, "stage_tree", "stage_tree")
    times.wrap(Reading, "of", "read-back")
    launch = getattr(executor, "_launch_verify", None)
    if launch is not None and executor.adapter.device.type == "cuda":

        def launch_then_wait(*args):
            start = time.perf_counter()
            out = launch(*args)
            times.add("launch (stage + replay)", time.perf_counter() - start)
            start = time.perf_counter()
            torch.cuda.synchronize()
            times.add("device wait", time.perf_counter() - start)
            return out

        times.replace(executor, "_launch_verify", launch_then_wait)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--suite", default="spec-bench,humaneval")
    p.add_argument("--method", default="hybrid")
    p.add_argument("--limit", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument(
        "--device-drafting", action="store_true",
        help="let the method run drafting steps (trees drafted on the device, the GPU default); without it "
        "its trees are drafted on the host, whose phases this tool times",
    )  # fmt: skip
    args = p.parse_args()

    model, tok = skipspec.load(args.model, device=args.device)
    cuda = next(model.parameters()).device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    prompts = load_suites(args.suite.split(","), limit=args.limit)
    ids = [encode_prompt(tok, q.text, q.chat) for q in prompts]
    dec = SwiftDecoder(model, SwiftConfig(), runtime=RuntimeConfig(device_drafting=args.device_drafting))
    longest = max(len(x) for x in ids) + args.max_new_tokens
    print(f"warm-up {dec.warmup(longest, methods=('ar', args.method)):.1f} s")

    def run(method: str) -> tuple[float, list[dict]]:
        tokens, seconds, stats = 0, 0.0, []
        for x in ids:
            sync()
            start = time.perf_counter()
            out = dec.generate(x, args.max_new_tokens, method=method)
            sync()
            seconds += time.perf_counter() - start
            tokens += len(out.tokens)
            stats.append(out.stats)
        return tokens / seconds, stats

    plain, _ = run("ar")
    speed, stats = run(args.method)
    steps = sum(s["verify_steps"] for s in stats)
    tau = sum(s["new_tokens"] for s in stats) / steps
    print(f"ar {plain:.1f} tokens/s, {args.method} {speed:.1f} tokens/s ({speed / plain:.2f}x), {tau:.2f} tokens per step")

    times = PhaseTimes()
    instrument(dec, args.method, times)
    try:
        _, stats = run(args.method)
    finally:
        times.restore()
    print(times.table(sum(s["verify_steps"] for s in stats)))

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(args.method)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
