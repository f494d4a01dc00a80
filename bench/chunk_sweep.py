"""Prefill chunking of a pipeline: one long prompt on 1 GPU (engine defaults) and on N GPUs with
each chunk_size / edge_chunk_size / interleave / batches_in_flight given, in one process, so
that every speedup has its 1-GPU baseline from the same run. Writes JSON (and prints the best)
for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

from ember.bench import PromptMaker, run_decode, run_prefill


def configs(text: str) -> list[tuple[int, int, int, int]]:
    """'512:0,2048:512:4:8' -> [(512, 0, 0, 0), (2048, 512, 4, 8)]:
    chunk_size:edge_chunk_size:interleave:batches_in_flight, edge 0 = no edges, interleave and
    batches 0 (or left out) = the engine's automatic choice."""
    out = []
    for item in text.split(","):
        fields = [int(f) for f in item.split(":")]
        if not 1 <= len(fields) <= 4:
            raise argparse.ArgumentTypeError(
                f"expected chunk[:edge[:interleave[:batches]]], got {item!r}"
            )
        fields += [0] * (4 - len(fields))
        out.append((fields[0], fields[1], fields[2], fields[3]))
    return out


def measure(opts: dict[str, Any], prompt: int, reps: int, decode: int) -> dict[str, float]:
    """Best prefill tok/s and its time to first token over `reps` runs after a warm-up run; with
    `decode`, also the best single-stream decode rate over `reps` runs of that many tokens."""
    from ember import LLM

    llm = LLM(f"random:{opts.pop('shape')}", skip_tokenizer_init=True, **opts)
    try:
        prompts = PromptMaker(int(llm.config["vocab_size"]))
        run_prefill(llm, prompts, prompt, 1)
        rates, ttfts = run_prefill(llm, prompts, prompt, reps)
        best = max(range(len(rates)), key=lambda i: rates[i])
        out = {"tok_s": rates[best], "ttft_s": ttfts[best]}
        if decode:
            run_decode(llm, prompts, decode, 0, 1)
            out["decode_tok_s"] = max(run_decode(llm, prompts, decode, 0, reps))
    finally:
        llm.close()
        del llm
        gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--transport", default="peer")
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--decode", type=int, default=0, help="also single-stream decode of N tokens")
    ap.add_argument(
        "--configs",
        type=configs,
        default=configs("1024:512:1,1024:512:2,1024:512:4,2048:512:4,1024:0:4"),
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    base = {"shape": args.shape, "max_model_len": args.prompt + 16}
    t0 = time.perf_counter()
    one = measure({**base, "devices": [0]}, args.prompt, args.reps, args.decode)
    rate1, ttft1 = one["tok_s"], one["ttft_s"]
    tg1 = f", tg{args.decode} {one['decode_tok_s']:.1f} tok/s" if args.decode else ""
    print(f"1 GPU: pp{args.prompt} {rate1:.0f} tok/s, ttft {ttft1 * 1e3:.1f} ms{tg1}", flush=True)
    rows = []
    for chunk, edge, interleave, batches in args.configs:
        opts = {
            **base,
            "devices": list(range(args.gpus)),
            "transport": args.transport,
            "chunk_size": chunk,
            "edge_chunk_size": edge,
            "interleave": interleave or None,
            "batches_in_flight": batches or None,
        }
        m = measure(opts, args.prompt, args.reps, args.decode)
        rate, ttft = m["tok_s"], m["ttft_s"]
        row = {
            "chunk_size": chunk,
            "edge_chunk_size": edge,
            "interleave": interleave,
            "batches_in_flight": batches,
            **m,
            "speedup": rate / rate1,
            "ttft_ratio": ttft / ttft1,
        }
        tg = ""
        if args.decode:
            row["decode_ratio"] = m["decode_tok_s"] / one["decode_tok_s"]
            tg = f", tg{args.decode} {m['decode_tok_s']:.1f} tok/s = {row['decode_ratio']:.3f}x"
        rows.append(row)
        print(
            f"{args.gpus} GPUs chunk {chunk} edge {edge} interleave {interleave or 'auto'} "
            f"batches {batches or 'auto'}: "
            f"{rate:.0f} tok/s = {rate / rate1:.2f}x, "
            f"ttft {ttft * 1e3:.1f} ms = {ttft / ttft1:.2f}x{tg}",
            flush=True,
        )
    best = max(rows, key=lambda r: r["tok_s"])
    print(
        f"best: chunk {best['chunk_size']} edge {best['edge_chunk_size']} "
        f"interleave {best['interleave'] or 'auto'} ({best['speedup']:.2f}x); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "gpus": args.gpus,
                    "transport": args.transport,
                    "prompt": args.prompt,
                    "one_gpu": one,
                    "pipeline": rows,
                    "best": best,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
