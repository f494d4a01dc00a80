// fp32 conversion of ggml's block formats, written from the documented block layouts. Each value is
// computed with exactly the reference's float32 operations, so results match it bit for bit.
#include "format/gguf_dequant.h"

#include <cstring>
#include <string>
#include <vector>

#include "ember/dtype.h"
#include "ember/error.h"
#include "ember/gguf.h"

// A fused multiply-add rounds once where the reference rounds twice; keep them apart.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace ember {
namespace {

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

inline float mul_add(float a, float b, float c) {
  float prod = a * b;
  return prod + c;
}

inline float mul_sub(float a, float b, float c) {
  float prod = a * b;
  return prod - c;
}

// ---- 32-element blocks ----

void dq_q4_0(const uint8_t* b, float* y) {  // d:f16, qs[16] (low nibbles: 0..15, high: 16..31)
  const float d = half_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void dq_q4_1(const uint8_t* b, float* y) {  // d:f16, m:f16, qs[16]
  const float d = half_at(b), m = half_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = mul_add(d, static_cast<float>(qs[j] & 0x0F), m);
    y[j + 16] = mul_add(d, static_cast<float>(qs[j] >> 4), m);
  }
}

void dq_q5_0(const uint8_t* b, float* y) {  // d:f16, qh:u32 (bit j = 5th bit of element j), qs[16]
  const float d = half_at(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void dq_q5_1(const uint8_t* b, float* y) {  // d:f16, m:f16, qh:u32, qs[16]
  const float d = half_at(b), m = half_at(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = mul_add(d, static_cast<float>(lo), m);
    y[j + 16] = mul_add(d, static_cast<float>(hi), m);
  }
}

void dq_q8_0(const uint8_t* b, float* y) {  // d:f16, qs:int8[32]
  const float d = half_at(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// ---- 256-element super-blocks ----

void dq_q2_k(const uint8_t* b, float* y) {
  // scales[16] (low nibble: scale, high: min, per 16 elements), qs[64] (2 bits), d:f16, dmin:f16
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int g = 0; g < 16; ++g) {
    const float dl = d * static_cast<float>(scales[g] & 0x0F);
    const float ml = dmin * static_cast<float>(scales[g] >> 4);
    for (int t = 0; t < 16; ++t) {
      const int e = g * 16 + t;
      const int half = e / 128, shift = 2 * ((e % 128) / 32), l = e % 32;
      const int q = (qs[half * 32 + l] >> shift) & 3;
      y[e] = mul_sub(dl, static_cast<float>(q), ml);
    }
  }
}

void dq_q3_k(const uint8_t* b, float* y) {
  // hmask[32] (3rd bit, inverted offset), qs[64] (low 2 bits), scales[12] (16 x 6 bits), d:f16
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = half_at(b + 108);
  for (int g = 0; g < 16; ++g) {
    const int low = g < 8 ? (sc[g] & 0x0F) : (sc[g - 8] >> 4);
    const int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
    const int scale = static_cast<int>(static_cast<int8_t>(static_cast<uint8_t>(low | (high << 4)))) - 32;
    const float dl = d * static_cast<float>(scale);
    for (int t = 0; t < 16; ++t) {
      const int e = g * 16 + t;
      const int half = e / 128, shift = 2 * ((e % 128) / 32), l = e % 32;
      const int ql = (qs[half * 32 + l] >> shift) & 3;
      const int hbit = (hmask[l] >> (e / 32)) & 1;
      const int q = ql - ((hbit ^ 1) << 2);
      y[e] = dl * static_cast<float>(q);
    }
  }
}

// The 8 six-bit (scale, min) pairs of Q4_K / Q5_K, packed into 12 bytes.
inline void k_scale_min(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 0x3F;
    *mn = s[j + 4] & 0x3F;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void dq_q4_k(const uint8_t* b, float* y) {  // d, dmin:f16, scales[12], qs[128]
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int g = 0; g < 8; ++g) {
    int sc, mn;
    k_scale_min(scales, g, &sc, &mn);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + (g / 2) * 32;
    const int shift = 4 * (g % 2);
    for (int l = 0; l < 32; ++l) {
      y[g * 32 + l] = mul_sub(dl, static_cast<float>((q[l] >> shift) & 0x0F), ml);
    }
  }
}

void dq_q5_k(const uint8_t* b, float* y) {  // d, dmin:f16, scales[12], qh[32], qs[128]
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int g = 0; g < 8; ++g) {
    int sc, mn;
    k_scale_min(scales, g, &sc, &mn);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + (g / 2) * 32;
    const int shift = 4 * (g % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> g) & 1) << 4);
      y[g * 32 + l] = mul_sub(dl, static_cast<float>(v), ml);
    }
  }
}

