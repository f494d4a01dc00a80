# Writes tiny random Hugging Face checkpoints (config, safetensors, tokenizer) for the four decoder
# families so that tests exercise the real loading path without downloading anything.
from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

# A prompt of plain ids that the tests share; test_numpy_reference checks that greedy decoding
# after it is decisive (no near-ties) on every default model.
SAMPLE_PROMPT_IDS = (5, 17, 200, 33, 41, 99, 7, 300, 12, 64, 128, 450)
SAMPLE_NEW_TOKENS = 12

# Ids 0..4 of every tiny tokenizer, in this order.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>")
ENDOFTEXT, IM_START, IM_END, BOS, EOS = range(5)

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A small engine runs large language models on the graphics cards in your own computer.",
    "Every morning the baker opens the shop and sells fresh bread, cakes and warm coffee.",
    "Tokens travel through the pipeline from one stage to the next until a word comes out.",
    "Scientists measured the temperature of the water and wrote the numbers in a notebook.",
    "Children played in the park while their parents talked about the weather and the news.",
    "The library holds thousands of books about history, mathematics, music and painting.",
    "She walked to the station, bought a ticket and waited for the train to the mountains.",
    "Memory bandwidth limits how fast a single sequence can be decoded on modern hardware.",
    "In the evening the city lights shine over the harbour and the boats return home.",
    "Please write a short story about a dragon who wants to learn how to cook pasta.",
    "Hello, how are you today? I am fine, thank you, and I hope you are well too.",
    "Once upon a time there was a little robot that counted the stars every night.",
    "Numbers like 12, 345 and 6789 appear in tables, charts, reports and receipts.",
    "What is the capital of France? The capital of France is Paris, a beautiful city.",
    "Attention lets each position look back at every earlier position in the sequence.",
    "Green apples, yellow bananas, purple grapes and orange carrots filled the basket.",
    "The teacher explained why the sky is blue and why the sunset is often red or gold.",
)


def corpus() -> list[str]:
    """A deterministic English corpus, large enough to learn a few hundred BPE merges."""
    lines = list(_CORPUS_SENTENCES)
    for i, a in enumerate(_CORPUS_SENTENCES):
        b = _CORPUS_SENTENCES[(i * 7 + 3) % len(_CORPUS_SENTENCES)]
        lines.append(a.lower() + " " + b.upper())
    return lines


# ---------------------------------------------------------------------------------------------
# safetensors writing


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Rounds fp32 to the nearest bfloat16 (ties to even) and returns the raw uint16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors_raw(
    path: Path, tensors: Mapping[str, tuple[str, list[int], bytes]], metadata: dict | None = None
) -> None:
    """Writes a safetensors file from (dtype string, shape, raw bytes) triples, in order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        end = offset + len(data)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for _, (_, _, data) in tensors.items():
            f.write(data)


def _write_tensors(path: Path, tensors: Mapping[str, np.ndarray], dtype: str) -> None:
    if dtype == "bfloat16":
        raw = {
            name: ("BF16", list(t.shape), fp32_to_bf16_bits(t).tobytes())
            for name, t in tensors.items()
        }
        write_safetensors_raw(path, raw, {"format": "pt"})
        return
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "float16": np.float16}[dtype]
    save_file(
        {name: np.ascontiguousarray(t.astype(np_dtype)) for name, t in tensors.items()},
        str(path),
        metadata={"format": "pt"},
    )


# ---------------------------------------------------------------------------------------------
# weights and config


def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this config holds, with its Hugging Face name and shape."""
    h = config["hidden_size"]
    nh = config["num_attention_heads"]
    nkv = config["num_key_value_heads"]
    hd = config.get("head_dim") or h // nh
    ffn = config["intermediate_size"]
    vocab = config["vocab_size"]
    model_type = config["model_type"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (nh * hd, h)
        shapes[p + "self_attn.k_proj.weight"] = (nkv * hd, h)
        shapes[p + "self_attn.v_proj.weight"] = (nkv * hd, h)
        if model_type == "qwen2" or config.get("attention_bias", False):
            shapes[p + "self_attn.q_proj.bias"] = (nh * hd,)
            shapes[p + "self_attn.k_proj.bias"] = (nkv * hd,)
            shapes[p + "self_attn.v_proj.bias"] = (nkv * hd,)
        if model_type == "qwen3":
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.k_norm.weight"] = (hd,)
        shapes[p + "self_attn.o_proj.weight"] = (h, nh * hd)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (ffn, h)
        shapes[p + "mlp.up_proj.weight"] = (ffn, h)
        shapes[p + "mlp.down_proj.weight"] = (h, ffn)
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, h)
    return shapes


