// IEEE half conversions done in software so that the CPU backend and the file parsers need no
// compiler extension; exactness matters because every backend is compared against these.
#include "ember/dtype.h"

namespace ember {

bool parse_dtype(const std::string& name, DType* out) {
  if (name == "F32" || name == "float32") { *out = DType::F32; return true; }
  if (name == "F16" || name == "float16") { *out = DType::F16; return true; }
  if (name == "BF16" || name == "bfloat16") { *out = DType::BF16; return true; }
  if (name == "I32" || name == "int32") { *out = DType::I32; return true; }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t e = abs >> 23;                       // 102..112
    uint32_t m = (abs & 0x7fffffu) | 0x800000u;   // 24-bit significand
    uint32_t shift = 126 - e;                     // half subnormal = m * 2^(e - 126), in ulps of 2^-24
    uint32_t r = m >> shift;
    // round to nearest even on the dropped bits (r == 0x400 becomes the smallest normal, correctly)
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t mant_round = 0xfffu + ((r >> 13) & 1u);
  r = (r + mant_round) >> 13;
  return static_cast<uint16_t>(sign | r);
}

}  // namespace ember