void dq_q6_k(const uint8_t* b, float* y) {  // ql[128], qh[64], scales:int8[16], d:f16
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int g = 0; g < 16; ++g) {
    const float dl = d * static_cast<float>(scales[g]);
    for (int t = 0; t < 16; ++t) {
      const int e = g * 16 + t;
      const int half = e / 128, r = e % 128;
      const int lo = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
      const int hi = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
      y[e] = dl * static_cast<float>((lo | (hi << 4)) - 32);
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q4_0: return dq_q4_0;
    case GgmlType::Q4_1: return dq_q4_1;
    case GgmlType::Q5_0: return dq_q5_0;
    case GgmlType::Q5_1: return dq_q5_1;
    case GgmlType::Q8_0: return dq_q8_0;
    case GgmlType::Q2_K: return dq_q2_k;
    case GgmlType::Q3_K: return dq_q3_k;
    case GgmlType::Q4_K: return dq_q4_k;
    case GgmlType::Q5_K: return dq_q5_k;
    case GgmlType::Q6_K: return dq_q6_k;
    default: return nullptr;
  }
}

}  // namespace

bool ggml_type_dequantizable(uint32_t type) {
  const GgmlTypeInfo* info = ggml_type_info(type);
  return info && info->dequantizable;
}

void dequantize_ggml(uint32_t type, const uint8_t* src, int64_t n, float* dst) {
  const GgmlTypeInfo* info = ggml_type_info(type);
  if (!info || !info->dequantizable) {
    throw ModelFormatError(std::string("cannot dequantize ggml type ") +
                           (info ? info->name : std::to_string(type)) +
                           " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, "
                           "Q3_K, Q4_K, Q5_K, Q6_K)");
  }
  if (n < 0 || n % info->block_size != 0) {
    throw ModelFormatError(std::string("dequantize ") + info->name + ": " + std::to_string(n) +
                           " elements is not a whole number of " +
                           std::to_string(info->block_size) + "-element blocks");
  }
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t k = 0; k < n; ++k) dst[k] = half_at(src + 2 * k);
      return;
    case GgmlType::BF16:
      for (int64_t k = 0; k < n; ++k) {
        uint16_t h;
        std::memcpy(&h, src + 2 * k, 2);
        dst[k] = bf16_to_f32(h);
      }
      return;
    default:
      break;
  }
  BlockFn fn = block_fn(type);
  const int64_t nb = n / info->block_size;
  for (int64_t k = 0; k < nb; ++k) fn(src + k * info->type_size, dst + k * info->block_size);
}

std::vector<float> gguf_dequantize_tensor(const GgufFile& file, const GgufTensorInfo& t) {
  const GgmlTypeInfo* info = ggml_type_info(t.type);
  if (!info || !info->dequantizable) {
    throw ModelFormatError(file.path() + ": tensor '" + t.name + "' has ggml type " +
                           (info ? info->name : std::to_string(t.type)) +
                           ", which Ember cannot dequantize (supported: F32, F16, BF16, Q4_0, "
                           "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
  }
  std::vector<float> out(static_cast<size_t>(t.numel));
  const uint8_t* src = file.tensor_data(t);
  // Rows are independent; split them across threads in chunks of whole rows.
  const int64_t row = t.ne[0];
  const int64_t rows = t.numel / row;
  const int64_t row_bytes = row / info->block_size * info->type_size;
#pragma omp parallel for schedule(static) if (t.numel >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_ggml(t.type, src + r * row_bytes, row, out.data() + r * row);
  }
  return out;
}

void dequantize_blocks(DType type, const void* src, int64_t n, float* dst) {
  GgmlType g;
  switch (type) {
    case DType::Q4_0: g = GgmlType::Q4_0; break;
    case DType::Q4_1: g = GgmlType::Q4_1; break;
    case DType::Q8_0: g = GgmlType::Q8_0; break;
    default: throw EngineError(std::string("dequantize_blocks: ") + dtype_name(type) + " is not a block format");
  }
  dequantize_ggml(static_cast<uint32_t>(g), static_cast<const uint8_t*>(src), n, dst);
}

}  // namespace ember
