"""`ember bench`: a llama-bench style table (pp / tg / tg at depth / concurrent throughput) on one
engine configuration, each figure shown as a fraction of a bound computed from hardware ceilings
that are measured on the same machine in the same run.

Bounds (a figure can not beat its bound; attention FLOPs and KV writes are left out of them):
  tg           copy bandwidth / bytes of every weight matrix read per token (lm_head included,
               the embedding gather excluded)
  tg @ dN      copy bandwidth / (those bytes + KV bytes read at depth N:
               2 * layers * kv_heads * head_dim * KV dtype bytes * N)
  pp           bf16 matmul rate / (2 * layer matmul parameters + 2 * lm_head parameters / P):
               FLOP per prompt token, the lm_head running once per prompt
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "f32": 4, "f16": 2, "bf16": 2}
THROUGHPUT_PROMPT = 512
THROUGHPUT_GEN = 128
WARMUP_PROMPT = 16
WARMUP_GEN = 8
GIB = 1 << 30


# ---- what the model costs per token ------------------------------------------------------------


@dataclass
class ModelCost:
    """Parameter and byte counts the bounds are computed from."""

    num_parameters: int
    dtype_bytes: int
    kv_dtype_bytes: int
    layer_matmul_params: int  # q, k, v, o, gate, up, down of every layer
    lm_head_params: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any], on_gpu: bool) -> ModelCost:
        h = int(cfg["hidden_size"])
        q = int(cfg["num_heads"]) * int(cfg["head_dim"])
        kv = int(cfg["num_kv_heads"]) * int(cfg["head_dim"])
        f = int(cfg["intermediate_size"])
        layers = int(cfg["num_layers"])
        dtype_bytes = DTYPE_BYTES.get(str(cfg.get("dtype", "BF16")), 2)
        return cls(
            num_parameters=int(cfg["num_parameters"]),
            dtype_bytes=dtype_bytes,
            # The CPU backend keeps activations and the KV cache in f32; CUDA in the weights' dtype.
            kv_dtype_bytes=dtype_bytes if on_gpu else 4,
            layer_matmul_params=layers * (h * q + 2 * h * kv + q * h + 3 * h * f),
            lm_head_params=int(cfg["vocab_size"]) * h,
            num_layers=layers,
            num_kv_heads=int(cfg["num_kv_heads"]),
            head_dim=int(cfg["head_dim"]),
        )

    @property
    def size_bytes(self) -> int:
        return self.num_parameters * self.dtype_bytes

    @property
    def weight_bytes_per_token(self) -> int:
        return (self.layer_matmul_params + self.lm_head_params) * self.dtype_bytes

    def kv_bytes_per_token(self, depth: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes * depth

    def decode_bound(self, copy_bytes_per_s: float, depth: int) -> float:
        return copy_bytes_per_s / (self.weight_bytes_per_token + self.kv_bytes_per_token(depth))

    def prefill_bound(self, matmul_flops_per_s: float, n_prompt: int) -> float:
        flop_per_token = 2 * self.layer_matmul_params + 2 * self.lm_head_params / n_prompt
        return matmul_flops_per_s / flop_per_token


# ---- one test's numbers ------------------------------------------------------------------------


@dataclass
class TestResult:
    test: str
    kind: str  # "pp", "tg" or "throughput"
    n_prompt: int
    n_gen: int
    depth: int
    concurrency: int
    unit: str
    values: list[float]
    mean: float
    sd: float
    bound: float | None = None
    pct_of_bound: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, float]] | None = None


def cpu_prefill_decode(
    llm: Any, prompt: list[int], new_tokens: int, repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """The CPU scripts' measurement after a warm-up: per repeat, prefill tok/s of `prompt`, decode
    tok/s of `new_tokens` after an 8-token prompt, and the 1-minute load average before it."""
    import os

    from ember import SamplingParams

    llm.generate([prompt[:16]], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    pp, tg, load = [], [], []
    for _ in range(repeats):
        load.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))
        pp.append(len(prompt) / (time.perf_counter() - t0))
        out = llm.generate(
            [prompt[:8]], SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        )[0]
        tg.append(float(out.metrics.decode_tokens_per_s))
    return pp, tg, load


def write_cpu_result(out: str, benchmark: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    """The JSON the CPU benchmark scripts write: what ran, on which machine, when, and the rows."""
    import os
    from pathlib import Path

    result = {
        "benchmark": benchmark,
        **extra,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def make_result(
    test: str,
    kind: str,
    values: list[float],
    *,
    n_prompt: int,
    n_gen: int,
    depth: int = 0,
    concurrency: int = 1,
    unit: str = "tok/s",
    bound: float | None = None,
) -> TestResult:
    mean, sd = mean_sd(values)
    pct = 100.0 * mean / bound if bound else None
    return TestResult(
        test, kind, n_prompt, n_gen, depth, concurrency, unit, values, mean, sd, bound, pct
    )


# ---- per-stage timeline ------------------------------------------------------------------------


def stage_snapshot(llm: Any) -> list[dict[str, float]] | None:
    stages = llm.stats().get("stages")
    if not stages:
        return None
    return [{k: float(v) for k, v in dict(s).items() if isinstance(v, int | float)} for s in stages]


def stage_timeline(
    before: list[dict[str, float]] | None, after: list[dict[str, float]] | None, wall_s: float
) -> list[dict[str, float]] | None:
    """Per stage: compute, copy and idle seconds over a test (idle = wall - compute - copy)."""
    if before is None or after is None or len(before) != len(after):
        return None
    out = []
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        compute = a.get("compute_s", 0.0) - b.get("compute_s", 0.0)
        copy = a.get("copy_s", 0.0) - b.get("copy_s", 0.0)
        out.append(
            {
                "stage": i,
                "wall_s": wall_s,
                "compute_s": compute,
                "copy_s": copy,
                "idle_s": max(0.0, wall_s - compute - copy),
                "batches": a.get("batches", 0.0) - b.get("batches", 0.0),
            }
        )
    return out


def format_timeline(test: str, timeline: list[dict[str, float]]) -> str:
    lines = [f"  {test}: per-stage timeline (s)"]
    for s in timeline:
        wall = s["wall_s"] or 1.0
        parts = [
            f"{key} {s[key + '_s']:8.3f} ({100 * s[key + '_s'] / wall:5.1f}%)"
            for key in ("compute", "copy", "idle")
        ]
        lines.append(
            f"    stage {int(s['stage'])}: " + "  ".join(parts) + f"  batches {int(s['batches'])}"
        )
    return "\n".join(lines)


# ---- the runs ----------------------------------------------------------------------------------


class PromptMaker:
    """Distinct pseudo-random prompts, so that no two timed runs share a prefix."""

    def __init__(self, vocab_size: int, seed: int = 1) -> None:
        self._vocab = vocab_size
        self._rng = np.random.default_rng(seed)

    def __call__(self, n: int) -> list[int]:
        return self._rng.integers(0, self._vocab, size=n).tolist()


def _check(outs: Sequence[Any], llm: Any, expected: int) -> None:
    for o in outs:
        c = o.outputs[0]
        if c.finish_reason == "error" or len(c.token_ids) != expected:
            why = llm.fatal_error or f"finish_reason={c.finish_reason!r}"
            raise RuntimeError(
                f"request {o.request_id} produced {len(c.token_ids)} of {expected} tokens ({why})"
            )


def sampling(n: int) -> Any:
    from ember import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run_prefill(
    llm: Any, prompts: PromptMaker, n_prompt: int, reps: int
) -> tuple[list[float], list[float]]:
    """Prompt tokens over time to first token; returns (tok/s per run, ttft per run).

    One untimed run first, as llama-bench does: the first prompt of a length pays one-time costs
    (the GEMM algorithm timing per shape, attention work-item buffers growing)."""
    llm.generate([prompts(n_prompt)], sampling(1))
    rates, ttfts = [], []
    for _ in range(reps):
        out = llm.generate([prompts(n_prompt)], sampling(1))
        _check(out, llm, 1)
        ttft = float(out[0].metrics.time_to_first_token)
        ttfts.append(ttft)
        rates.append(n_prompt / ttft)
    return rates, ttfts


def run_decode(llm: Any, prompts: PromptMaker, n_gen: int, depth: int, reps: int) -> list[float]:
    """Single-stream decode rate after a prompt of `depth` tokens (1 token when depth is 0)."""
    rates = []
    for _ in range(reps):
        out = llm.generate([prompts(max(depth, 1))], sampling(n_gen))
        _check(out, llm, n_gen)
        rates.append(float(out[0].metrics.decode_tokens_per_s))
    return rates


def run_throughput(
    llm: Any,
    prompts: PromptMaker,
    concurrency: int,
    reps: int,
    n_prompt: int = THROUGHPUT_PROMPT,
    n_gen: int = THROUGHPUT_GEN,
) -> tuple[list[float], list[float]]:
    """`concurrency` requests submitted at once; returns (output tok/s, total tok/s) per run."""
    gen_rates, total_rates = [], []
    for _ in range(reps):
        batch = [prompts(n_prompt) for _ in range(concurrency)]
        t0 = time.perf_counter()
        outs = llm.generate(batch, sampling(n_gen))
        dt = time.perf_counter() - t0
        _check(outs, llm, n_gen)
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        gen_rates.append(generated / dt)
        total_rates.append((generated + concurrency * n_prompt) / dt)
    return gen_rates, total_rates


def timed(llm: Any, fn: Callable[[], Any]) -> tuple[Any, float, list[dict[str, float]] | None]:
    before = stage_snapshot(llm)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    return result, wall, stage_timeline(before, stage_snapshot(llm), wall)


# ---- ceilings ----------------------------------------------------------------------------------


def measure_ceilings(device: str) -> dict[str, Any]:
    from ember import _C

    return dict(_C.measure_ceilings(device))


def format_ceilings(c: dict[str, Any]) -> str:
    parts = [f"copy {c['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + written)"]
    if c.get("matmul_flops_per_s"):
        n = c["matmul_size"]
        parts.append(f"bf16 matmul {c['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s ({n}^3)")
    if c.get("h2d_bytes_per_s"):
        h2d, d2h = c["h2d_bytes_per_s"] / 1e9, c["d2h_bytes_per_s"] / 1e9
        parts.append(f"pinned h2d {h2d:.1f} GB/s, d2h {d2h:.1f} GB/s")
    for p in c.get("peer", []):
        peer = f"{p['bytes_per_s_with_access'] / 1e9:.1f} GB/s" if p["can_access_peer"] else "n/a"
        parts.append(
            f"peer {p['src']}->{p['dst']} {peer} with access, "
            f"{p['bytes_per_s_without_access'] / 1e9:.1f} GB/s without"
        )
    return f"ceilings on {c['device']} ({c['device_name']}), measured now: " + "; ".join(parts)


def ceiling_device(devices: Sequence[str]) -> str:
    d = str(devices[0])
    return "cpu" if d == "cpu" else d


# ---- the table ---------------------------------------------------------------------------------


def format_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def format_table(rows: list[TestResult], head: dict[str, str]) -> str:
    cols = [
        "model",
        "size (GiB)",
        "params",
        "backend",
        "devices",
        "test",
        "t/s",
        "bound t/s",
        "% of bound",
    ]
    body = []
    for r in rows:
        body.append(
            [
                head["model"],
                head["size"],
                head["params"],
                head["backend"],
                head["devices"],
                r.test,
                f"{r.mean:.2f} ± {r.sd:.2f}",
                f"{r.bound:.2f}" if r.bound else "-",
                f"{r.pct_of_bound:.1f}" if r.pct_of_bound is not None else "-",
            ]
        )
    widths = [
        max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)
    ]
    right = {6, 7, 8}

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "| "
        + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([line(cols), sep, *(line(b) for b in body)])


# ---- arguments ---------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    """'512,2048' -> [512, 2048]; '' or '0' -> [] (skip that test)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 0, got {text!r}")
    return [v for v in values if v > 0]


