"""Where the GPU time of a decode step (and of a prefill) goes, kernel by kernel.

Uses PyTorch's CUPTI profiler, which records every kernel of the process (ours included, graph
replays too), so gaps between kernels show up as well. A development tool: needs torch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def kernel_events(prof: Any) -> list[tuple[float, float, str]]:
    """(start µs, end µs, name) of every GPU kernel the profiler saw, in start order."""
    out = []
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        name = e.name
        if name.startswith("Memcpy") or name.startswith("Memset"):
            continue
        out.append((e.time_range.start, e.time_range.end, name))
    out.sort()
    return out


def runtime_calls(prof: Any, steps: int) -> dict[str, Any]:
    """CUDA runtime calls of every thread (CUPTI records them too): count and µs per step."""
    calls: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type.name == "CPU" and e.name.startswith("cuda"):
            calls[e.name].append(e.time_range.end - e.time_range.start)
    rows = sorted(((n, len(d), sum(d)) for n, d in calls.items()), key=lambda r: -r[2])
    print(f"{'runtime call':<40} {'n/step':>7} {'µs/step':>9} {'µs each':>8}")
    for n, c, t in rows[:12]:
        print(f"{n[:40]:<40} {c / steps:7.1f} {t / steps:9.1f} {t / c:8.2f}")
    return {n: {"per_step": c / steps, "us_per_step": t / steps} for n, c, t in rows}


def summarize(events: list[tuple[float, float, str]], steps: int, label: str) -> dict[str, Any]:
    if not events:
        return {"label": label, "kernels": 0}
    span = events[-1][1] - events[0][0]
    busy = sum(e - s for s, e, _ in events)
    per_name: dict[str, list[float]] = defaultdict(list)
    for s, e, n in events:
        per_name[n].append(e - s)
    gaps = [max(0.0, events[i + 1][0] - events[i][1]) for i in range(len(events) - 1)]
    # A step starts with the embedding gather: the gap before it is the host's turn-around.
    step_gaps = [g for i, g in enumerate(gaps) if "embedding" in events[i + 1][2]]
    big_gaps = sorted(gaps, reverse=True)[: max(steps, 1) * 2]
    rows = sorted(
        ((n, len(d), sum(d)) for n, d in per_name.items()), key=lambda r: r[2], reverse=True
    )
    print(
        f"\n== {label}: {len(events)} kernels, span {span / 1e3:.3f} ms, busy {busy / 1e3:.3f} ms "
        f"({100 * busy / span:.1f} %), per step: span {span / steps / 1e3:.3f} ms, "
        f"busy {busy / steps / 1e3:.3f} ms, gaps {sum(gaps) / steps / 1e3:.3f} ms "
        f"(largest {', '.join(f'{g:.0f}' for g in big_gaps[:6])} µs)"
    )
    print(f"{'kernel':<70} {'n/step':>7} {'µs/step':>9} {'µs each':>8} {'%':>5}")
    for n, count, total in rows[:25]:
        print(
            f"{n[:70]:<70} {count / steps:7.1f} {total / steps:9.1f} {total / count:8.2f} "
            f"{100 * total / busy:5.1f}"
        )
    return {
        "label": label,
        "steps": steps,
        "kernels": len(events),
        "span_us_per_step": span / steps,
        "busy_us_per_step": busy / steps,
        "gap_us_per_step": sum(gaps) / steps,
        "gap_before_step_us": step_gaps,
        "by_kernel": [
            {"name": n, "per_step": c / steps, "us_per_step": t / steps} for n, c, t in rows
        ],
    }


def print_timeline(events: list[tuple[float, float, str]], count: int) -> None:
    """The first `count` kernels of the step that starts at the middle embedding gather."""
    starts = [i for i, e in enumerate(events) if "embedding" in e[2]]
    if not starts:
        return
    first = starts[len(starts) // 2]
    t0 = events[first][0]
    print(f"\n{'start µs':>9} {'end µs':>9} {'dur':>7}  kernel")
    for s, e, n in events[first : first + count]:
        short = n.replace("void ember::cuda::(anonymous namespace)::", "").split(">(")[0]
        short = short.replace("__nv_bfloat16", "bf16").replace("ember::cuda::", "")
        print(f"{s - t0:9.1f} {e - t0:9.1f} {e - s:7.1f}  {short[:90]}")


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ember import LLM, SamplingParams

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--chunk-size", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--timeline",
        type=int,
        default=0,
        metavar="N",
        help="print the first N kernels of one mid-run decode step: start, end (µs) and name",
    )
    args = ap.parse_args()

    torch.cuda.init()
    llm = LLM(
        f"random:{args.shape}",
        skip_tokenizer_init=True,
        devices=[0],
        max_model_len=max(args.prompt, args.depth + args.gen) + 16,
        use_cuda_graphs=not args.no_cuda_graphs,
        chunk_size=args.chunk_size or None,
    )
    vocab = 1000

    def prompt(n: int, salt: int) -> list[int]:
        return [(i * 7919 + salt) % vocab + 1 for i in range(n)]

    sp = SamplingParams(max_tokens=args.gen, temperature=0.0, ignore_eos=True)
    llm.generate([prompt(args.depth, 1)], sp)  # warm-up: graphs captured here
    llm.generate([prompt(args.depth, 2)], sp)
    results = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        out = llm.generate([prompt(args.depth, 3)], sp)
        wall = time.perf_counter() - t0
    rate = out[0].metrics.decode_tokens_per_s
    print(f"decode: {rate:.1f} tok/s reported, wall {wall * 1e3:.1f} ms for {args.gen} tokens")
    ev = kernel_events(prof)
    # The prompt is a single token, so nearly every kernel here belongs to a decode step.
    calls = runtime_calls(prof, args.gen)
    results.append(
        summarize(
            ev, args.gen, f"decode d{args.depth} ({'no ' if args.no_cuda_graphs else ''}graphs)"
        )
    )
    results[-1]["runtime_calls"] = calls
    if args.timeline:
        print_timeline(ev, args.timeline)
    if args.prompt:
        llm.generate([prompt(args.prompt, 4)], SamplingParams(max_tokens=1, ignore_eos=True))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = llm.generate(
                [prompt(args.prompt, 5)], SamplingParams(max_tokens=1, ignore_eos=True)
            )
        ttft = out[0].metrics.time_to_first_token
        print(f"\nprefill {args.prompt}: ttft {ttft * 1e3:.1f} ms = {args.prompt / ttft:.0f} tok/s")
        results.append(summarize(kernel_events(prof), 1, f"prefill {args.prompt}"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
