"""Prefill chunking of a pipeline: one long prompt on 1 GPU (engine defaults) and on N GPUs with
each chunk_size / edge_chunk_size pair given, in one process, so that every speedup has its
1-GPU baseline from the same run. Writes JSON (and prints the best pair) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

from ember.bench import PromptMaker, run_prefill


def pairs(text: str) -> list[tuple[int, int]]:
    """'512:0,2048:512' -> [(512, 0), (2048, 512)] (chunk_size:edge_chunk_size, 0 = no edges)."""
    out = []
    for item in text.split(","):
        chunk, _, edge = item.partition(":")
        out.append((int(chunk), int(edge or 0)))
    return out


def measure(opts: dict[str, Any], prompt: int, reps: int) -> tuple[float, float]:
    """(best tok/s, its time to first token) over `reps` runs after a warm-up run."""
    from ember import LLM

    llm = LLM(f"random:{opts.pop('shape')}", skip_tokenizer_init=True, **opts)
    try:
        prompts = PromptMaker(int(llm.config["vocab_size"]))
        run_prefill(llm, prompts, prompt, 1)
        rates, ttfts = run_prefill(llm, prompts, prompt, reps)
    finally:
        llm.close()
        del llm
        gc.collect()
    best = max(range(len(rates)), key=lambda i: rates[i])
    return rates[best], ttfts[best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--transport", default="peer")
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--pairs", type=pairs, default=pairs("512:0,1024:0,2048:512,1024:512,768:0"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    base = {"shape": args.shape, "max_model_len": args.prompt + 16}
    t0 = time.perf_counter()
    rate1, ttft1 = measure({**base, "devices": [0]}, args.prompt, args.reps)
    print(f"1 GPU: pp{args.prompt} {rate1:.0f} tok/s, ttft {ttft1 * 1e3:.1f} ms", flush=True)
    rows = []
    for chunk, edge in args.pairs:
        opts = {
            **base,
            "devices": list(range(args.gpus)),
            "transport": args.transport,
            "chunk_size": chunk,
            "edge_chunk_size": edge,
        }
        rate, ttft = measure(opts, args.prompt, args.reps)
        rows.append(
            {
                "chunk_size": chunk,
                "edge_chunk_size": edge,
                "tok_s": rate,
                "ttft_s": ttft,
                "speedup": rate / rate1,
                "ttft_ratio": ttft / ttft1,
            }
        )
        print(
            f"{args.gpus} GPUs chunk {chunk} edge {edge}: {rate:.0f} tok/s = {rate / rate1:.2f}x, "
            f"ttft {ttft * 1e3:.1f} ms = {ttft / ttft1:.2f}x",
            flush=True,
        )
    best = max(rows, key=lambda r: r["tok_s"])
    print(
        f"best: chunk {best['chunk_size']} edge {best['edge_chunk_size']} "
        f"({best['speedup']:.2f}x); {time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "gpus": args.gpus,
                    "transport": args.transport,
                    "prompt": args.prompt,
                    "one_gpu": {"tok_s": rate1, "ttft_s": ttft1},
                    "pipeline": rows,
                    "best": best,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
