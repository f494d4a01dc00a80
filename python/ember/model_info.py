# `ember info` must answer "will this model fit on my cards?" before anything is loaded, so it
# reads only headers: GGUF metadata and tensor infos, or config.json plus safetensors headers.
"""Model facts (architecture, parameter count, dtypes, memory per device) from file headers."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bytes per block and elements per block of GGUF tensor types (the ggml format's own layout)
GGML_BLOCKS: Mapping[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "F64": (1, 8),
    "I8": (1, 1),
    "I16": (1, 2),
    "I32": (1, 4),
    "I64": (1, 8),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q8_1": (32, 36),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "Q8_K": (256, 292),
}

SAFETENSORS_DTYPE_BYTES: Mapping[str, float] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip

_MAX_SAFETENSORS_HEADER = 100 << 20

_LAYER_RE = re.compile(r"(?:^blk\.|(?:^|\.)layers\.)(\d+)\.")
_FIRST_STAGE_NAMES = ("token_embd.", "embed_tokens.")
_LAST_STAGE_NAMES = ("output.", "output_norm.", "lm_head.", "model.norm.", "norm.")


@dataclass
class TensorFacts:
    """One tensor: its name, element count, stored dtype and stored size."""

    name: str
    numel: int
    dtype: str
    nbytes: int


@dataclass
class ModelFacts:
    """What `ember info` reports about a model, read without loading it."""

    path: str
    format: str  # "gguf" or "safetensors"
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tensors: list[TensorFacts] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def dtype_summary(self) -> dict[str, dict[str, int]]:
        """{dtype: {"tensors": n, "params": n, "bytes": n}}, largest first."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            entry = out.setdefault(t.dtype, {"tensors": 0, "params": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["params"] += t.numel
            entry["bytes"] += t.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["params"]))

    def kv_bytes_per_token(self, num_layers: int, elem_bytes: int) -> int:
        """K and V for one token over `num_layers` layers."""
        return 2 * num_layers * self.num_kv_heads * self.head_dim * elem_bytes


@dataclass
class StageMemory:
    """One pipeline stage's share of a model."""

    device: str
    layer_begin: int
    layer_end: int  # exclusive
    weight_bytes: int
    kv_bytes: int
    kv_dtype: str


# ---- GGUF -------------------------------------------------------------------------------------


def ggml_tensor_bytes(dtype: str, numel: int, name: str, where: str) -> int:
    block = GGML_BLOCKS.get(dtype)
    if block is None:
        raise ValueError(f"{where}: tensor {name} has GGUF type {dtype}, which ember does not know")
    per_block, nbytes = block
    return math.ceil(numel / per_block) * nbytes


def _meta_int(meta: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, list) and value:  # per-layer arrays: report the first layer's
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: GGUF metadata {key} is missing or not an integer")
    return value


