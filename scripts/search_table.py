"""Summarise `skipspec bench` results for the search's table in docs/benchmarks.md.

    python scripts/search_table.py RESULTS.json [RESULTS.json ...]

Per model and method: tokens/s (total tokens / total time), speedup against `ar` over the same
prompts, mean accepted tokens per verify step, the skip-set size on the last prompt (and the range
over prompts), and the search's share of the time (optimize_time / time, calibration included).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    records = doc["records"]
    model = Path(str(doc.get("config", {}).get("model", path.parent.name))).name
    methods = list(dict.fromkeys(r["method"] for r in records))
    by = {m: [r for r in records if r["method"] == m] for m in methods}
    ar_rate = _rate(by["ar"]) if "ar" in by else None
    out = []
    for m, rs in by.items():
        rate = _rate(rs)
        steps = sum(r["verify_steps"] or 0 for r in rs)
        tau = sum((r["mean_accepted"] or 0) * (r["verify_steps"] or 0) for r in rs) / steps if steps else None
        sizes = [len(r["skip_attn"]) + len(r["skip_mlp"]) for r in rs]
        share = sum(r.get("optimize_time") or 0 for r in rs) / sum(r["time_s"] for r in rs)
        same = all(tuple(r["tokens"]) == tuple(a["tokens"]) for r, a in zip(rs, by.get("ar", rs)))
        out.append(
            f"| {model} | {m} | {len(rs)} | {rate:.2f} | {rate / ar_rate:.2f}x | "
            f"{tau:.2f} | {sizes[-1]} ({min(sizes)}-{max(sizes)}) | {share:.1%} | {'yes' if same else 'NO'} |"
            if ar_rate and tau is not None
            else f"| {model} | {m} | {len(rs)} | {rate:.2f} | - | - | - | - | - |"
        )
    return out


def _rate(records) -> float:
    return sum(r["new_tokens"] for r in records) / sum(r["time_s"] for r in records)


def main(paths: list[str]) -> None:
    print("| model | method | prompts | tokens/s | vs ar | mean accepted | set size, last (range) | search share | = ar |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        print("\n".join(rows(Path(p))))


if __name__ == "__main__":
    main(sys.argv[1:])
