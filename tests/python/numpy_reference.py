# A plain numpy forward pass of the Llama / Mistral / Qwen2 / Qwen3 decoder: the oracle the engine's
# logits are compared with. Written for reading, not speed: whole-sequence recompute every call.
from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# loading


def read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one file as fp32; BF16 (which numpy lacks) is widened from its bits."""
    from safetensors import safe_open

    header = read_safetensors_header(path)
    out: dict[str, np.ndarray] = {}
    names = [name for name in header if name != "__metadata__"]
    bf16 = {name for name in names if header[name]["dtype"] == "BF16"}
    if len(bf16) < len(names):
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                if name not in bf16:
                    out[name] = f.get_tensor(name).astype(np.float32)
    if bf16:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            base = 8 + n
            for name in bf16:
                info = header[name]
                begin, end = info["data_offsets"]
                f.seek(base + begin)
                bits = np.frombuffer(f.read(end - begin), dtype="<u2")
                widened = (bits.astype(np.uint32) << 16).view(np.float32)
                out[name] = widened.reshape(info["shape"])
    return out


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights: dict[str, np.ndarray] = {}
    for name in files:
        weights.update(load_safetensors(model_dir / name))
    return weights


# ---------------------------------------------------------------------------------------------
# building blocks


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def rope_inv_freq(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """theta^(-2i/d) for i < d/2, with linear or Llama-3 frequency scaling.

    Llama 3: wavelengths shorter than original_context / high_freq_factor keep their frequency;
    longer than original_context / low_freq_factor are slowed by `factor`; in between, a linear
    blend in (original_context / wavelength) of the two.
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"reference does not implement rope_type {kind!r}")
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2.0 * np.pi / inv_freq
    out = np.empty_like(inv_freq)
    for i, (f, wl) in enumerate(zip(inv_freq, wavelen, strict=True)):
        if wl < original / high:
            out[i] = f
        elif wl > original / low:
            out[i] = f / factor
        else:
            smooth = (original / wl - low) / (high - low)
            out[i] = (1.0 - smooth) * f / factor + smooth * f
    return out


def apply_rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotates x [T, heads, d] in the Hugging Face rotate_half layout: pairs are (i, i + d/2)."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [T, d/2]
    cos = np.concatenate([np.cos(angles), np.cos(angles)], axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles), np.sin(angles)], axis=-1)[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q [T, H, d], k and v [T, KV, d] with H a multiple of KV; each group of H/KV query heads
    reads one key/value head. Position t sees positions 0..t. Returns [T, H, d]."""
    t, h, d = q.shape
    group = h // k.shape[1]
    out = np.empty_like(q)
    mask = np.triu(np.ones((t, t), dtype=bool), k=1)
    for head in range(h):
        kv = head // group
        scores = (q[:, head, :] @ k[:, kv, :].T) / np.sqrt(d)
        scores = np.where(mask, -np.inf, scores)
        out[:, head, :] = softmax(scores) @ v[:, kv, :]
    return out


# ---------------------------------------------------------------------------------------------
# the model


@dataclass
class RefConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> RefConfig:
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if cfg["model_type"] == "qwen2":
            head_dim = cfg["hidden_size"] // heads
        return cls(
            family=cfg["model_type"],
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=cfg["rms_norm_eps"],
            rope_theta=cfg.get("rope_theta", 10000.0),
            rope_scaling=cfg.get("rope_scaling"),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        )


class ReferenceModel:
    def __init__(
        self, config: RefConfig, weights: Mapping[str, np.ndarray], dtype: type = np.float32
    ) -> None:
        self.config = config
        self.dtype = dtype
        self.w = {name: np.asarray(t, dtype=dtype) for name, t in weights.items()}
        self.inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: type = np.float32) -> ReferenceModel:
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        return cls(RefConfig.from_hf(cfg), load_weights(model_dir), dtype)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def _attention(self, x: np.ndarray, layer: int, positions: np.ndarray) -> np.ndarray:
        c = self.config
        p = f"model.layers.{layer}.self_attn."
        t = x.shape[0]
        q = self._linear(x, p + "q_proj").reshape(t, c.num_heads, c.head_dim)
        k = self._linear(x, p + "k_proj").reshape(t, c.num_kv_heads, c.head_dim)
        v = self._linear(x, p + "v_proj").reshape(t, c.num_kv_heads, c.head_dim)
        if c.family == "qwen3":  # per-head RMSNorm over head_dim, before RoPE
            q = rms_norm(q, self.w[p + "q_norm.weight"], c.rms_norm_eps)
            k = rms_norm(k, self.w[p + "k_norm.weight"], c.rms_norm_eps)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        out = causal_attention(q, k, v).reshape(t, c.num_heads * c.head_dim)
        return self._linear(out, p + "o_proj")

    def _mlp(self, x: np.ndarray, layer: int) -> np.ndarray:
        p = f"model.layers.{layer}.mlp."
        gate = self._linear(x, p + "gate_proj")
        up = self._linear(x, p + "up_proj")
        return self._linear(silu(gate) * up, p + "down_proj")

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits [T, V]: row t predicts the token after tokens[: t + 1]."""
        c = self.config
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token ids must lie in [0, {c.vocab_size})")
        positions = np.arange(ids.size)
        x = self.w["model.embed_tokens.weight"][ids]
        for layer in range(c.num_layers):
            p = f"model.layers.{layer}."
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], c.rms_norm_eps)
            x = x + self._attention(h, layer, positions)
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
            x = x + self._mlp(h, layer)
        x = rms_norm(x, self.w["model.norm.weight"], c.rms_norm_eps)
        head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        return x @ self.w[head].T

    def greedy(self, prompt: Sequence[int], n: int) -> list[int]:
        """n greedy tokens after `prompt` (argmax; ties go to the lowest id, as numpy does)."""
        tokens = list(prompt)
        for _ in range(n):
            tokens.append(int(np.argmax(self.forward(tokens)[-1])))
        return tokens[len(prompt) :]


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: one number per compared array."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} vs expected {expected.shape}")
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
