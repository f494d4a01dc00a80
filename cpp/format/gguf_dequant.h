// Block formats of ggml tensors converted to fp32, bit-for-bit as the `gguf` package's reference
// dequantization computes them (same products, same rounding order, no fused multiply-add).
#pragma once

#include <cstdint>

#include "ember/dtype.h"

namespace ember {

// True for the types dequantize_ggml() converts: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
bool ggml_type_dequantizable(uint32_t type);

// Converts n elements of ggml type `type` at src to fp32 at dst. n must be a multiple of the
// type's block size and src must hold n / block_size blocks. Throws ModelFormatError for a type
// it does not convert (naming it) or an n that is not a whole number of blocks.
void dequantize_ggml(uint32_t type, const uint8_t* src, int64_t n, float* dst);

// The same for Ember's block dtypes (Q4_0, Q4_1, Q8_0), which are ggml's layouts.
void dequantize_blocks(DType type, const void* src, int64_t n, float* dst);

}  // namespace ember