def random_weights(config: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random fp32 weights whose activations stay near unit scale and whose logits are spread out
    (standard deviation ~2), so greedy decoding is not a coin toss between near-equal logits."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            w = 0.1 * rng.standard_normal(shape)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            # Tied models use the embedding as the head: the same scale works for both.
            w = 0.25 * rng.standard_normal(shape)
        else:
            fan_in = shape[1]
            w = rng.standard_normal(shape) / np.sqrt(fan_in)
        weights[name] = w.astype(np.float32)
    return weights


def make_config(
    family: str,
    *,
    dtype: str = "float32",
    tied: bool = False,
    vocab: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    ffn: int = 128,
    rope_scaling: dict | str | None = None,
    max_position_embeddings: int = 512,
) -> dict[str, Any]:
    """config.json contents laid out as transformers' save_pretrained writes them."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if head_dim is not None and head_dim != hidden // heads and family == "qwen2":
        raise ValueError("Qwen2 derives head_dim from hidden_size / num_attention_heads")
    if rope_scaling == "llama3":
        # Small original context so that, at head_dim 16, every band of the formula is exercised.
        rope_scaling = {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_type": "llama3",
        }
    hd = head_dim if head_dim is not None else hidden // heads
    qwen = family.startswith("qwen")
    cfg: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[family]],
        "attention_dropout": 0.0,
        "bos_token_id": ENDOFTEXT if qwen else BOS,
        "eos_token_id": ENDOFTEXT if qwen else EOS,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "max_position_embeddings": max_position_embeddings,
        "model_type": family,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6 if qwen else 1e-5,
        "rope_scaling": rope_scaling,
        "rope_theta": 10000.0 if family == "llama" else 1000000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": vocab,
    }
    if family == "llama":
        cfg.update(attention_bias=False, head_dim=hd, mlp_bias=False, pretraining_tp=1)
    elif family == "mistral":
        cfg.update(head_dim=hd, sliding_window=None)
    elif family == "qwen2":
        cfg.update(max_window_layers=layers, sliding_window=None, use_sliding_window=False)
    else:
        cfg.update(
            attention_bias=False,
            head_dim=hd,
            max_window_layers=layers,
            sliding_window=None,
            use_sliding_window=False,
        )
    return dict(sorted(cfg.items()))


# ---------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(vocab_size: int, add_bos: bool):
    """A byte-level BPE trained on the built-in corpus, with exactly `vocab_size` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the built-in corpus yields a vocabulary of {tok.get_vocab_size()}, not {vocab_size}"
        )
    return tok


def _tokenizer_config(family: str, max_len: int) -> dict[str, Any]:
    qwen = family.startswith("qwen")
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_bos_token": not qwen,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": None if qwen else "<s>",
        "chat_template": _CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>" if qwen else "</s>",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# ---------------------------------------------------------------------------------------------
# the whole checkpoint


def write_tiny_model(
    dir: str | Path,
    family: str,
    *,
    dtype: str = "float32",
    tied: bool = False,
    seed: int = 0,
    vocab: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    ffn: int = 128,
    rope_scaling: dict | str | None = None,
    with_tokenizer: bool = True,
    max_position_embeddings: int = 512,
    shards: int = 1,
) -> Path:
    """Writes a complete tiny checkpoint into `dir` and returns it as a Path.

    rope_scaling="llama3" writes a Llama-3 style block; shards > 1 splits the weights over
    model-0000k-of-0000n.safetensors files with a model.safetensors.index.json.
    """
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(
        family,
        dtype=dtype,
        tied=tied,
        vocab=vocab,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=ffn,
        rope_scaling=rope_scaling,
        max_position_embeddings=max_position_embeddings,
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    qwen = family.startswith("qwen")
    gen = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": [IM_END, ENDOFTEXT] if qwen else EOS,
        "transformers_version": config["transformers_version"],
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    weights = random_weights(config, seed)
    write_weights(out, weights, dtype, shards)

    if with_tokenizer:
        tok = build_tokenizer(vocab, add_bos=not qwen)
        tok.save(str(out / "tokenizer.json"))
        tok_cfg = _tokenizer_config(family, max_position_embeddings)
        (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return out


def write_weights(
    out: Path, weights: Mapping[str, np.ndarray], dtype: str, shards: int = 1
) -> None:
    """model.safetensors, or `shards` files plus model.safetensors.index.json."""
    if shards <= 1:
        _write_tensors(out / "model.safetensors", weights, dtype)
        return
    names = list(weights)
    groups = [names[i::shards] for i in range(shards)]
    weight_map: dict[str, str] = {}
    itemsize = 4 if dtype == "float32" else 2
    total = 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        _write_tensors(out / fname, {n: weights[n] for n in group}, dtype)
        for n in group:
            weight_map[n] = fname
            total += weights[n].size * itemsize
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
