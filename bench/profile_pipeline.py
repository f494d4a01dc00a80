"""Where a pipeline's prefill time goes, per GPU: busy kernel time, idle gaps and the start and end
of each stage's work for one long prompt, against the same prompt on one GPU (PyTorch's CUPTI
profiler sees every kernel of the process on every device). A development tool: needs torch.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

# The runs are written as for chunk_sweep.py (bench/ is on the path of a script run from it).
from chunk_sweep import configs


def per_device(prof: Any) -> dict[int, list[tuple[float, float, str]]]:
    out: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for e in prof.events():
        if e.device_type.name != "CUDA" or e.name.startswith(("Memcpy", "Memset")):
            continue
        out[int(e.device_index)].append((e.time_range.start, e.time_range.end, e.name))
    for v in out.values():
        v.sort()
    return out


def families(ev: list[tuple[float, float, str]]) -> dict[str, float]:
    fam: dict[str, float] = defaultdict(float)
    for s, e, n in ev:
        key = "gemm (cuBLAS)" if n.startswith(("nvjet", "sm90", "cutlass")) else n.split("<")[0]
        fam[key.replace("void ember::cuda::(anonymous namespace)::", "")] += e - s
    return dict(sorted(fam.items(), key=lambda kv: -kv[1]))


def run(
    devices: list[int],
    prompt: int,
    chunk: int | None,
    edge: int | None,
    interleave: int = 0,
    batches: int = 0,
    transport: str = "auto",
) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from ember import LLM, SamplingParams

    llm = LLM(
        "random:llama3-8b",
        skip_tokenizer_init=True,
        devices=devices,
        max_model_len=prompt + 16,
        chunk_size=chunk,
        edge_chunk_size=edge,
        interleave=interleave or None,
        batches_in_flight=batches or None,
        transport=transport if len(devices) > 1 else "auto",
    )
    sp = SamplingParams(max_tokens=1, ignore_eos=True)
    ids = [(i * 7919) % 1000 + 1 for i in range(prompt)]
    llm.generate([ids], sp)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = llm.generate([[t + 1 for t in ids]], sp)
    ttft = out[0].metrics.time_to_first_token
    llm.close()
    evs = per_device(prof)
    t0 = min(v[0][0] for v in evs.values())
    res: dict[str, Any] = {
        "devices": devices,
        "chunk": chunk,
        "edge": edge,
        "interleave": interleave,
        "batches_in_flight": batches,
        "transport": transport,
        "ttft_ms": ttft * 1e3,
    }
    print(
        f"\n== devices {devices} {transport} chunk {chunk} edge {edge} "
        f"interleave {interleave or 'auto'} batches {batches or 'auto'}: ttft {ttft * 1e3:.1f} ms"
    )
    for d, ev in sorted(evs.items()):
        busy = sum(e - s for s, e, _ in ev)
        start, end = ev[0][0] - t0, ev[-1][1] - t0
        gaps = sorted((ev[i + 1][0] - ev[i][1] for i in range(len(ev) - 1)), reverse=True)
        fam = families(ev)
        print(
            f"  GPU {d}: first kernel {start / 1e3:7.2f} ms, last ends {end / 1e3:7.2f} ms, busy "
            f"{busy / 1e3:7.2f} ms, idle inside {(end - start - busy) / 1e3:6.2f} ms "
            f"(largest gaps {', '.join(f'{g / 1e3:.2f}' for g in gaps[:5])} ms)"
        )
        print("    " + ", ".join(f"{k} {v / 1e3:.1f}" for k, v in list(fam.items())[:7]))
        res[f"gpu{d}"] = {
            "start_ms": start / 1e3,
            "end_ms": end / 1e3,
            "busy_ms": busy / 1e3,
            "families_ms": {k: v / 1e3 for k, v in fam.items()},
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument(
        "--chunks",
        default="512:0,1024:512",
        help="[gpus@]chunk:edge[:interleave[:batches]] runs (gpus defaults to --gpus)",
    )
    ap.add_argument("--transport", default="auto", help="between GPU stages: auto, peer or host")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    torch.cuda.init()
    results = [run([0], args.prompt, None, None)]
    for item in args.chunks.split(","):
        gpus, _, spec = item.rpartition("@")
        chunk, edge, interleave, batches = configs(spec)[0]
        devices = list(range(int(gpus) if gpus else args.gpus))
        results.append(run(devices, args.prompt, chunk, edge, interleave, batches, args.transport))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
