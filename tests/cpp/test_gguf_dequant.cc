// Dequantization of hand-built ggml blocks: expected values are worked out by hand from the block
// layouts, so a mix-up of nibble order, bit planes or scale packing shows up here.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "ember/dtype.h"
#include "ember/error.h"
#include "ember/gguf.h"
#include "format/gguf_dequant.h"

namespace ember {
namespace {

void set_half(std::vector<uint8_t>& b, size_t at, float v) {
  uint16_t h = f32_to_f16(v);
  std::memcpy(b.data() + at, &h, 2);
}

std::vector<float> run(GgmlType t, const std::vector<uint8_t>& block, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), 12345.0f);
  dequantize_ggml(static_cast<uint32_t>(t), block.data(), n, out.data());
  return out;
}

TEST(GgufDequant, Q4_0) {
  std::vector<uint8_t> b(18, 0);
  set_half(b, 0, 2.0f);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  auto y = run(GgmlType::Q4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 2.0f * (j - 8)) << j;
    EXPECT_EQ(y[j + 16], 2.0f * (7 - j)) << j;
  }
}

TEST(GgufDequant, Q4_1) {
  std::vector<uint8_t> b(20, 0);
  set_half(b, 0, 0.5f);
  set_half(b, 2, -1.0f);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | (3 << 4));
  auto y = run(GgmlType::Q4_1, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * j - 1.0f);
    EXPECT_EQ(y[j + 16], 0.5f);
  }
}

TEST(GgufDequant, Q5_0) {
  std::vector<uint8_t> b(22, 0);
  set_half(b, 0, 1.0f);
  uint32_t qh = 0x80000001u;  // 5th bit of elements 0 and 31
  std::memcpy(b.data() + 2, &qh, 4);
  b[6 + 15] = 0xF0;
  auto y = run(GgmlType::Q5_0, b, 32);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], -16.0f);
  EXPECT_EQ(y[15], -16.0f);
  EXPECT_EQ(y[31], 15.0f);
  EXPECT_EQ(y[16], -16.0f);
}

TEST(GgufDequant, Q5_1) {
  std::vector<uint8_t> b(24, 0);
  set_half(b, 0, 1.0f);
  set_half(b, 2, 0.5f);
  uint32_t qh = 1u << 16;  // 5th bit of element 16
  std::memcpy(b.data() + 4, &qh, 4);
  b[8] = 0x31;
  auto y = run(GgmlType::Q5_1, b, 32);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[16], 19.5f);
  EXPECT_EQ(y[1], 0.5f);
}

TEST(GgufDequant, Q8_0TwoBlocks) {
  std::vector<uint8_t> b(68, 0);
  set_half(b, 0, 0.25f);
  set_half(b, 34, -2.0f);
  for (int j = 0; j < 32; ++j) {
    b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
    b[36 + j] = static_cast<uint8_t>(static_cast<int8_t>(j == 0 ? -128 : 127));
  }
  auto y = run(GgmlType::Q8_0, b, 64);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.25f * (j - 16));
  EXPECT_EQ(y[32], 256.0f);
  EXPECT_EQ(y[33], -254.0f);
}

TEST(GgufDequant, Q2_K) {
  std::vector<uint8_t> b(84, 0);
  set_half(b, 80, 1.0f);   // d
  set_half(b, 82, 0.5f);   // dmin
  b[0] = 0x23;             // group 0: scale 3, min 2
  b[12] = 0x14;            // group 12: scale 4, min 1
  b[16 + 0] = 0x02;        // element 0: q = 2
  b[16 + 40] = 0x30;       // element 200 (second half, plane 2, lane 8): q = 3
  auto y = run(GgmlType::Q2_K, b, 256);
  EXPECT_EQ(y[0], 5.0f);
  EXPECT_EQ(y[1], -1.0f);
  EXPECT_EQ(y[200], 11.5f);
  EXPECT_EQ(y[201], -0.5f);
}

TEST(GgufDequant, Q3_K) {
  std::vector<uint8_t> b(110, 0);
  set_half(b, 108, 2.0f);
  uint8_t* hmask = b.data();
  uint8_t* qs = b.data() + 32;
  uint8_t* sc = b.data() + 96;
  sc[0] = 0x05;  // group 0 low bits 5
  sc[8] = 0x02;  // group 0 high bits 2 -> 37 - 32 = 5
  sc[5] = 0xA0;  // group 13 low bits 10
  sc[9] = 0x40;  // group 13 high bits 1 -> 26 - 32 = -6
  qs[0] = 0x03;
  hmask[0] = 0x01;   // element 0: q = 3
  qs[50] = 0x10;     // element 210: low bits 1
  hmask[18] = 0x40;  // element 210: high bit set -> no offset
  auto y = run(GgmlType::Q3_K, b, 256);
  EXPECT_EQ(y[0], 30.0f);
  EXPECT_EQ(y[1], -40.0f);   // q = 0 - 4
  EXPECT_EQ(y[210], -12.0f);
  EXPECT_EQ(y[211], 48.0f);  // q = -4, scale -6, d 2
}

