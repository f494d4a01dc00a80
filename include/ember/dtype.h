// Element types of weights, activations and KV pages, with exact fp16/bf16 <-> fp32 conversion so
// that every backend and format parser agrees on the bits; plus ggml's 32-element block formats,
// which a backend may keep as stored and read directly in its matmuls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace ember {

// Q4_0, Q4_1 and Q8_0 are ggml's block formats, laid out exactly as in GGUF files: blocks of 32
// consecutive elements of a row, each an fp16 scale d (Q4_1: then an fp16 minimum m) followed by
// the quants. Q4_0: 16 bytes of nibbles, value = d * (q - 8); Q4_1: value = d * q + m; Q8_0: 32
// int8, value = d * q. Element j of a block is the low nibble of byte j (j < 16) or the high
// nibble of byte j - 16.
enum class DType : uint8_t { F32, F16, BF16, I32, Q4_0, Q4_1, Q8_0 };

constexpr bool dtype_is_quantized(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q8_0;
}

// Elements per block: 32 for the block formats, 1 for element types.
constexpr int64_t dtype_block_elems(DType t) { return dtype_is_quantized(t) ? 32 : 1; }

// Bytes of one element; 0 for the block formats, which have no per-element size (use
// dtype_block_bytes / dtype_nbytes for them).
constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    default: return 0;
  }
}

// Bytes of one block (of one element for element types).
constexpr size_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::Q4_0: return 18;
    case DType::Q4_1: return 20;
    case DType::Q8_0: return 34;
    default: return dtype_size(t);
  }
}

// Bytes of numel elements; for a block format numel must be a whole number of blocks (a row of a
// quantized matrix always is).
constexpr size_t dtype_nbytes(DType t, int64_t numel) {
  return static_cast<size_t>(numel / dtype_block_elems(t)) * dtype_block_bytes(t);
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
    case DType::Q8_0: return "Q8_0";
  }
  return "?";
}

// Parses "F32"/"float32"/"bfloat16"/... ; returns false for anything unknown.
bool parse_dtype(const std::string& name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace ember
