// Element-type conversions for the CPU backend (embedding rows, KV pages, host copies); they use
// the exact scalar conversions of ember/dtype.h so every path agrees on the bits.
#include "backend/cpu/cpu_kernels.h"
#include "ember/error.h"
#include "format/gguf_dequant.h"

namespace ember::cpu {

void to_f32(const void* src, DType src_type, float* dst, int64_t n) {
  switch (src_type) {
    case DType::F32: {
      const float* s = static_cast<const float*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = s[i];
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q8_0:
      dequantize_blocks(src_type, src, n, dst);  // the values a GGUF load would give
      return;
    default: break;
  }
  throw EngineError(std::string("cpu to_f32: cannot convert from ") + dtype_name(src_type));
}

void from_f32(const float* src, void* dst, DType dst_type, int64_t n) {
  switch (dst_type) {
    case DType::F32: {
      float* d = static_cast<float*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    default: break;
  }
  throw EngineError(std::string("cpu from_f32: cannot convert to ") + dtype_name(dst_type));
}

}  // namespace ember::cpu