def device_list(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",")]
    if not devices or any(not d for d in devices):
        raise argparse.ArgumentTypeError(f"expected devices like 'cpu', '0' or '0,1', got {text!r}")
    return devices


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ember bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-m", "--model", help="a Hugging Face model folder or a .gguf file")
    src.add_argument(
        "--random-weights",
        metavar="SHAPE",
        help="random weights of a shape, built on the device: smollm2-135m, llama3-8b, qwen3-8b, "
        "qwen3-14b, qwen3-32b or custom:vocab=V,hidden=H,layers=L,heads=N,kv_heads=K,ffn=F[,...]",
    )
    p.add_argument(
        "--dtype",
        default="bf16",
        choices=["bf16", "f16", "f32"],
        help="dtype of random weights (default bf16)",
    )
    p.add_argument(
        "--devices",
        type=device_list,
        default=None,
        help="one pipeline stage per entry: 'cpu', '0', '0,1' (default: 0 if a GPU, else cpu)",
    )
    p.add_argument(
        "-p",
        "--n-prompt",
        type=int_list,
        default=None,
        help="prompt lengths for pp tests (default 512,2048,8192 on GPU, 128 on CPU)",
    )
    p.add_argument(
        "-n",
        "--n-gen",
        type=int_list,
        default=[128],
        help="generated tokens for tg tests (default 128)",
    )
    p.add_argument(
        "-d",
        "--depth",
        type=int_list,
        default=None,
        help="context depths for tg @ depth tests (default 4096 on GPU, none on CPU)",
    )
    p.add_argument(
        "-r", "--repetitions", type=int, default=3, help="timed runs per test (default 3)"
    )
    p.add_argument(
        "--concurrency",
        type=int_list,
        default=None,
        help=f"sequences submitted at once ({THROUGHPUT_PROMPT}-token prompts, "
        f"{THROUGHPUT_GEN} new tokens each) for throughput tests (default 64 on GPU, none on CPU)",
    )
    p.add_argument(
        "--max-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="cap on each GPU's memory in GiB (emulates a smaller card)",
    )
    p.add_argument("--transport", default="auto", choices=["auto", "peer", "host"])
    p.add_argument("--split", type=int_list, default=None, help="layers per stage, e.g. 14,18")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--kv-cache-tokens", type=int, default=None)
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument(
        "--profile-stages",
        action="store_true",
        help="time each stage's compute and copy for the timeline (adds a sync per stage step)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads per stage (0 = all)")
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write the results (default bench/results/<model>_<devices>_<date>.json)",
    )
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring the ceilings")
    return p


