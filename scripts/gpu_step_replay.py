"""What a verify step and a drafting step cost by bucket, replayed alone: SmolLM2-135M's shape
(random weights), bf16, CUDA graphs, on one GPU.

    python scripts/gpu_step_replay.py          # on a GPU: medians of 200 graph replays per bucket at
                                               # contexts of about 300, 1000 and 2000 tokens, then
                                               # torch.profiler's kernel tables at about 1000
    python scripts/gpu_step_replay.py --dry    # on a CPU: the same logic on a 4-layer model, static mode

Each drafting step of the warmed-up layouts (`hybrid`'s, `recycle`'s, `ngram`'s) is timed with the
copies that restore its inputs, less those copies alone. A development probe, not a benchmark:
`skipspec bench` makes the end-to-end numbers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from skipspec import SwiftConfig, SwiftDecoder
from skipspec.runtime import RuntimeConfig
from skipspec.runtime.buckets import pack_tree, packed_length
from skipspec.verify import GREEDY

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 64, 128, 256)
VOCAB = 49152


def smollm2_shape(dry: bool) -> torch.nn.Module:
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=4 if dry else 30,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=VOCAB, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)  # fmt: skip
    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def median_us(fn, dry: bool, n: int = 200) -> float:
    """Median microseconds of `fn` (CUDA events on a GPU; one wall-clock run on a CPU)."""
    if dry:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return sorted(times)[n // 2] * 1e3


def stage_chain(ex, bucket: int) -> None:
    """A chain of `bucket` nodes as the verify step's tree input."""
    layout = pack_tree(ex.committed, [0] + [5] * (bucket - 1), [-1] + list(range(bucket - 1)), bucket)
    ex.inputs.tree[: packed_length(bucket)].copy_(torch.tensor(layout))


def drafting_replay(ex, shape):
    """(one drafting step from the same inputs every time, the restoring copies alone)."""
    step = ex.drafting_graph(shape, GREEDY)
    d = ex._drafting_inputs(shape)
    buffers = (ex.inputs.tree, ex.inputs.root, d.history, d.table)
    saved = [b.clone() for b in buffers]

    def restore() -> None:
        for buffer, copy in zip(buffers, saved):
            buffer.copy_(copy)

    def run() -> None:
        restore()
        step()

    return run, restore


def kernel_table(fn, title: str, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    print(f"== {title}, 20 replays")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=90))


def describe(shape) -> str:
    return f"lookup={shape.lookup_nodes} template={len(shape.template_parents)}"


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="a CPU run of the logic on a 4-layer model")
    args = p.parse_args()
    dry = args.dry
    torch.manual_seed(0)
    model = smollm2_shape(dry)
    runtime = RuntimeConfig(tree_buckets=BUCKETS, **({"mode": "static", "device_drafting": True} if dry else {}))
    dec = SwiftDecoder(model, SwiftConfig(), runtime=runtime)
    print(f"warm-up {dec.warmup(2304, methods=('hybrid', 'recycle', 'ngram', 'ar')):.1f} s")
    ex, rng = dec.executor, torch.Generator().manual_seed(1)
    shapes = list(ex._shapes)

    def fill(context: int) -> None:  # a committed length of about `context`
        dec.generate(torch.randint(0, VOCAB, (context,), generator=rng).tolist(), 8, method="ar")

    rows = []
    for context in (300,) if dry else (300, 1000, 2000):
        fill(context)
        verify = []
        for bucket in BUCKETS:
            graph = ex.verify_graph(bucket, GREEDY)
            stage_chain(ex, bucket)
            verify.append(median_us(graph, dry))
        rows.append((context, verify))
        for shape in shapes:
            run, restore = drafting_replay(ex, shape)
            cost = median_us(run, dry) - median_us(restore, dry)
            restore()
            print(f"context {context}: drafting step {describe(shape)} (bucket {ex.drafting_bucket(shape)}): {cost:.0f} us")
    print("verify replay, us, by bucket:", BUCKETS)
    for context, verify in rows:
        print(context, " ".join(f"{us:.0f}" for us in verify))
    if dry:
        return
    fill(1000)
    for bucket in (32, 64):
        graph = ex.verify_graph(bucket, GREEDY)
        stage_chain(ex, bucket)
        kernel_table(graph, f"verify, bucket {bucket}", 22)
    for shape in shapes:
        run, _ = drafting_replay(ex, shape)
        kernel_table(run, f"drafting step {describe(shape)}", 30)


if __name__ == "__main__":
    main()
