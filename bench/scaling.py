"""Pipeline-parallel scaling (issue 5): the same random-weight model on 1, 2 and 4 GPUs, peer and
host-staged transport, uncapped and with every GPU capped (the 24 GB consumer card), all in one
process so that each figure has its 1-GPU baseline from the same run.

Per configuration, in a fresh engine (the previous one closed and its memory returned first):
prefill of an 8192-token prompt (tok/s, time to first token), single-stream decode, offline
throughput (512-token prompts, 128 new tokens each) at 64 / 256 / 512 concurrent sequences and at
the largest concurrency the KV pool holds, and the per-stage compute / copy / idle timeline.
Capped configurations run only the largest-concurrency test unless --capped-tests all.
Prints tables, a markdown table for docs/benchmarks.md, and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ember.bench import (
    GIB,
    THROUGHPUT_GEN,
    THROUGHPUT_PROMPT,
    PromptMaker,
    format_ceilings,
    format_timeline,
    int_list,
    mean_sd,
    measure_ceilings,
    run_decode,
    run_prefill,
    run_throughput,
    sampling,
    timed,
)

ROOT = Path(__file__).resolve().parent.parent
SEQ_TOKENS = THROUGHPUT_PROMPT + THROUGHPUT_GEN


@dataclass
class Config:
    shape: str
    dtype: str
    gpus: int
    transport: str  # "-" for one GPU
    cap_gib: float  # 0 = uncapped

    @property
    def label(self) -> str:
        cap = f"{self.cap_gib:g} GiB" if self.cap_gib else "none"
        return f"{self.shape} {self.gpus} GPU transport={self.transport} cap={cap}"


@dataclass
class Measure:
    name: str
    values: list[float]
    mean: float
    sd: float
    median: float  # what the tables show: one stray slow run moves a mean of 3 by a percent or more
    extra: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, float]] | None = None


@dataclass
class ConfigResult:
    config: Config
    error: str | None = None
    load_s: float = 0.0
    num_blocks: int = 0
    block_size: int = 0
    interleave: int = 1  # blocks of layers per stage the engine chose (or was given)
    kv_holds: int = 0  # sequences of 640 tokens the KV pool holds
    max_concurrency: int = 0  # what the max test ran (kv_holds, bounded by max_num_seqs)
    measures: dict[str, Measure] = field(default_factory=dict)

    def typical(self, name: str) -> float | None:
        m = self.measures.get(name)
        return m.median if m else None


# ---- devices -----------------------------------------------------------------------------------


def visible_gpus() -> int:
    """CUDA devices this process may use: the binding if present, else `nvidia-smi -L`."""
    from ember import _C

    counter = getattr(_C, "cuda_device_count", None)
    if counter is not None:
        return int(counter())
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


# ---- one configuration -------------------------------------------------------------------------


def record(
    res: ConfigResult, name: str, values: list[float], wall: float, tl: Any, **extra: Any
) -> Measure:
    mean, sd = mean_sd(values)
    median = statistics.median(values) if values else 0.0
    m = Measure(name, values, mean, sd, median, {"wall_s": wall, **extra}, tl)
    res.measures[name] = m
    print(f"    {name}: median {median:.1f}, mean {mean:.1f} ± {sd:.1f}", flush=True)
    return m


def run_config(cfg: Config, args: argparse.Namespace) -> ConfigResult:
    from ember import LLM

    res = ConfigResult(cfg)
    opts: dict[str, Any] = {
        "devices": ["cpu"] * cfg.gpus if args.cpu else [str(i) for i in range(cfg.gpus)],
        "max_model_len": max(args.prompt + 1, SEQ_TOKENS, args.decode + 1),
        "max_num_seqs": args.max_num_seqs,
        "transport": cfg.transport if cfg.gpus > 1 else "auto",
        "skip_tokenizer_init": True,
        "profile_stages": bool(args.profile_stages),
    }
    if cfg.cap_gib:
        opts["max_memory"] = int(cfg.cap_gib * GIB)
    if args.max_num_batched_tokens is not None:
        opts["max_num_batched_tokens"] = args.max_num_batched_tokens
    # Chunking flags shape the pipelines only: the 1-GPU baseline keeps the engine's defaults.
    for key in ("chunk_size", "edge_chunk_size", "interleave"):
        if getattr(args, key) is not None and cfg.gpus > 1:
            opts[key] = getattr(args, key)
    print(f"== {cfg.label}", flush=True)
    t0 = time.perf_counter()
    try:
        llm = LLM(f"random:{cfg.shape}@{cfg.dtype}", **opts)
    except (RuntimeError, ValueError) as exc:
        res.error = str(exc)
        print(f"    does not start: {exc}", flush=True)
        return res
    res.load_s = time.perf_counter() - t0
    try:
        stats = llm.stats()
        res.num_blocks, res.block_size = int(stats["num_blocks"]), int(stats["block_size"])
        res.interleave = int(stats.get("interleave", 1))
        res.kv_holds = res.num_blocks // math.ceil(SEQ_TOKENS / res.block_size)
        res.max_concurrency = min(res.kv_holds, args.max_num_seqs)
        print(
            f"    loaded in {res.load_s:.1f} s; KV pool holds {res.kv_holds} sequences", flush=True
        )
        prompts = PromptMaker(int(llm.config["vocab_size"]))
        llm.generate([prompts(16)], sampling(8))  # warm-up
        full = not cfg.cap_gib or args.capped_tests == "all"
        reps = args.reps
        if full:
            (rates, ttfts), wall, tl = timed(
                llm, lambda: run_prefill(llm, prompts, args.prompt, reps)
            )
            record(res, f"pp{args.prompt}", rates, wall, tl)
            record(res, "ttft", ttfts, wall, None)
            rates, wall, tl = timed(llm, lambda: run_decode(llm, prompts, args.decode, 0, reps))
            record(res, f"tg{args.decode}", rates, wall, tl)
            for c in args.concurrency:
                if c > res.kv_holds:
                    print(f"    c{c}: skipped, the KV pool holds {res.kv_holds}", flush=True)
                    continue
                (gen, total), wall, tl = timed(
                    llm, lambda c=c: run_throughput(llm, prompts, c, args.throughput_reps)
                )
                record(res, f"c{c}", gen, wall, tl, total_tok_s=total)
        if res.max_concurrency > 0:
            c = res.max_concurrency
            (gen, total), wall, tl = timed(
                llm, lambda: run_throughput(llm, prompts, c, args.throughput_reps)
            )
            record(res, "cmax", gen, wall, tl, total_tok_s=total, concurrency=c)
    except (RuntimeError, ValueError) as exc:
        res.error = str(exc)
        print(f"    failed: {exc}", flush=True)
    finally:
        llm.close()
        gc.collect()
    return res


# ---- tables ------------------------------------------------------------------------------------


def baseline(results: list[ConfigResult], cfg: Config) -> ConfigResult | None:
    for r in results:
        c = r.config
        if (c.shape, c.gpus, c.cap_gib) == (cfg.shape, 1, cfg.cap_gib) and r.error is None:
            return r
    return None


def base_typical(b: ConfigResult | None, name: str) -> float | None:
    return b.typical(name) if b is not None else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "-"


def num(x: float | None, fmt: str = ".0f") -> str:
    return format(x, fmt) if x is not None else "-"


def markdown(results: list[ConfigResult], args: argparse.Namespace, card: str, date: str) -> str:
    cs = args.concurrency
    head = (
        [
            "shape",
            "GPUs",
            "transport",
            "interleave",
            "cap",
            f"pp{args.prompt} tok/s",
            "×1",
            "TTFT s",
            "÷1",
            f"tg{args.decode} tok/s",
            "×1",
        ]
        + [f"c{c} out tok/s" for c in cs]
        + ["KV holds", "cmax", "cmax out tok/s", "×1"]
    )
    lines = [
        f"Card: {card}; date {date}; random weights ({args.dtype}); "
        f"prompts of {THROUGHPUT_PROMPT} tokens, {THROUGHPUT_GEN} new tokens for throughput.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    pp, tg = f"pp{args.prompt}", f"tg{args.decode}"
    for r in results:
        c = r.config
        cap = f"{c.cap_gib:g} GiB" if c.cap_gib else "none"
        if r.error is not None:
            reason = r.error.splitlines()[0][:80]
            lines.append(f"| {c.shape} | {c.gpus} | {c.transport} | - | {cap} | error: {reason} |")
            continue
        b = baseline(results, c)
        ttft, ttft1 = r.typical("ttft"), base_typical(b, "ttft")
        row = [
            c.shape,
            str(c.gpus),
            c.transport,
            str(r.interleave),
            cap,
            num(r.typical(pp)),
            ratio(r.typical(pp), base_typical(b, pp)),
            num(ttft, ".3f"),
            ratio(ttft, ttft1),
            num(r.typical(tg), ".1f"),
            ratio(r.typical(tg), base_typical(b, tg)),
            *(num(r.typical(f"c{k}")) for k in cs),
            str(r.kv_holds),
            str(r.max_concurrency),
            num(r.typical("cmax")),
            ratio(r.typical("cmax"), base_typical(b, "cmax")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Each figure the median of its runs. ×1: against 1 GPU with the same cap in the same run; "
        "÷1: TTFT over 1 GPU's TTFT "
        "(lower is better); cmax: the largest concurrency the KV pool holds "
        f"({SEQ_TOKENS}-token sequences, at most --max-num-seqs={args.max_num_seqs})."
    )
    return "\n".join(lines)


def timelines(results: list[ConfigResult]) -> str:
    out = []
    for r in results:
        parts = [
            format_timeline(name, m.stages)
            for name, m in r.measures.items()
            if m.stages and len(m.stages) > 1
        ]
        if parts:
            out.append(f"{r.config.label}\n" + "\n".join(parts))
    return "\n".join(out)


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shape",
        action="append",
        default=None,
        help="random-weight shape (repeatable; default llama3-8b; also qwen3-32b)",
    )
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument(
        "--counts",
        type=int_list,
        default=[1, 2, 4],
        help="GPU counts to try; those beyond the visible GPUs are skipped",
    )
    p.add_argument("--transports", default="peer,host")
    p.add_argument(
        "--caps", default="0,24", help="per-GPU memory caps in GiB, 0 = uncapped (default 0,24)"
    )
    p.add_argument("--capped-tests", choices=["max", "all"], default="max")
    p.add_argument("--prompt", type=int, default=8192, help="prefill prompt length")
    p.add_argument("--decode", type=int, default=128, help="single-stream decode tokens")
    p.add_argument("--concurrency", type=int_list, default=[64, 256, 512])
    p.add_argument("--reps", type=int, default=2, help="timed runs of prefill and decode")
    p.add_argument("--throughput-reps", type=int, default=1)
    p.add_argument("--max-num-seqs", type=int, default=4096)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument(
        "--profile-stages",
        action="store_true",
        help="sync each stage step to time compute and copy",
    )
    p.add_argument(
        "--chunk-size", type=int, default=None, help="pipelines only (1 GPU keeps the default)"
    )
    p.add_argument(
        "--edge-chunk-size",
        type=int,
        default=None,
        help="first and last chunk of a prompt (0 = off; default automatic)",
    )
    p.add_argument(
        "--interleave",
        type=int,
        default=None,
        help="blocks of layers per stage, pipelines only (default automatic)",
    )
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument(
        "--cpu",
        action="store_true",
        help="CPU stages instead of GPUs, uncapped (a smoke test of this script)",
    )
    p.add_argument(
        "--json", default=None, help="default bench/results/scaling_<shapes>_<date>.json"
    )
    args = p.parse_args(argv)
    args.shape = args.shape or ["llama3-8b"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    visible = max(args.counts) if args.cpu else visible_gpus()
    counts = [n for n in args.counts if n <= visible]
    if not counts:
        raise SystemExit(
            f"scaling.py: no GPU count of {args.counts} fits the {visible} visible GPUs"
        )
    skipped = [n for n in args.counts if n > visible]
    if skipped:
        print(f"skipping {skipped} GPUs: only {visible} visible", flush=True)
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    caps = [0.0] if args.cpu else [float(c) for c in args.caps.split(",") if c.strip()]

    ceilings: dict[str, Any] | None = None
    if not args.no_ceilings:  # before any engine reserves the cards
        ceilings = measure_ceilings("cpu" if args.cpu else "cuda:0")
        print(format_ceilings(ceilings), flush=True)
    card = ceilings["device_name"] if ceilings else "unknown card"

    configs = [
        Config(shape, args.dtype, n, t if n > 1 else "-", cap)
        for shape in args.shape
        for cap in caps
        for n in counts
        for t in (transports if n > 1 else ["-"])
    ]
    results = [run_config(cfg, args) for cfg in configs]

    date = _dt.datetime.now()
    print("\n" + timelines(results))
    md = markdown(results, args, card, date.strftime("%Y-%m-%d"))
    print("\n" + md)
    stem = "scaling_" + "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", s) for s in args.shape)
    out = (
        Path(args.json)
        if args.json
        else (ROOT / "bench" / "results" / f"{stem}_{date.strftime('%Y%m%d-%H%M%S')}.json")
    )
    doc = {
        "tool": "bench/scaling.py",
        "date": date.isoformat(timespec="seconds"),
        "card": card,
        "visible_gpus": visible,
        "args": vars(args),
        "ceilings": ceilings,
        "results": [asdict(r) for r in results],
        "markdown": md,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
