"""Ember's GGUF parser and dequantization against the `gguf` package's reference.

Files are written with gguf.GGUFWriter; every supported weight type must dequantize bit for bit
as gguf.quants.dequantize does, and metadata of every value type must read back unchanged.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

import ember
from ember import _C

# Types gguf.quants.quantize can produce.
QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16]
# Byte offsets of the fp16 scales inside one block of each block type.
SCALE_OFFSETS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
ROWS, COLS = 6, 512


def random_blocks(rng: np.random.Generator, qtype: Q, rows: int, cols: int) -> np.ndarray:
    """Random block bytes with finite fp16 scales, covering every bit pattern of the quants."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = cols // block
    raw = rng.integers(0, 256, size=(rows, n_blocks, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(-3.0, 3.0, size=(rows, n_blocks)).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, n_blocks, 2)
    return raw.reshape(rows, n_blocks * size)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple]]:
    rng = np.random.default_rng(1234)
    path = tmp_path_factory.mktemp("gguf") / "types.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    tensors: dict[str, tuple] = {}

    def add(name: str, data: np.ndarray, qtype: Q) -> None:
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
        tensors[name] = (data, qtype)

    x = (rng.standard_normal((ROWS, COLS)) * 0.7).astype(np.float32)
    x[0, :7] = [0.0, -0.0, 1e-8, -65504.0, 3.0, 1e-30, 7.5]
    add("w.F32", x, Q.F32)
    add("w.F16", x.astype(np.float16), Q.F16)
    add("w.F32_3d", rng.standard_normal((2, 3, 64)).astype(np.float32), Q.F32)
    for qtype in QUANTIZABLE:
        add(f"w.{qtype.name}", gguf.quants.quantize(x, qtype), qtype)
    for qtype in SCALE_OFFSETS:
        add(f"w.{qtype.name}.random", random_blocks(rng, qtype, ROWS, COLS), qtype)
    bits = rng.integers(0, 1 << 16, size=(ROWS, COLS), dtype=np.uint16)
    add("w.BF16.random", bits.view(np.uint8).reshape(ROWS, COLS * 2), Q.BF16)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, tensors


def test_tensor_infos_match_reader(weights_file: tuple[Path, dict]) -> None:
    path, tensors = weights_file
    infos = {t["name"]: t for t in _C.gguf_tensor_infos(str(path))}
    reader = gguf.GGUFReader(str(path))
    assert set(infos) == {t.name for t in reader.tensors} == set(tensors)
    for t in reader.tensors:
        info = infos[t.name]
        assert info["type"] == t.tensor_type.name
        assert info["shape"] == [int(d) for d in t.shape]
        assert info["offset"] == int(t.data_offset) - int(reader.data_offset)


@pytest.mark.parametrize(
    "name",
    ["w.F32", "w.F16", "w.F32_3d", "w.BF16.random"]
    + [f"w.{q.name}" for q in QUANTIZABLE]
    + [f"w.{q.name}.random" for q in SCALE_OFFSETS],
)
def test_dequantize_bit_exact(weights_file: tuple[Path, dict], name: str) -> None:
    path, _ = weights_file
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == name)
    ref = gguf.quants.dequantize(t.data, t.tensor_type)
    ours = _C.gguf_dequantize(str(path), name)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == tuple(int(d) for d in reversed(t.shape))
    assert same_bits(ours, ref), f"{name}: first mismatch at {np.argwhere(ours != ref)[:3]}"


def test_quantized_values_are_close_to_source(weights_file: tuple[Path, dict]) -> None:
    # Guards against a reference and an implementation that agree on garbage.
    path, tensors = weights_file
    x = tensors["w.F32"][0][1:]  # row 0 holds deliberate extremes
    for qtype, tol in [(Q.Q8_0, 0.02), (Q.Q5_0, 0.1), (Q.Q4_0, 0.25), (Q.BF16, 0.02)]:
        ours = _C.gguf_dequantize(str(path), f"w.{qtype.name}")[1:]
        assert np.max(np.abs(ours - x)) < tol, qtype.name


def test_metadata_every_value_type(tmp_path: Path) -> None:
    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1e300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_key_value("t.bad_utf8", b"ok\xff\xfe", V.STRING)
    w.add_array("t.arr_str", ["a", "", "✓"])
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.5])
    w.add_array("t.arr_bool", [True, False])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_key_value("t.arr_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_tensor("x", np.arange(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    md = _C.gguf_metadata(str(path))
    assert md["general.architecture"] == "qwen2"
    expected = {
        "t.u8": 250, "t.i8": -100, "t.u16": 60000, "t.i16": -30000, "t.u32": 4_000_000_000,
        "t.i32": -2_000_000_000, "t.f32": 0.25, "t.u64": 2**63 + 5, "t.i64": -(2**62),
        "t.f64": 1e300, "t.bool": True, "t.str": "héllo ✓", "t.bad_utf8": "ok\ufffd\ufffd",
        "t.arr_str": ["a", "", "✓"], "t.arr_i32": [1, -2, 3], "t.arr_f32": [0.5, -1.5],
        "t.arr_bool": [True, False], "t.nested": [[1, 2], [3]], "t.arr_u8": [1, 2, 255],
    }
    for key, value in expected.items():
        assert md[key] == value, key
        assert type(md[key]) is type(value), key
    reader = gguf.GGUFReader(str(path))
    assert set(md) == set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def test_errors_are_model_format_errors(tmp_path: Path, weights_file: tuple[Path, dict]) -> None:
    path, _ = weights_file
    with pytest.raises(ember.ModelFormatError, match="no tensor named 'nope'"):
        _C.gguf_dequantize(str(path), "nope")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ember.ModelFormatError, match="version 1"):
        _C.gguf_metadata(str(bad))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ember.ModelFormatError, match=str(cut)):
        _C.gguf_tensor_infos(str(cut))
    assert issubclass(ember.ModelFormatError, ValueError)
