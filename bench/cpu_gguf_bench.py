"""CPU prefill and decode throughput of a GGUF model (default: SmolLM2-135M-Instruct Q4_1).

Runs the model with its Q4_0/Q4_1/Q8_0 matrices kept as blocks (quantized=True) and, for
comparison, dequantized to F32 at load (quantized=False). Decode at batch 1 is bound by memory
bandwidth, so the matrix bytes read per token are printed beside each figure. The machine may be
shared: every repeat records the 1-minute load average, and the table shows the best repeat.
Writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ember import LLM
from ember.bench import cpu_prefill_decode, write_cpu_result
from ember.default_model import default_model_path
from ember.model_info import model_facts

ROOT = Path(__file__).resolve().parent.parent


def matrix_bytes_per_token(path: str, quantized: bool) -> int:
    """Bytes of the matrices one decode step reads: every layer matrix plus the LM head."""
    facts = model_facts(path)
    kept = {"Q4_0", "Q4_1", "Q8_0"}
    total = 0
    has_head = any(t.name.startswith("output.") for t in facts.tensors)
    for t in facts.tensors:
        is_matrix = t.name.startswith("blk.") and not t.name.endswith("norm.weight")
        is_head = t.name.startswith("output.") or (not has_head and t.name == "token_embd.weight")
        if not (is_matrix or is_head) or t.name.endswith(".bias"):
            continue
        total += t.nbytes if quantized and t.dtype in kept else t.numel * 4
    return total


def run(path: str, quantized: bool, prompt_len: int, new_tokens: int, threads: int,
        repeats: int) -> dict:
    llm = LLM(path, num_threads=threads, quantized=quantized, skip_tokenizer_init=True,
              max_model_len=max(1024, prompt_len + new_tokens + 16))
    vocab = int(llm.config["vocab_size"])
    prompt = [(i * 37 + 11) % vocab for i in range(prompt_len)]
    pp, tg, load = cpu_prefill_decode(llm, prompt, new_tokens, repeats)
    llm.close()
    wb = matrix_bytes_per_token(path, quantized)
    return {
        "weights": "blocks" if quantized else "f32",
        "prefill_tokens": prompt_len,
        "prefill_tok_s": pp,
        "decode_tokens": new_tokens,
        "decode_tok_s": tg,
        "load_avg_1m": load,
        "matrix_bytes_per_token": wb,
        "decode_weight_gb_s": max(tg) * wb / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the SmolLM2 default model)")
    ap.add_argument("--modes", default="blocks,f32", help="comma list of blocks, f32")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_smollm2_gguf.json"))
    args = ap.parse_args()
    path = args.gguf or default_model_path()
    rows = [
        run(path, mode == "blocks", args.prompt, args.new_tokens, args.threads, args.repeats)
        for mode in args.modes.split(",")
    ]
    pp_head, tg_head = f"pp{args.prompt} tok/s", f"tg{args.new_tokens} tok/s"
    print(Path(path).name)
    print(f"{'weights':<10}{pp_head:>16}{tg_head:>16}{'weights GB/s':>14}{'load (min-max)':>18}")
    for r in rows:
        pp, tg = max(r["prefill_tok_s"]), max(r["decode_tok_s"])
        lo, hi = min(r["load_avg_1m"]), max(r["load_avg_1m"])
        print(f"{r['weights']:<10}{pp:>16.1f}{tg:>16.1f}{r['decode_weight_gb_s']:>14.2f}"
              f"{lo:>10.2f}-{hi:.2f}")
    write_cpu_result(args.out, "cpu_gguf", rows, model=Path(path).name)


if __name__ == "__main__":
    main()