std::vector<uint8_t> k_block(size_t size) {
  std::vector<uint8_t> b(size, 0);
  set_half(b, 0, 1.0f);  // d
  set_half(b, 2, 0.5f);  // dmin
  uint8_t* s = b.data() + 4;
  s[0] = 3;     // group 0 scale
  s[4] = 2;     // group 0 min
  s[1] = 0xC0;  // group 5 scale high bits 3; group 1 scale 0
  s[5] = 0x40;  // group 5 min high bits 1; group 1 min 0
  s[9] = 0x21;  // group 5: scale low 1, min low 2 -> scale 49, min 18
  return b;
}

TEST(GgufDequant, Q4_K) {
  auto b = k_block(144);
  uint8_t* qs = b.data() + 16;
  qs[0] = 0x07;       // element 0 (group 0): q = 7
  qs[64 + 3] = 0xA0;  // element 163 (group 5 = high nibbles of chunk 2): q = 10
  auto y = run(GgmlType::Q4_K, b, 256);
  EXPECT_EQ(y[0], 20.0f);
  EXPECT_EQ(y[32], 0.0f);
  EXPECT_EQ(y[163], 481.0f);
  EXPECT_EQ(y[160], -9.0f);
}

TEST(GgufDequant, Q5_K) {
  auto b = k_block(176);
  uint8_t* qh = b.data() + 16;
  uint8_t* qs = b.data() + 48;
  qs[0] = 0x07;
  qs[64 + 3] = 0xA0;
  qh[3] = 1 << 5;  // 5th bit of element 163 (group 5, lane 3)
  auto y = run(GgmlType::Q5_K, b, 256);
  EXPECT_EQ(y[0], 20.0f);
  EXPECT_EQ(y[163], 1265.0f);
  EXPECT_EQ(y[35], -0.0f);
}

TEST(GgufDequant, Q6_K) {
  std::vector<uint8_t> b(210, 0);
  uint8_t* ql = b.data();
  uint8_t* qh = b.data() + 128;
  int8_t* scales = reinterpret_cast<int8_t*>(b.data() + 192);
  set_half(b, 208, 0.5f);
  scales[0] = 2;
  scales[4] = 1;
  scales[15] = -3;
  ql[0] = 0x05;
  qh[0] = 0x02;   // element 0: 5 | 32 -> 5
  ql[6] = 0x30;
  qh[6] = 0x10;   // element 70: 3 | 16 -> -13
  ql[127] = 0x90;
  qh[63] = 0xC0;  // element 255: 9 | 48 -> 25
  auto y = run(GgmlType::Q6_K, b, 256);
  EXPECT_EQ(y[0], 5.0f);
  EXPECT_EQ(y[1], -32.0f);
  EXPECT_EQ(y[70], -6.5f);
  EXPECT_EQ(y[255], -37.5f);
}

TEST(GgufDequant, FloatTypes) {
  std::vector<float> f = {1.0f, -2.5f, 3.0e-8f, 65504.0f};
  std::vector<uint8_t> b32(16), b16(8), bb(8);
  std::memcpy(b32.data(), f.data(), 16);
  for (int k = 0; k < 4; ++k) {
    uint16_t h = f32_to_f16(f[k]), g = f32_to_bf16(f[k]);
    std::memcpy(b16.data() + 2 * k, &h, 2);
    std::memcpy(bb.data() + 2 * k, &g, 2);
  }
  EXPECT_EQ(run(GgmlType::F32, b32, 4), f);
  auto h = run(GgmlType::F16, b16, 4);
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.5f);
  EXPECT_EQ(h[3], 65504.0f);
  EXPECT_EQ(h[2], f16_to_f32(f32_to_f16(3.0e-8f)));  // subnormal half
  auto g = run(GgmlType::BF16, bb, 4);
  EXPECT_EQ(g[0], 1.0f);
  EXPECT_EQ(g[1], -2.5f);
  EXPECT_EQ(g[3], 65536.0f);  // bf16 rounds 65504 up
}

TEST(GgufDequant, RejectsUnsupportedTypeAndPartialBlocks) {
  std::vector<uint8_t> b(400, 0);
  std::vector<float> y(256);
  try {
    dequantize_ggml(static_cast<uint32_t>(GgmlType::IQ2_XXS), b.data(), 256, y.data());
    ADD_FAILURE() << "expected ModelFormatError";
  } catch (const ModelFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos);
  }
  EXPECT_THROW(dequantize_ggml(static_cast<uint32_t>(GgmlType::Q4_K), b.data(), 100, y.data()),
               ModelFormatError);
  EXPECT_THROW(dequantize_ggml(12345, b.data(), 32, y.data()), ModelFormatError);
  EXPECT_TRUE(ggml_type_dequantizable(static_cast<uint32_t>(GgmlType::Q6_K)));
  EXPECT_FALSE(ggml_type_dequantizable(static_cast<uint32_t>(GgmlType::Q8_1)));
}

}  // namespace
}  // namespace ember
