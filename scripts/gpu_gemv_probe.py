"""How fast skipspec's skinny-linear kernel streams a Llama-2-7B layer's weights, against cuBLAS.

For each weight shape of the 7B step (grouped q/k/v, o, grouped gate/up, down, the head) and each
row count (1 = a plain step; 4-64 = a tree's tokens): milliseconds of one product and the bytes it
streams per second, as a share of the copy bandwidth, for

- cuBLAS (`F.linear`) with the weight row-major (nn.Linear's layout) and column-major (the fast
  path's packed layout, `runtime.weights`);
- the kernel with the tile sizes `linear_kernels.choose` picks (where it picks the kernel);
- the kernel over a sweep of tile sizes on row-major weights (`--sweep`), to tune `choose`.

Each timing is a CUDA graph of one product on each of 32 distinct weight copies (nothing stays in
L2), replayed >= 20 times, median; results are checked against cuBLAS.

Run:   PYTHONPATH=src python3 scripts/gpu_gemv_probe.py --out $OUT/gemv [--sweep] [--budget 240]
Writes results.json under --out; prints a Markdown table last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import copy_bandwidth, log  # noqa: E402
from gpu_floor_probe import SHAPES, graph_ms, run_probe  # noqa: E402

from skipspec.runtime.linear_kernels import LinearConfig, choose, linear  # noqa: E402

COPIES = 32
ROWS = (1, 2, 4, 8, 16, 32, 64)


def sweep_configs(rows: int) -> list[LinearConfig]:
    """Tile sizes worth trying for `rows` rows of a row-major weight."""
    if rows == 1:
        return [LinearConfig(n, k, 1, w) for n, k, w in itertools.product((8, 16, 32), (256, 512, 1024), (4, 8))]
    if rows <= 16:
        grid = itertools.product((16, 32, 64), (128, 256, 512), (4,), (3, 4, 5))
        return [LinearConfig(n, k, 16, w, s) for n, k, w, s in grid if n * k <= 16384]
    # More rows: one tile of all of them (the weight read once), shorter steps to fit the pipeline,
    # 8 warps for the 64 x 64 accumulator.
    block_m = 32 if rows <= 32 else 64
    grid = itertools.product((32, 64), (64, 128, 256), (3, 4))
    return [LinearConfig(n, k, block_m, 8 if n * block_m >= 4096 else 4, s) for n, k, s in grid]


class Weights:
    """COPIES distinct weights of one shape, in one layout, and an input of `rows` rows."""

    def __init__(self, shape: tuple[int, int], column_major: bool, dev: torch.device) -> None:
        out_f, in_f = shape
        self.ws = []
        for _ in range(COPIES):
            w = torch.empty(out_f, in_f, device=dev, dtype=torch.bfloat16).normal_(0, 0.02)
            self.ws.append(w.t().contiguous().t() if column_major else w)
        self.dev = dev

    def time(self, fn, rows: int, reps: int) -> float:
        x = torch.randn(rows, self.ws[0].shape[1], device=self.dev, dtype=torch.bfloat16)
        return graph_ms(lambda: [fn(x, w) for w in self.ws], reps, self.dev) / COPIES

    def check(self, cfg: LinearConfig, rows: int) -> float:
        """Largest error against the float32 product, relative to the largest output."""
        x = torch.randn(rows, self.ws[0].shape[1], device=self.dev, dtype=torch.bfloat16)
        want = F.linear(x.float(), self.ws[0].float())
        got = linear(x, self.ws[0], None, cfg).float()
        return ((got - want).abs().max() / want.abs().max()).item()


def run(args, out: Path) -> dict:
    dev, reps = torch.device("cuda"), 20
    R: dict = {"env": {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "argv": sys.argv[1:]}}
    R["copy_Bps"] = copy_bandwidth(dev)
    R["rows"] = {}

    def save():
        (out / "results.json").write_text(json.dumps(R, indent=1, default=str))

    # The shapes a step of the fast path multiplies (q/k/v and gate/up grouped), the most frequent first.
    order = ("4096x4096", "4096x11008", "12288x4096", "22016x4096", "32000x4096")
    for shape_name, shape in sorted(((n, s) for n, s in SHAPES.items() if n.split()[0] in order),
                                    key=lambda kv: order.index(kv[0].split()[0])):  # fmt: skip
        nbytes = shape[0] * shape[1] * 2
        for column_major in (False, True):
            layout = "colmajor" if column_major else "rowmajor"
            try:
                w = Weights(shape, column_major, dev)
            except Exception:
                log(f"{shape_name} {layout}: FAILED to allocate\n{traceback.format_exc()}")
                continue
            for rows in ROWS:
                key = f"{shape_name} | {layout} | {rows}"
                res: dict = {}
                try:
                    res["cublas_ms"] = w.time(F.linear, rows, reps)
                    cfg = choose(rows, shape[0], shape[1], column_major)
                    if cfg is not None:
                        res["kernel_cfg"] = str(cfg)
                        res["kernel_ms"] = w.time(lambda x, v, c=cfg: linear(x, v, None, c), rows, reps)
                        res["kernel_rel_err"] = w.check(cfg, rows)
                    swept = args.sweep and rows in args.sweep_rows and not column_major
                    for cfg in sweep_configs(rows) if swept else ():
                        if time.perf_counter() - T0 > args.budget:
                            break
                        try:
                            ms = w.time(lambda x, v, c=cfg: linear(x, v, None, c), rows, reps)
                        except Exception as e:  # out of resources for a tile: note it, go on
                            res.setdefault("failed", []).append(f"{cfg}: {type(e).__name__}")
                            continue
                        res.setdefault("sweep", {})[f"{cfg.block_n}x{cfg.block_k}x{cfg.block_m} w{cfg.warps}"] = ms
                        if ms < res.get("best_ms", float("inf")):
                            res["best_ms"], res["best_cfg"] = ms, str(cfg)
                            res["best_rel_err"] = w.check(cfg, rows)
                except Exception:
                    log(f"{key}: FAILED\n{traceback.format_exc()}")
                for k in ("cublas_ms", "kernel_ms", "best_ms"):
                    if k in res:
                        res[k.replace("_ms", "_bw")] = nbytes / (res[k] / 1e3) / R["copy_Bps"]
                R["rows"][key] = res
                log(f"{key}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()
                                           if k not in ("failed", "sweep")))  # fmt: skip
                save()
            del w
            torch.cuda.empty_cache()
    R["elapsed_s"] = time.perf_counter() - T0
    save()
    return R


def table(R: dict) -> str:
    head = "| shape | layout | rows | cuBLAS ms (of copy bw) | kernel ms (of copy bw) | best swept ms (of copy bw), tiles |"
    rows = [head, "|---|---|---|---|---|---|"]
    for key, r in R["rows"].items():
        cells = [f"{r[k + '_ms']:.4f} ({r[k + '_bw']:.0%})" if k + "_ms" in r else "-" for k in ("cublas", "kernel", "best")]
        best = f"{cells[2]}, {r.get('best_cfg', '')}" if "best_ms" in r else "-"
        rows.append(f"| {key} | {cells[0]} | {cells[1]} | {best} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/gemv")
    ap.add_argument("--sweep", action="store_true", help="also time a sweep of tile sizes")
    ap.add_argument("--sweep-rows", default="1,16,64", help="row counts the sweep covers")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds after start past which no sweep starts")
    args = ap.parse_args()
    args.sweep_rows = {int(v) for v in args.sweep_rows.split(",")}
    return run_probe(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