def facts_from_gguf(
    path: str, meta: Mapping[str, Any], tensor_infos: Sequence[Mapping[str, Any]]
) -> ModelFacts:
    """Facts from `ember._C.gguf_metadata(path)` and `ember._C.gguf_tensor_infos(path)`."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: GGUF metadata has no general.architecture")
    tensors: list[TensorFacts] = []
    for info in tensor_infos:
        name = str(info["name"])
        numel = math.prod(int(d) for d in info["shape"])
        dtype = str(info["type"])
        tensors.append(TensorFacts(name, numel, dtype, ggml_tensor_bytes(dtype, numel, name, path)))
    hidden = _meta_int(meta, f"{arch}.embedding_length", path)
    heads = _meta_int(meta, f"{arch}.attention.head_count", path)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_default = len(tokens) if isinstance(tokens, list) else 0
    return ModelFacts(
        path=path,
        format="gguf",
        architecture=arch,
        num_layers=_meta_int(meta, f"{arch}.block_count", path),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=_meta_int(meta, f"{arch}.attention.head_count_kv", path, heads),
        head_dim=_meta_int(meta, f"{arch}.attention.key_length", path, hidden // max(heads, 1)),
        intermediate_size=_meta_int(meta, f"{arch}.feed_forward_length", path, 0),
        vocab_size=_meta_int(meta, f"{arch}.vocab_size", path, vocab_default),
        context_length=_meta_int(meta, f"{arch}.context_length", path, 0),
        tensors=tensors,
    )


# ---- Hugging Face folder ----------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_SAFETENSORS_HEADER:
            raise ValueError(f"{path}: safetensors header length {length} is implausibly large")
        raw = f.read(length)
    if len(raw) != length:
        raise ValueError(f"{path}: safetensors header is cut short ({len(raw)} of {length} bytes)")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return header


def _safetensors_tensors(path: Path) -> list[TensorFacts]:
    out: list[TensorFacts] = []
    for name, entry in read_safetensors_header(path).items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(entry["dtype"])
            numel = math.prod(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: tensor {name} has a malformed header entry") from exc
        out.append(TensorFacts(name, numel, dtype, end - begin))
    return out


def _cfg_int(cfg: Mapping[str, Any], key: str, where: Path, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key} is missing or not an integer")
    return value


def facts_from_hf_dir(folder: Path) -> ModelFacts:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder}: no config.json, so not a Hugging Face model folder")
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors weight files")
    tensors = [t for f in files for t in _safetensors_tensors(f)]
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else str(cfg.get("model_type", "?"))
    hidden = _cfg_int(cfg, "hidden_size", config_path)
    heads = _cfg_int(cfg, "num_attention_heads", config_path)
    return ModelFacts(
        path=str(folder),
        format="safetensors",
        architecture=str(arch),
        num_layers=_cfg_int(cfg, "num_hidden_layers", config_path),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=_cfg_int(cfg, "num_key_value_heads", config_path, heads),
        head_dim=_cfg_int(cfg, "head_dim", config_path, hidden // max(heads, 1)),
        intermediate_size=_cfg_int(cfg, "intermediate_size", config_path, 0),
        vocab_size=_cfg_int(cfg, "vocab_size", config_path, 0),
        context_length=_cfg_int(cfg, "max_position_embeddings", config_path, 0),
        tensors=tensors,
    )


def model_facts(path: str) -> ModelFacts:
    """Facts about a .gguf file or a Hugging Face folder, read from headers only."""
    p = Path(path)
    if p.is_dir():
        return facts_from_hf_dir(p)
    if p.is_file() and p.suffix == ".gguf":
        from ember import _C

        return facts_from_gguf(path, _C.gguf_metadata(path), _C.gguf_tensor_infos(path))
    if not p.exists():
        raise FileNotFoundError(f"model path {path!r} does not exist")
    raise ValueError(f"{path}: expected a .gguf file or a Hugging Face model folder")


# ---- per device -------------------------------------------------------------------------------


def split_layers(num_layers: int, num_stages: int, split: Sequence[int] | None) -> list[range]:
    """Layer ranges per stage: `split` as given, else as even as possible (earlier stages
    take the remainder), like the engine's default plan."""
    if num_stages < 1:
        raise ValueError("devices: at least one device is needed")
    if split is not None:
        if len(split) != num_stages or any(n < 1 for n in split) or sum(split) != num_layers:
            raise ValueError(
                f"--split {','.join(map(str, split))} must give {num_stages} positive layer "
                f"counts adding up to the model's {num_layers} layers"
            )
        counts = list(split)
    else:
        if num_stages > num_layers:
            raise ValueError(f"{num_stages} devices for {num_layers} layers: too many stages")
        base, extra = divmod(num_layers, num_stages)
        counts = [base + (1 if i < extra else 0) for i in range(num_stages)]
    ranges: list[range] = []
    begin = 0
    for n in counts:
        ranges.append(range(begin, begin + n))
        begin += n
    return ranges


def _tensor_stage(name: str, ranges: Sequence[range]) -> list[int]:
    m = _LAYER_RE.search(name)
    if m:
        layer = int(m.group(1))
        return [i for i, r in enumerate(ranges) if layer in r]
    if any(name.startswith(p) or f".{p}" in name for p in _FIRST_STAGE_NAMES):
        return [0]
    if any(name.startswith(p) for p in _LAST_STAGE_NAMES):
        return [len(ranges) - 1]
    return [0]


def kv_elem_bytes(device: str) -> tuple[int, str]:
    """KV cache element size on a device: fp32 on the CPU, 16-bit on a GPU."""
    return (4, "f32") if device.strip().lower() == "cpu" else (2, "f16/bf16")


def stage_memory(
    facts: ModelFacts, devices: Sequence[str], ctx: int, split: Sequence[int] | None = None
) -> list[StageMemory]:
    """Weights (as stored) and KV cache at `ctx` tokens for each pipeline stage."""
    ranges = split_layers(facts.num_layers, len(devices), split)
    weights = [0] * len(ranges)
    has_lm_head = any(t.name.startswith(("output.", "lm_head.")) for t in facts.tensors)
    for t in facts.tensors:
        for s in _tensor_stage(t.name, ranges):
            weights[s] += t.nbytes
        # Tied embeddings: the last stage needs its own copy to compute the logits.
        if not has_lm_head and len(ranges) > 1 and any(p in t.name for p in _FIRST_STAGE_NAMES):
            weights[-1] += t.nbytes
    out: list[StageMemory] = []
    for device, r, w in zip(devices, ranges, weights, strict=True):
        elem, kv_dtype = kv_elem_bytes(device)
        kv = facts.kv_bytes_per_token(len(r), elem) * ctx
        out.append(StageMemory(device, r.start, r.stop, w, kv, kv_dtype))
    return out
