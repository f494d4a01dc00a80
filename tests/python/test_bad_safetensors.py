# A corpus of hostile or broken checkpoints: each must be refused with a ModelFormatError that
# names the file (and tensor) at fault, and none may crash or poison the process.
from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ember
import numpy as np
import pytest
from numpy_reference import ReferenceModel
from tiny_models import SAMPLE_PROMPT_IDS

ST = "model.safetensors"
EMBED = "model.embed_tokens.weight"
K0 = "model.layers.0.self_attn.k_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"


def read_st(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_st(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def tensors_by_offset(header: dict[str, Any]) -> list[str]:
    names = [n for n in header if n != "__metadata__"]
    return sorted(names, key=lambda n: header[n]["data_offsets"][0])


def rewrite_header(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    header, data = read_st(d / ST)
    edit(header)
    write_st(d / ST, header, data)


def rewrite_config(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


# ---- the corpus: each case breaks a copy of a valid checkpoint in one way ----


def truncated(d: Path) -> None:
    raw = (d / ST).read_bytes()
    (d / ST).write_bytes(raw[: len(raw) * 3 // 5])


def shorter_than_length_prefix(d: Path) -> None:
    (d / ST).write_bytes(b"\x10\x00\x00")


def header_length_past_end(d: Path) -> None:
    raw = bytearray((d / ST).read_bytes())
    raw[:8] = struct.pack("<Q", len(raw))
    (d / ST).write_bytes(bytes(raw))


def header_length_over_100mb(d: Path) -> None:
    raw = bytearray((d / ST).read_bytes())
    raw[:8] = struct.pack("<Q", 200 * 1024 * 1024)
    (d / ST).write_bytes(bytes(raw))


def header_length_huge(d: Path) -> None:
    raw = bytearray((d / ST).read_bytes())
    raw[:8] = struct.pack("<Q", 2**64 - 8)  # overflows a naive 8 + n
    (d / ST).write_bytes(bytes(raw))


def invalid_json(d: Path) -> None:
    _, data = read_st(d / ST)
    text = b'{"model.embed_tokens.weight": {"dtype": "F32", "shape": [512, 64], '
    text += b" " * (-len(text) % 8)
    (d / ST).write_bytes(struct.pack("<Q", len(text)) + text + data)


def header_not_an_object(d: Path) -> None:
    _, data = read_st(d / ST)
    text = b"[1, 2, 3]"
    text += b" " * (-len(text) % 8)
    (d / ST).write_bytes(struct.pack("<Q", len(text)) + text + data)


def unknown_dtype(d: Path) -> None:
    rewrite_header(d, lambda h: h[EMBED].update(dtype="F13"))


def shape_disagrees_with_bytes(d: Path) -> None:
    rewrite_header(d, lambda h: h[EMBED].update(shape=[512, 65]))


def negative_dimension(d: Path) -> None:
    rewrite_header(d, lambda h: h[EMBED].update(shape=[-512, -64]))


def overlapping_offsets(d: Path) -> None:
    def edit(h: dict[str, Any]) -> None:
        names = tensors_by_offset(h)
        begin, end = h[names[1]]["data_offsets"]
        h[names[1]]["data_offsets"] = [begin - 64, end - 64]  # reads into its neighbour

    rewrite_header(d, edit)


def gapped_offsets(d: Path) -> None:
    header, data = read_st(d / ST)
    names = tensors_by_offset(header)
    cut = header[names[0]]["data_offsets"][1]
    for name in names[1:]:
        header[name]["data_offsets"] = [x + 64 for x in header[name]["data_offsets"]]
    write_st(d / ST, header, data[:cut] + bytes(64) + data[cut:])


def trailing_bytes(d: Path) -> None:
    with open(d / ST, "ab") as f:
        f.write(bytes(64))


def offsets_past_end(d: Path) -> None:
    def edit(h: dict[str, Any]) -> None:
        last = tensors_by_offset(h)[-1]
        begin, end = h[last]["data_offsets"]
        h[last]["data_offsets"] = [begin + 1024, end + 1024]

    rewrite_header(d, edit)


def begin_after_end(d: Path) -> None:
    def edit(h: dict[str, Any]) -> None:
        begin, end = h[EMBED]["data_offsets"]
        h[EMBED]["data_offsets"] = [end, begin]

    rewrite_header(d, edit)


def missing_tensor(d: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / ST))
    del tensors[UP1]
    save_file(tensors, str(d / ST))


def wrong_tensor_shape(d: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / ST))
    tensors[K0] = np.zeros((64, 64), dtype=np.float32)  # a full q-sized k_proj: GQA expects 32
    save_file(tensors, str(d / ST))


def unsupported_architecture(d: Path) -> None:
    rewrite_config(d, lambda c: c.update(architectures=["GPT2LMHeadModel"], model_type="gpt2"))


def missing_config(d: Path) -> None:
    (d / "config.json").unlink()


def config_invalid_json(d: Path) -> None:
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,')


def config_missing_hidden_size(d: Path) -> None:
    rewrite_config(d, lambda c: c.pop("hidden_size"))


def config_heads_not_divisible(d: Path) -> None:
    rewrite_config(d, lambda c: c.update(num_key_value_heads=3))


def no_weights(d: Path) -> None:
    (d / ST).unlink()


# name -> (break it, substrings the message must contain; a tuple means any one of them)
CASES: dict[str, tuple[Callable[[Path], None], list[str | tuple[str, ...]]]] = {
    "truncated": (truncated, [ST]),
    "shorter-than-length-prefix": (shorter_than_length_prefix, [ST]),
    "header-length-past-end": (header_length_past_end, [ST]),
    "header-length-over-100mb": (header_length_over_100mb, [ST]),
    "header-length-huge": (header_length_huge, [ST]),
    "invalid-json": (invalid_json, [ST]),
    "header-not-an-object": (header_not_an_object, [ST]),
    "unknown-dtype": (unknown_dtype, [ST, EMBED]),
    "shape-disagrees-with-bytes": (shape_disagrees_with_bytes, [ST, EMBED]),
    "negative-dimension": (negative_dimension, [ST, EMBED]),
    "overlapping-offsets": (overlapping_offsets, [ST]),
    "gapped-offsets": (gapped_offsets, [ST]),
    "trailing-bytes": (trailing_bytes, [ST]),
    "offsets-past-end": (offsets_past_end, [ST]),
    "begin-after-end": (begin_after_end, [ST, EMBED]),
    "missing-tensor": (missing_tensor, [UP1, (ST, "case-missing-tensor")]),
    "wrong-tensor-shape": (wrong_tensor_shape, [ST, K0]),
    "unsupported-architecture": (unsupported_architecture, ["config.json", "GPT2"]),
    "missing-config": (missing_config, ["config.json"]),
    "config-invalid-json": (config_invalid_json, ["config.json"]),
    "config-missing-hidden-size": (config_missing_hidden_size, ["config.json", "hidden_size"]),
    "config-heads-not-divisible": (config_heads_not_divisible, ["config.json"]),
    "no-weights": (no_weights, [("safetensors", "case-no-weights")]),
}


@pytest.fixture(scope="module")
def valid_dir(tiny_model) -> Path:
    return tiny_model("llama", with_tokenizer=False)


def test_model_format_error_is_a_value_error():
    assert issubclass(ember.ModelFormatError, ValueError)


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_checkpoint_is_refused(valid_dir, tmp_path, case):
    breaker, expected = CASES[case]
    d = tmp_path / f"case-{case}"
    shutil.copytree(valid_dir, d)
    breaker(d)
    with pytest.raises(ember.ModelFormatError) as info:
        ember.LLM(str(d))
    message = str(info.value)
    for want in expected:
        options = want if isinstance(want, tuple) else (want,)
        assert any(w in message for w in options), f"{case}: {options} not in {message!r}"


def test_missing_shard_is_named(tiny_model, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(tiny_model("qwen2", shards=2, with_tokenizer=False), d)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ember.ModelFormatError, match="model-00002-of-00002.safetensors"):
        ember.LLM(str(d))


def test_missing_model_path(tmp_path):
    with pytest.raises((ember.ModelFormatError, FileNotFoundError), match="does-not-exist"):
        ember.LLM(str(tmp_path / "does-not-exist"))


def test_valid_model_still_loads_after_the_corpus(valid_dir):
    prompt = list(SAMPLE_PROMPT_IDS)
    params = ember.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    with ember.LLM(str(valid_dir)) as llm:
        tokens = list(llm.generate([prompt], params)[0].outputs[0].token_ids)
    assert tokens == ReferenceModel.from_dir(valid_dir).greedy(prompt, 6)
