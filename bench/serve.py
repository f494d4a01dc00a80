# Load benchmark for `ember serve`: concurrent streaming clients with Poisson arrivals for a bounded
# time; reports TTFT / inter-token latency percentiles, output tokens/s, failures, KV pool recovery.
"""Usage:
  python bench/serve.py --url http://127.0.0.1:8000 --clients 8 --rate 4 --duration 30
  python bench/serve.py --model /path/to/model --devices cpu --clients 4 --rate 2 --duration 20
(with --model it starts `python -m ember.server` on a free port and stops it at the end).
Exits non-zero when a request failed or the KV pool is not back to full afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

WORDS = ("the quick brown fox jumps over a lazy dog while engines count tokens on small cards "
         "and every stage hands its activations to the next one").split()


@dataclass
class Sample:
    ok: bool
    error: str | None = None
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    latency: float = 0.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def _one(client: httpx.AsyncClient, url: str, headers: dict[str, str],
               body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    sample = Sample(ok=False)
    last: float | None = None
    done = False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body,
                                 headers=headers) as r:
            if r.status_code != 200:
                sample.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return sample
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    sample.error = str(chunk["error"])
                    return sample
                if chunk.get("usage"):
                    sample.completion_tokens = chunk["usage"]["completion_tokens"]
                    sample.prompt_tokens = chunk["usage"]["prompt_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    now = time.perf_counter()
                    if last is None:
                        sample.ttft = now - start
                    else:
                        sample.itls.append(now - last)
                    last = now
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
        return sample
    sample.latency = time.perf_counter() - start
    sample.ok = done and sample.completion_tokens > 0
    if not sample.ok and sample.error is None:
        sample.error = "stream ended without [DONE] or usage"
    return sample


async def _run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=args.request_timeout, limits=limits) as client:
        gate = asyncio.Semaphore(args.clients)
        tasks: list[asyncio.Task[Sample]] = []

        async def guarded(body: dict[str, Any]) -> Sample:
            async with gate:
                return await _one(client, url, headers, body)

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.duration:
            prompt = " ".join(rng.choice(WORDS) for _ in range(args.prompt_words))
            body = {"prompt": prompt, "max_tokens": args.max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0.8,
                    "seed": rng.randrange(2**31), "ignore_eos": args.ignore_eos}
            if args.model_name:
                body["model"] = args.model_name
            tasks.append(asyncio.create_task(guarded(body)))
            await asyncio.sleep(rng.expovariate(args.rate))
        samples = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0

        kv_full = False
        kv: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kv = _metrics((await client.get(url + "/metrics", headers=headers)).text)
            if kv.get("ember_kv_pages_used") == 0 and kv.get("ember_requests_running") == 0:
                kv_full = kv.get("ember_kv_pages_free") == kv.get("ember_kv_pages_total")
                break
            await asyncio.sleep(0.1)

    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    itls = [x for s in ok for x in s.itls]
    out_tokens = sum(s.completion_tokens for s in ok)
    failures = [s.error for s in samples if not s.ok]
    return {
        "requests": len(samples), "failed": len(failures), "failures": failures[:10],
        "wall_s": wall, "output_tokens": out_tokens, "output_tokens_per_s": out_tokens / wall,
        "requests_per_s": len(ok) / wall,
        "ttft_p50_ms": _ms(_percentile(ttfts, 0.5)), "ttft_p99_ms": _ms(_percentile(ttfts, 0.99)),
        "itl_p50_ms": _ms(_percentile(itls, 0.5)), "itl_p99_ms": _ms(_percentile(itls, 0.99)),
        "kv_back_to_full": kv_full,
        "kv_pages_total": kv.get("ember_kv_pages_total"),
        "preemptions": kv.get("ember_preemptions_total"),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _start_server(args: argparse.Namespace) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ember.server", args.model, "--port", str(port),
           "--devices", *args.devices, "--max-num-seqs", str(args.max_num_seqs),
           "--max-waiting", str(max(args.clients, 1)), "--num-threads", str(args.num_threads),
           "--log-level", "warning"]
    if args.ctx:
        cmd += ["--ctx", str(args.ctx)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.load_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"server not healthy after {args.load_timeout} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running server; else --model starts one")
    p.add_argument("--model", help="model to serve when no --url is given")
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--ctx", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--num-threads", type=int, default=0, help="CPU threads per stage (0 = all)")
    p.add_argument("--model-name", default=None, help="`model` field to send (default: none)")
    p.add_argument("--api-key", default=os.environ.get("EMBER_API_KEY"))
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    p.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=32)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--load-timeout", type=float, default=600.0)
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--tag", default="", help="label for the results file (e.g. cpu-ci, h100)")
    args = p.parse_args(argv)
    if not args.url and not args.model:
        p.error("give --url of a running server or --model to start one")

    proc = None
    url = args.url
    if url is None:
        url, proc = _start_server(args)
    try:
        result = asyncio.run(_run(args, url.rstrip("/")))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    config = {k: v for k, v in vars(args).items() if k not in ("api_key",)}
    report = {"benchmark": "serve", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "host": platform.node(), "cpu_count": os.cpu_count(), "config": config, **result}
    print(f"requests {result['requests']}  failed {result['failed']}  "
          f"wall {result['wall_s']:.1f} s  output {result['output_tokens_per_s']:.1f} tok/s")
    for name in ("ttft", "itl"):
        p50, p99 = result[f"{name}_p50_ms"], result[f"{name}_p99_ms"]
        print(f"{name.upper():5s} p50 {_fmt_ms(p50)}  p99 {_fmt_ms(p99)}")
    print(f"KV pool back to full: {result['kv_back_to_full']}  "
          f"(pages {result['kv_pages_total']}, preemptions {result['preemptions']})")
    for failure in result["failures"]:
        print(f"  failure: {failure}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    path = out_dir / f"serve{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if result["failed"] == 0 and result["kv_back_to_full"] else 1


def _fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:8.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