def default_device() -> str:
    from ember import _C

    count = getattr(_C, "cuda_device_count", None)
    return "0" if count is not None and count() > 0 else "cpu"


def model_label(args: argparse.Namespace) -> tuple[str, str]:
    """(path the engine opens, short name for the table and the file name)."""
    if args.random_weights:
        return (
            f"random:{args.random_weights}@{args.dtype}",
            f"random-{args.random_weights}-{args.dtype}",
        )
    return args.model, Path(args.model.rstrip("/")).name


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


# ---- main --------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The tests of one run: prompt lengths, generated lengths, depths, concurrencies."""

    n_prompt: list[int]
    n_gen: list[int]
    depths: list[int]
    concurrency: list[int]
    repetitions: int

    def longest_sequence(self) -> int:
        needs = [p + 1 for p in self.n_prompt]
        needs += [max(d, 1) + g for d in [0, *self.depths] for g in self.n_gen]
        needs += [THROUGHPUT_PROMPT + THROUGHPUT_GEN] if self.concurrency else []
        return max([*needs, WARMUP_PROMPT + WARMUP_GEN])


def make_plan(args: argparse.Namespace, on_gpu: bool) -> Plan:
    def pick(value: list[int] | None, gpu: list[int], cpu: list[int]) -> list[int]:
        return value if value is not None else (gpu if on_gpu else cpu)

    return Plan(
        n_prompt=pick(args.n_prompt, [512, 2048, 8192], [128]),
        n_gen=args.n_gen,
        depths=pick(args.depth, [4096], []),
        concurrency=pick(args.concurrency, [64], []),
        repetitions=args.repetitions,
    )


