"""CPU prefill and decode throughput on a random model of SmolLM2-135M's shape.

Writes the checkpoint (fp32 and bf16) to a temporary directory with the test suite's writer,
runs Ember on the CPU, prints a table and writes JSON under bench/results/. Decode at batch 1 is
bound by memory bandwidth, so the weight bytes read per token are printed beside each figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))

from ember import LLM  # noqa: E402
from ember.bench import cpu_prefill_decode, write_cpu_result  # noqa: E402
from tiny_models import write_tiny_model  # noqa: E402

SMOLLM2_SHAPE = dict(vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, tied=True)


def weight_bytes(dtype: str) -> int:
    s = SMOLLM2_SHAPE
    h, f, v, layers = s["hidden"], s["ffn"], s["vocab"], s["layers"]
    kv = h // s["heads"] * s["kv_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * f
    return (per_layer * layers + v * h) * (4 if dtype == "float32" else 2)


def run(dtype: str, prompt_len: int, new_tokens: int, threads: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_model(
            Path(tmp) / "m",
            "llama",
            dtype=dtype,
            with_tokenizer=False,
            max_position_embeddings=4096,
            **SMOLLM2_SHAPE,
        )
        llm = LLM(
            str(path), num_threads=threads, skip_tokenizer_init=True, max_num_batched_tokens=2048
        )
        prompt = [(i * 37 + 11) % 49152 for i in range(prompt_len)]
        pp, tg, _ = cpu_prefill_decode(llm, prompt, new_tokens, repeats)
        llm.close()
    wb = weight_bytes(dtype)
    best_tg = max(tg)
    return {
        "dtype": dtype,
        "prefill_tokens": prompt_len,
        "prefill_tok_s": pp,
        "decode_tokens": new_tokens,
        "decode_tok_s": tg,
        "weight_bytes_per_token": wb,
        "decode_weight_gb_s": best_tg * wb / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_smollm2_shape.json"))
    args = ap.parse_args()
    rows = [
        run(d, args.prompt, args.new_tokens, args.threads, args.repeats)
        for d in args.dtypes.split(",")
    ]
    pp_head, tg_head = f"pp{args.prompt} tok/s", f"tg{args.new_tokens} tok/s"
    print(f"{'dtype':<10}{pp_head:>16}{tg_head:>16}{'weights GB/s':>14}")
    for r in rows:
        pp, tg = max(r["prefill_tok_s"]), max(r["decode_tok_s"])
        print(f"{r['dtype']:<10}{pp:>16.1f}{tg:>16.1f}{r['decode_weight_gb_s']:>14.2f}")
    write_cpu_result(args.out, "cpu_smollm2_shape", rows)


if __name__ == "__main__":
    main()
