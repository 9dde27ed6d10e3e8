"""How long a CPU forward of 1..64 rows takes with `F.linear` and with oneDNN on a prepacked weight.

Two tables, both with every timing interleaved (each repetition runs every method once, back to
back, in alternating order) and summarized by medians: the machine's cores may be shared, and a
burst of load from another process inflates both sides of a ratio taken a moment apart, which
the median drops. Where other processes keep the cores busy, every multi-threaded call may wait
for its second thread to be scheduled (steps of 4-16 ms): compare runs with --threads 1.

1. model: ms of one whole forward (`ModelAdapter.forward`, nothing skipped) of SmolLM2-135M-Instruct
   (float32) of n tokens after a 256-token context: plain (F.linear) vs packed linears as the
   decoder runs them (`packed`: F.linear for one row except in the output head), packed for every
   row count (`packed@1`) and the head too on F.linear for one row (`head@2`); as ratios to plain
   at the same n, and to the plain one-token forward (what a verify of n-1 nodes costs in plain steps).
2. matrices: ms per call of each method for each weight shape of SmolLM2-135M (hidden 576,
   intermediate 1536, vocab 49152) and Qwen2.5-1.5B (1536, 8960, vocab 151936) at 1..64 rows
   (random weights; each call reads the next of enough copies to fill 96 MiB, so small matrices
   come from memory as in a model's forward, not from the cache: `--hot` times one copy), and
   the median ratio to F.linear. Methods (`--options` for all):
     F.linear     the model's own: MKL sgemm / sgemv on the row-major weight
     packed       torch.ops.mkldnn._linear_pointwise on a weight packed by
                  torch.ops.mkldnn._reorder_linear_weight for PACK_ROWS rows: ONE copy, every row count
                  (what `skipspec.runtime.cpu_linear.PackedLinear` runs for >= 2 rows, the head for 1)
   --options adds:
     colmajor     addmm on the weight stored transposed (x @ W^T, W^T contiguous): no extra copy
     dnn-plain    oneDNN's inner product on the model's own row-major weight: no extra copy
     dnn-pack1    oneDNN packed for 1 row   (dnn-pack16: for 16 rows)
     mkl-pack     torch.ops.mkl._mkl_linear on a cblas_sgemm_pack'ed weight (the op falls back to
                  F.linear unless told the packing's row count; told the call's own, it computes)
     mkldnn       torch._C._nn.mkldnn_linear on .to_mkldnn() weight and input (torch.utils.mkldnn's)

Run:  PYTHONPATH=src python scripts/cpu_linear_probe.py [--threads 2] [--reps 9] [--options]
      [--shapes smollm2,qwen2.5-1.5b] [--hot] [--no-matrices] [--no-model] [--model PATH]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROWS = (1, 2, 4, 8, 16, 32, 64)
MODELS = {
    # name: (hidden, intermediate, vocab, kv width)
    "smollm2": (576, 1536, 49152, 192),
    "qwen2.5-1.5b": (1536, 8960, 151936, 256),
}
COLD_BYTES = 96 << 20  # several times the last-level cache: the copies a matrix is timed on, in turn
GGUF = Path("/root/.cache/skipspec/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def shapes_of(name: str) -> list[tuple[str, int, int]]:
    h, ff, vocab, kv = MODELS[name]
    return [
        (f"{name} q,o", h, h),
        (f"{name} k,v", kv, h),
        (f"{name} gate,up", ff, h),
        (f"{name} down", h, ff),
        (f"{name} lm_head", vocab, h),
    ]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def linear_methods(w: torch.Tensor, options: bool, copies: int) -> dict[str, Callable]:
    """Each method as a function of the input; each call uses the next of `copies` copies of the
    weight (prepared the method's way), so that, as in a model's forward, the weight is not in the
    caches already from the call before."""
    from skipspec.runtime.cpu_linear import PACK_ROWS

    pointwise = torch.ops.mkldnn._linear_pointwise
    zero = torch.zeros(w.shape[0])

    def each(prepare: Callable, run: Callable) -> Callable:
        ready = [prepare(w.clone()) for _ in range(copies)]
        turn = itertools.cycle(ready)
        return lambda x: run(x, next(turn))

    methods = {
        "F.linear": each(lambda v: v, lambda x, v: F.linear(x, v)),
        "packed": each(
            lambda v: torch.ops.mkldnn._reorder_linear_weight(v, PACK_ROWS),
            lambda x, v: pointwise(x, v, None, "none", [], ""),
        ),
    }
    if options:
        mkl_pack = torch.ops.mkl._mkl_reorder_linear_weight
        methods.update(
            {
                "colmajor": each(lambda v: v.t().contiguous(), lambda x, v: torch.addmm(zero, x, v)),
                "dnn-plain": each(lambda v: v, lambda x, v: pointwise(x, v, None, "none", [], "")),
                "dnn-pack1": each(
                    lambda v: torch.ops.mkldnn._reorder_linear_weight(v, 1),
                    lambda x, v: pointwise(x, v, None, "none", [], ""),
                ),
                "dnn-pack16": each(
                    lambda v: torch.ops.mkldnn._reorder_linear_weight(v, 16),
                    lambda x, v: pointwise(x, v, None, "none", [], ""),
                ),
                # The op falls back to F.linear unless told the packing's row count; told the call's own, it computes.
                "mkl-pack": each(
                    lambda v: (mkl_pack(v, 1), v), lambda x, v: torch.ops.mkl._mkl_linear(x, v[0], v[1], None, x.shape[0])
                ),
                "mkldnn": each(
                    lambda v: v.to_mkldnn(),
                    lambda x, v: torch._C._nn.mkldnn_linear(x.to_mkldnn(), v, zero.to_mkldnn()).to_dense(),
                ),
            }
        )
    return methods


def interleaved(fns: dict[str, Callable[[], object]], reps: int, target_s: float) -> dict[str, list[float]]:
    """Seconds per call of each fn, one list entry per repetition; each repetition runs every fn in
    turn, in one order and then the reverse (a method's place in the turn biases it by 5-20%)."""
    for fn in fns.values():  # warm up (oneDNN builds its primitive on first use)
        fn()
        fn()
    first = next(iter(fns.values()))
    start = time.perf_counter()
    first()
    inner = max(1, int(target_s / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for rep in range(reps):
        for name, fn in order if rep % 2 == 0 else order[::-1]:  # alternate: no method always runs first
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(t / b for t, b in zip(times[name], times[base]))


@torch.inference_mode()
def matrices(names: list[str], reps: int, options: bool, hot: bool) -> None:
    print(f"\n## matrices: ms per call (median), and median ratio to F.linear; {torch.get_num_threads()} threads")
    for model in names:
        for label, n_out, n_in in shapes_of(model):
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(n_out, n_in, generator=gen) * 0.02
            copies = 1 if hot else max(1, min(64, -(-COLD_BYTES // w.nbytes)))
            methods = linear_methods(w, options, copies)
            print(f"\n### {label}: {n_out} x {n_in} ({copies} cop{'y' if copies == 1 else 'ies'} in turn)")
            print("| rows | " + " | ".join(methods) + " |")
            print("|---:|" + "---:|" * len(methods))
            for rows in ROWS:
                x = torch.randn(rows, n_in, generator=gen)
                ref = methods["F.linear"](x)
                for name, fn in methods.items():
                    err = (fn(x) - ref).abs().max().item()
                    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), (label, rows, name, err)
                times = interleaved({k: (lambda f=f, x=x: f(x)) for k, f in methods.items()}, reps, 0.005)
                cells = [f"{statistics.median(times[k]) * 1e3:.3f} ({ratio(times, k, 'F.linear'):.2f})" for k in methods]
                print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)
            del methods, w
            gc.collect()


def whole_model(path: Path, reps: int, context: int) -> None:
    import skipspec

    model, _ = skipspec.load(str(path), device="cpu", dtype="float32")
    with torch.inference_mode():
        model_forwards(model, path.name, reps, context)


def model_forwards(model, name: str, reps: int, context: int) -> None:
    from skipspec.model.adapter import PLAIN_SUBLAYERS, Frame, ModelAdapter
    from skipspec.model.skipset import SkipSet
    from skipspec.runtime.cpu_linear import packed_linears, packed_sublayers

    adapter = ModelAdapter(model)
    before = rss_mb()
    packed = packed_sublayers(adapter)
    grown = rss_mb() - before
    every = packed_sublayers(adapter, min_rows=1)
    layers_only = packed_sublayers(adapter, head_min_rows=2)
    weights = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    linears = sum(m.linear.weight.numel() * 4 for m in packed_linears(packed)) / 2**20
    print(
        f"\n## {name}: whole forward after {context} cached tokens; {torch.get_num_threads()} threads\n"
        f"model weights {weights:.0f} MiB; packed copies of {len(packed_linears(packed))} linears "
        f"({linears:.0f} MiB of weights): RSS +{grown:.0f} MiB"
    )
    empty = SkipSet.empty()
    top = max(ROWS)
    cache = adapter.new_cache(context + top)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, adapter.vocab_size, (1, context + top), generator=gen)
    pre = Frame(
        ids[:, :context], torch.arange(context), 0, torch.ones(context, context, dtype=torch.bool).tril(),
        torch.arange(context),
    )  # fmt: skip
    adapter.forward(pre, cache, empty, last_only=True)
    variants = {"plain": PLAIN_SUBLAYERS, "packed": packed, "packed@1": every, "head@2": layers_only}
    fns = {}
    for n in ROWS:
        allowed = torch.ones(n, context + n, dtype=torch.bool)
        allowed[:, context:] = torch.ones(n, n, dtype=torch.bool).tril()
        frame = Frame(ids[:, context : context + n], torch.arange(context, context + n), context, allowed,
                      torch.arange(context + n))  # fmt: skip
        for name, run in variants.items():
            fns[(n, name)] = lambda f=frame, r=run: adapter.forward(f, cache, empty, sublayers=r)
    times = interleaved(fns, reps, 0.0)  # one forward per measurement: each is >= a few ms
    base = times[(1, "plain")]
    names = list(variants)
    print(
        "| tokens | " + " | ".join(f"{k} ms" for k in names) + " | "
        + " | ".join(f"{k} / plain" for k in names[1:]) + " | "
        + " | ".join(f"{k} / plain(1)" for k in names) + " |"
    )  # fmt: skip
    print("|---:|" + "---:|" * (3 * len(names) - 1))

    def r(a, b):
        return statistics.median(x / y for x, y in zip(a, b))

    for n in ROWS:
        ms = [f"{statistics.median(times[(n, k)]) * 1e3:.2f}" for k in names]
        vs_plain = [f"{r(times[(n, k)], times[(n, 'plain')]):.2f}" for k in names[1:]]
        vs_one = [f"{r(times[(n, k)], base):.2f}" for k in names]
        print(f"| {n} | " + " | ".join(ms + vs_plain + vs_one) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--options", action="store_true", help="also time the other ways to run a linear")
    ap.add_argument("--shapes", default=",".join(MODELS), help=f"models whose matrices to time: {list(MODELS)}")
    ap.add_argument("--hot", action="store_true", help="time each matrix on one copy (cache-resident when small)")
    ap.add_argument("--no-matrices", action="store_true")
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--model", type=Path, default=GGUF)
    ap.add_argument("--context", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, oneDNN {torch.backends.mkldnn.is_available()}")
    if not args.no_model:  # first: the RSS it reports is then not memory the matrices freed
        whole_model(args.model, args.reps, args.context)
    if not args.no_matrices:
        matrices([s for s in args.shapes.split(",") if s], args.reps, args.options, args.hot)


if __name__ == "__main__":
    main()