def engine_options(args: argparse.Namespace, devices: list[str], plan: Plan) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "devices": devices,
        "max_model_len": plan.longest_sequence(),
        "max_num_seqs": max([*plan.concurrency, 256]),
        "transport": args.transport,
        "use_cuda_graphs": not args.no_cuda_graphs,
        "profile_stages": bool(args.profile_stages),
    }
    if devices[0] == "cpu":
        opts["num_threads"] = args.threads
    if args.max_memory is not None:
        opts["max_memory"] = int(args.max_memory * GIB)
    for key in ("max_num_batched_tokens", "chunk_size", "kv_cache_tokens"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if args.split:
        opts["layer_split"] = args.split
    return opts


def run_tests(
    llm: Any, plan: Plan, cost: ModelCost, ceilings: dict[str, Any] | None
) -> list[TestResult]:
    """Every test of the plan on one warm engine, in llama-bench order."""
    prompts = PromptMaker(int(llm.config["vocab_size"]))
    llm.generate([prompts(WARMUP_PROMPT)], sampling(WARMUP_GEN))  # kernels, handles, graphs
    copy_bw = ceilings["copy_bytes_per_s"] if ceilings else None
    mm_rate = ceilings.get("matmul_flops_per_s") if ceilings else None
    reps = plan.repetitions
    results: list[TestResult] = []

    def record(r: TestResult, wall: float, timeline: list[dict[str, float]] | None) -> None:
        r.extra["wall_s"] = wall
        r.stages = timeline
        results.append(r)
        print(f"  {r.test}: {r.mean:.2f} ± {r.sd:.2f} {r.unit}", flush=True)

    for p in plan.n_prompt:
        (rates, ttfts), wall, tl = timed(llm, lambda p=p: run_prefill(llm, prompts, p, reps))
        bound = cost.prefill_bound(mm_rate, p) if mm_rate else None
        r = make_result(f"pp{p}", "pp", rates, n_prompt=p, n_gen=1, bound=bound)
        r.extra["ttft_s"] = ttfts
        record(r, wall, tl)
    for g in plan.n_gen:
        for d in [0, *plan.depths]:
            rates, wall, tl = timed(llm, lambda g=g, d=d: run_decode(llm, prompts, g, d, reps))
            name = f"tg{g}" + (f" @ d{d}" if d else "")
            bound = cost.decode_bound(copy_bw, d) if copy_bw else None
            record(
                make_result(name, "tg", rates, n_prompt=max(d, 1), n_gen=g, depth=d, bound=bound),
                wall,
                tl,
            )
    for c in plan.concurrency:
        (gen, total), wall, tl = timed(llm, lambda c=c: run_throughput(llm, prompts, c, reps))
        for name, vals in ((f"c{c} gen", gen), (f"c{c} total", total)):
            r = make_result(
                name, "throughput", vals,
                n_prompt=THROUGHPUT_PROMPT, n_gen=THROUGHPUT_GEN, concurrency=c,
            )  # fmt: skip
            record(r, wall, tl)
    return results


def measure_or_explain(device: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        ceilings = measure_ceilings(device)
    except (RuntimeError, ValueError) as exc:
        print(f"ember bench: ceilings not measured: {exc}", file=sys.stderr)
        return None, str(exc)
    print(format_ceilings(ceilings), flush=True)
    return ceilings, None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.repetitions < 1:
        raise SystemExit("ember bench: --repetitions must be >= 1")
    devices = args.devices or [default_device()]
    on_gpu = devices[0] != "cpu"
    plan = make_plan(args, on_gpu)
    path, label = model_label(args)

    # Ceilings first: the engine reserves most of the card once it starts.
    ceilings, ceilings_error = (
        (None, None) if args.no_ceilings else measure_or_explain(ceiling_device(devices))
    )

    from ember import LLM

    engine_opts = engine_options(args, devices, plan)
    t_load = time.perf_counter()
    llm = LLM(path, skip_tokenizer_init=True, **engine_opts)
    load_s = time.perf_counter() - t_load
    try:
        config = dict(llm.config)
        cost = ModelCost.from_config(config, on_gpu)
        results = run_tests(llm, plan, cost, ceilings)
        stats = llm.stats()
    finally:
        llm.close()
        gc.collect()

    head = {
        "model": label,
        "size": f"{cost.size_bytes / GIB:.2f}",
        "params": format_params(cost.num_parameters),
        "backend": "CUDA" if on_gpu else "CPU",
        "devices": ",".join(devices),
    }
    print()
    print(format_table(results, head))
    timelines = [
        format_timeline(r.test, r.stages) for r in results if r.stages and len(r.stages) > 1
    ]
    if timelines:
        print("\n" + "\n".join(timelines))
    print(
        "\nbounds: tg = copy bandwidth / weight bytes per token (all matrices incl. lm_head, no "
        "embedding gather) [+ KV bytes at depth]; pp = bf16 matmul rate / matmul FLOP per token "
        "(attention FLOPs excluded)"
    )

    date = _dt.datetime.now()
    stem = f"{safe_name(label)}_{safe_name('-'.join(devices))}_{date.strftime('%Y%m%d-%H%M%S')}"
    out_path = Path(args.json) if args.json else Path("bench") / "results" / f"{stem}.json"
    doc = {
        "tool": "ember bench",
        "date": date.isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "node": platform.node(),
            "python": platform.python_version(),
        },
        "model": label,
        "model_path": path,
        "backend": head["backend"],
        "devices": devices,
        "engine_options": engine_opts,
        "load_s": load_s,
        "config": config,
        "final_stats": stats,
        "cost": asdict(cost)
        | {
            "size_bytes": cost.size_bytes,
            "weight_bytes_per_token": cost.weight_bytes_per_token,
            "kv_bytes_per_token_per_position": cost.kv_bytes_per_token(1),
        },
        "ceilings": ceilings,
        "ceilings_error": ceilings_error,
        "bounds": {
            "tg": "copy_bytes_per_s / "
            "(weight_bytes_per_token + kv_bytes_per_token_per_position * depth)",
            "pp": "matmul_flops_per_s / (2 * layer_matmul_params + 2 * lm_head_params / n_prompt); "
            "attention FLOPs excluded",
        },
        "results": [asdict(r) for r in results],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
