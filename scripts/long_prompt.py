"""Write one long prompt (a text suite for `skipspec bench`) made of Spec-Bench documents.

    python scripts/long_prompt.py --model SmolLM2-135M-Instruct.Q4_1.gguf --tokens 3900 -o long4k.txt
    skipspec bench --model SmolLM2-135M-Instruct.Q4_1.gguf --suite long4k.txt ...

The first turns of the summarization and RAG questions, alternately, joined by spaces (newlines
too: a text suite holds one prompt per line), as many as fit in `--tokens` tokens of the model's
tokenizer, then an instruction to summarise them. What it measures: the host's cost per step at
a long context (the n-gram index, staging a tree over a long cache), on text that drafts copy
from.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import skipspec
from skipspec.bench.suites import load_suite

INSTRUCTION = "Summarize the main points of all the documents above in a few paragraphs."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="whose tokenizer counts the tokens")
    p.add_argument("--suite", default="spec-bench", help="Spec-Bench questions (.jsonl, or the spec-bench shortcut)")
    p.add_argument("--tokens", type=int, default=3900, help="most tokens of the prompt, instruction included")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()

    _, tok = skipspec.load(args.model)
    prompts = load_suite(args.suite)
    by_category = [[q.text for q in prompts if q.category == c] for c in ("summarization", "rag")]
    documents: list[str] = []

    def length(texts: list[str]) -> int:
        return len(tok(" ".join([*texts, INSTRUCTION]))["input_ids"])

    for text in itertools.chain.from_iterable(itertools.zip_longest(*by_category)):
        if text is None:
            continue
        text = " ".join(text.split())
        if length([*documents, text]) > args.tokens:
            break
        documents.append(text)
    line = " ".join([*documents, INSTRUCTION])
    args.out.write_text(line + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(documents)} documents, {length(documents)} tokens")


if __name__ == "__main__":
    main()
