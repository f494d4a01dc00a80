// The GGUF parser against a corpus of hostile files (each must be a clear ModelFormatError naming
// the problem, never a crash or a huge allocation) and a valid file that must round-trip.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ember/error.h"
#include "ember/gguf.h"
#include "gguf_test_builder.h"

namespace ember {
namespace {
using gguf_test::Builder;
using gguf_test::write_file;

// Opens the bytes as a file; expects a ModelFormatError whose message holds every needle and the
// file's path. Returns the message.
std::string expect_error(const std::string& name, const std::vector<uint8_t>& bytes,
                         const std::vector<std::string>& needles) {
  const std::string path = write_file(name, bytes);
  std::string msg;
  try {
    GgufFile f(path);
    ADD_FAILURE() << name << ": expected a ModelFormatError";
  } catch (const ModelFormatError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find(path), std::string::npos) << name << ": message lacks the path: " << msg;
  for (const std::string& n : needles) {
    EXPECT_NE(msg.find(n), std::string::npos) << name << ": message lacks '" << n << "': " << msg;
  }
  std::remove(path.c_str());
  return msg;
}

Builder minimal() {
  Builder b;
  b.kv_str("general.architecture", "llama");
  b.tensor_f32("a.weight", {4}, {1, 2, 3, 4});
  return b;
}

// ---------------------------------------------------------------- hostile corpus

TEST(GgufHostile, BadMagic) {
  auto bytes = minimal().bytes();
  bytes[0] = 'G';
  bytes[3] = 'X';
  expect_error("bad_magic", bytes, {"magic", "GGUF"});
}

TEST(GgufHostile, EmptyFile) { expect_error("empty", {}, {"not a GGUF file"}); }

TEST(GgufHostile, Version1Rejected) {
  Builder b = minimal();
  b.version = 1;
  expect_error("v1", b.bytes(), {"version 1", "expected version 2 or 3"});
}

TEST(GgufHostile, UnknownVersion) {
  Builder b = minimal();
  b.version = 7;
  expect_error("v7", b.bytes(), {"version 7", "expected 2 or 3"});
}

TEST(GgufHostile, BigEndianVersion) {
  Builder b = minimal();
  b.version = 0x03000000u;
  expect_error("bigendian", b.bytes(), {"big-endian"});
}

TEST(GgufHostile, TruncatedHeader) {
  auto bytes = minimal().bytes();
  bytes.resize(12);
  expect_error("trunc_header", bytes, {"tensor count", "byte offset 8"});
}

TEST(GgufHostile, MetadataCountLargerThanFile) {
  Builder b = minimal();
  b.n_kv_override = uint64_t{1} << 60;
  expect_error("huge_kv", b.bytes(), {"metadata count 1152921504606846976", "could hold"});
}

TEST(GgufHostile, TensorCountLargerThanFile) {
  Builder b = minimal();
  b.n_tensors_override = uint64_t{1} << 59;
  expect_error("huge_tensors", b.bytes(), {"tensor count", "could hold", "byte offset 8"});
}

TEST(GgufHostile, KeyLengthPastEnd) {
  Builder b;
  std::vector<uint8_t> p;
  b.kv_raw("k", 4, {1, 0, 0, 0});
  auto bytes = b.bytes();
  // Key length field sits right after the 24-byte header.
  uint64_t huge = 1000000;
  std::memcpy(bytes.data() + 24, &huge, 8);
  expect_error("key_len", bytes, {"key of metadata entry 0", "length 1000000"});
}

TEST(GgufHostile, StringValuePastEnd) {
  Builder b;
  std::vector<uint8_t> p;
  Builder::put64(p, uint64_t{1} << 62);
  p.push_back('x');
  b.kv_raw("general.name", 8, p);
  expect_error("str_len", b.bytes(), {"metadata key 'general.name'", "length 4611686018427387904"});
}

TEST(GgufHostile, ArrayCountPastEnd) {
  Builder b;
  std::vector<uint8_t> p;
  Builder::put32(p, 5);  // int32 elements
  Builder::put64(p, uint64_t{1} << 40);
  Builder::put32(p, 1);
  b.kv_raw("tokenizer.ggml.token_type", 9, p);
  expect_error("arr_len", b.bytes(),
               {"metadata key 'tokenizer.ggml.token_type'", "1099511627776 int32 elements",
                "cannot fit"});
}

TEST(GgufHostile, StringArrayElementPastEnd) {
  Builder b;
  std::vector<uint8_t> p;
  Builder::put32(p, 8);
  Builder::put64(p, 2);
  Builder::put_str(p, "ok");
  Builder::put64(p, 999999);  // second string's length
  Builder::put64(p, 0);
  b.kv_raw("tokenizer.ggml.tokens", 9, p);
  expect_error("str_arr", b.bytes(), {"'tokenizer.ggml.tokens'[1]", "length 999999"});
}

TEST(GgufHostile, InvalidValueType) {
  Builder b;
  b.kv_raw("weird.key", 13, {0, 0, 0, 0});
  expect_error("bad_vtype", b.bytes(), {"'weird.key'", "invalid value type 13"});
}

TEST(GgufHostile, InvalidArrayElementType) {
  Builder b;
  std::vector<uint8_t> p;
  Builder::put32(p, 0xdeadbeef);
  Builder::put64(p, 1);
  b.kv_raw("arr.key", 9, p);
  expect_error("bad_etype", b.bytes(), {"'arr.key'", "invalid array element type 3735928559"});
}

TEST(GgufHostile, ArraysNestedTooDeep) {
  Builder b;
  std::vector<uint8_t> p;
  for (int k = 0; k < 100; ++k) {
    Builder::put32(p, 9);
    Builder::put64(p, 1);
  }
  Builder::put32(p, 0);
  Builder::put64(p, 0);
  b.kv_raw("deep", 9, p);
  expect_error("deep", b.bytes(), {"'deep'", "nested deeper than 8"});
}

TEST(GgufHostile, DuplicateKey) {
  Builder b;
  b.kv_u32("llama.block_count", 2);
  b.kv_u32("llama.block_count", 3);
  expect_error("dup_key", b.bytes(), {"duplicate metadata key 'llama.block_count'"});
}

TEST(GgufHostile, EmptyKey) {
  Builder b;
  b.kv_u32("", 2);
  expect_error("empty_key", b.bytes(), {"metadata entry 0 has an empty key"});
}

TEST(GgufHostile, AlignmentNotPowerOfTwo) {
  Builder b;
  b.kv_u32("general.alignment", 48);
  expect_error("align48", b.bytes(), {"general.alignment", "power of two", "got 48"});
}

TEST(GgufHostile, AlignmentZero) {
  Builder b;
  b.kv_u32("general.alignment", 0);
  expect_error("align0", b.bytes(), {"general.alignment", "got 0"});
}

TEST(GgufHostile, AlignmentWrongType) {
  Builder b;
  b.kv_str("general.alignment", "32");
  expect_error("align_str", b.bytes(), {"general.alignment", "got a string"});
}

TEST(GgufHostile, TooManyDimensions) {
  Builder b;
  b.tensor_info("t5", {1, 1, 1, 1, 1}, 0, 0);
  expect_error("ndims5", b.bytes(), {"tensor 't5'", "5 dimensions", "expected 1 to 4"});
}

TEST(GgufHostile, ZeroDimensions) {
  Builder b;
  b.tensor_info("t0", {}, 0, 0);
  expect_error("ndims0", b.bytes(), {"tensor 't0'", "0 dimensions"});
}

TEST(GgufHostile, ZeroDimension) {
  Builder b;
  b.tensor_info("z.weight", {4, 0}, 0, 0);
  expect_error("zero_dim", b.bytes(), {"tensor 'z.weight' dimension 1 is 0"});
}

TEST(GgufHostile, NegativeDimension) {
  Builder b;
  b.tensor_info("neg.weight", {static_cast<uint64_t>(-3)}, 0, 0);
  expect_error("neg_dim", b.bytes(), {"tensor 'neg.weight' dimension 0 is -3"});
}

TEST(GgufHostile, AbsurdDimension) {
  Builder b;
  b.tensor_info("big.weight", {uint64_t{1} << 41}, 0, 0);
  expect_error("absurd_dim", b.bytes(), {"tensor 'big.weight' dimension 0", "expected 1 to 2^40"});
}

TEST(GgufHostile, ElementCountOverflow) {
  Builder b;
  b.tensor_info("ovf.weight", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0);
  expect_error("numel_ovf", b.bytes(), {"tensor 'ovf.weight'", "element count overflows"});
}

TEST(GgufHostile, ByteSizeOverflow) {
  Builder b;
  b.tensor_info("bytes.weight", {uint64_t{1} << 40, uint64_t{1} << 22}, 0, 0);  // 2^62 floats
  expect_error("bytes_ovf", b.bytes(), {"tensor 'bytes.weight'", "byte size overflows"});
}

TEST(GgufHostile, UnknownTensorType) {
  Builder b;
  b.tensor_info("q.weight", {32}, 99, 0);
  expect_error("bad_ttype", b.bytes(), {"tensor 'q.weight'", "unknown ggml type 99"});
}

TEST(GgufHostile, RowNotMultipleOfBlock) {
  Builder b;
  b.tensor("q.weight", {33, 2}, 2, std::vector<uint8_t>(64));
  expect_error("block", b.bytes(), {"tensor 'q.weight'", "Q4_0", "ne[0] = 33", "block size 32"});
}

TEST(GgufHostile, MisalignedOffset) {
  Builder b;
  b.tensor_info("m.weight", {4}, 0, 4);
  b.data().resize(64);
  expect_error("misaligned", b.bytes(), {"tensor 'm.weight' data offset 4", "alignment 32"});
}

TEST(GgufHostile, OverlappingTensors) {
  Builder b;
  b.tensor_info("first.weight", {16}, 0, 0);   // bytes [0, 64)
  b.tensor_info("second.weight", {16}, 0, 32); // bytes [32, 96)
  b.data().resize(96);
  expect_error("overlap", b.bytes(), {"'first.weight'", "'second.weight'", "overlap"});
}

TEST(GgufHostile, OffsetOutsideFile) {
  Builder b;
  b.tensor_info("far.weight", {4}, 0, uint64_t{1} << 50);
  b.data().resize(32);
  expect_error("far", b.bytes(), {"tensor 'far.weight'", "1125899906842624", "out of the file"});
}

TEST(GgufHostile, OffsetPlusSizeWraps) {
  Builder b;
  b.tensor_info("wrap.weight", {1024}, 0, ~uint64_t{0} - 31);  // aligned, end wraps past 2^64
  b.data().resize(32);
  expect_error("wrap", b.bytes(), {"tensor 'wrap.weight'"});
}

TEST(GgufHostile, TruncatedData) {
  auto bytes = minimal().bytes();
  bytes.resize(bytes.size() - 3);
  expect_error("trunc_data", bytes, {"tensor 'a.weight'", "truncated"});
}

TEST(GgufHostile, TruncatedInsideTensorInfo) {
  Builder b;
  const std::string name = "blk.0.cut_in_the_middle.weight";
  b.tensor_info(name, {4, 4}, 0, 0);
  auto bytes = b.bytes();
  bytes.resize(24 + 8 + name.size() + 4 + 8);  // header, name, n_dims, first dim
  expect_error("trunc_info", bytes, {"tensor '" + name + "' dimension 1", "needs 8 bytes"});
}

TEST(GgufHostile, DataSectionPastEnd) {
  Builder b;
  b.tensor_info("x.weight", {4}, 0, 0);
  b.pad_data = false;
  expect_error("no_data", b.bytes(), {"truncated", "data section"});
}

TEST(GgufHostile, DuplicateTensorName) {
  Builder b;
  b.tensor_f32("same.weight", {4}, {1, 2, 3, 4});
  b.tensor_f32("same.weight", {4}, {1, 2, 3, 4});
  expect_error("dup_tensor", b.bytes(), {"duplicate tensor name 'same.weight'"});
}

TEST(GgufHostile, EveryTruncationIsAnError) {
  // Cutting a valid file anywhere must give a ModelFormatError (never a crash).
  Builder b;
  b.kv_str("general.architecture", "llama");
  std::vector<uint8_t> arr;
  Builder::put32(arr, 8);
  Builder::put64(arr, 2);
  Builder::put_str(arr, "a");
  Builder::put_str(arr, "bc");
  b.kv_raw("tokenizer.ggml.tokens", 9, arr);
  b.tensor_f32("w", {8}, {1, 2, 3, 4, 5, 6, 7, 8});
  const auto full = b.bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<long>(n));
    const std::string path = write_file("cut", cut);
    EXPECT_THROW(GgufFile f(path), ModelFormatError) << "cut at " << n;
    std::remove(path.c_str());
  }
}

// ---------------------------------------------------------------- valid round trip

TEST(GgufValid, RoundTripAllValueTypes) {
  Builder b;
  b.version = 2;
  b.alignment = 64;
  std::vector<uint8_t> p;
  b.kv_raw("general.alignment", 4, {64, 0, 0, 0});
  b.kv_raw("v.u8", 0, {200});
  b.kv_raw("v.i8", 1, {0xfe});
  b.kv_raw("v.u16", 2, {0x34, 0x12});
  b.kv_raw("v.i16", 3, {0xff, 0xff});
  b.kv_u32("v.u32", 4000000000u);
  p.clear();
  Builder::put32(p, static_cast<uint32_t>(-7));
  b.kv_raw("v.i32", 5, p);
  p.clear();
  float fv = 1.5f;
  Builder::put(p, &fv, 4);
  b.kv_raw("v.f32", 6, p);
  b.kv_raw("v.bool", 7, {1});
  b.kv_str("v.str", std::string("h\xc3\xa9llo\xff", 7));
  p.clear();
  Builder::put64(p, 18000000000000000000ull);
  b.kv_raw("v.u64", 10, p);
  p.clear();
  Builder::put64(p, static_cast<uint64_t>(int64_t{-9000000000}));
  b.kv_raw("v.i64", 11, p);
  p.clear();
  double dv = -2.25;
  Builder::put(p, &dv, 8);
  b.kv_raw("v.f64", 12, p);
  p.clear();  // array of int32
  Builder::put32(p, 5);
  Builder::put64(p, 3);
  for (int32_t x : {-1, 0, 70000}) Builder::put32(p, static_cast<uint32_t>(x));
  b.kv_raw("v.arr_i32", 9, p);
  p.clear();  // array of arrays of strings
  Builder::put32(p, 9);
  Builder::put64(p, 2);
  Builder::put32(p, 8);
  Builder::put64(p, 1);
  Builder::put_str(p, "x");
  Builder::put32(p, 8);
  Builder::put64(p, 0);
  b.kv_raw("v.nested", 9, p);
  std::vector<float> vals(64);
  for (size_t k = 0; k < vals.size(); ++k) vals[k] = static_cast<float>(k) * 0.25f - 3.0f;
  b.tensor_f32("t.f32", {16, 4}, vals);
  std::vector<uint8_t> q8(34 * 2, 0);
  q8[0] = 0x00;
  q8[1] = 0x3c;  // d = 1.0
  q8[2] = 5;
  q8[34] = 0x00;
  q8[35] = 0x40;  // d = 2.0
  q8[36] = 0xfd;  // -3
  b.tensor("t.q8", {32, 2}, 8, q8);

  const std::string path = write_file("valid", b.bytes());
  GgufFile f(path);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  ASSERT_EQ(f.metadata().size(), 15u);
  EXPECT_EQ(f.metadata()[1].first, "v.u8");
  EXPECT_EQ(f.find("v.u8")->u, 200u);
  EXPECT_EQ(f.find("v.i8")->i, -2);
  EXPECT_EQ(f.find("v.u16")->u, 0x1234u);
  EXPECT_EQ(f.find("v.i16")->i, -1);
  EXPECT_EQ(f.find("v.u32")->u, 4000000000u);
  EXPECT_EQ(f.find("v.i32")->i, -7);
  EXPECT_EQ(f.find("v.f32")->f, 1.5);
  EXPECT_EQ(f.find("v.bool")->u, 1u);
  EXPECT_EQ(f.find("v.str")->s, std::string("h\xc3\xa9llo\xff", 7));
  EXPECT_EQ(f.find("v.u64")->u, 18000000000000000000ull);
  EXPECT_EQ(f.find("v.i64")->i, -9000000000);
  EXPECT_EQ(f.find("v.f64")->f, -2.25);
  const GgufValue* arr = f.find("v.arr_i32");
  ASSERT_EQ(arr->type, GgufValueType::ARRAY);
  ASSERT_EQ(arr->count, 3u);
  EXPECT_EQ(arr->array_int(0), -1);
  EXPECT_EQ(arr->array_int(2), 70000);
  const GgufValue* nested = f.find("v.nested");
  ASSERT_EQ(nested->items.size(), 2u);
  EXPECT_EQ(nested->items[0].strings, std::vector<std::string>{"x"});
  EXPECT_EQ(nested->items[1].count, 0u);
  EXPECT_EQ(f.find("missing"), nullptr);

  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensorInfo* t = f.find_tensor("t.f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne, (std::vector<int64_t>{16, 4}));
  EXPECT_EQ(t->shape(), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(t->nbytes, 256u);
  EXPECT_EQ(std::memcmp(f.tensor_data(*t), vals.data(), 256), 0);
  EXPECT_EQ(gguf_dequantize_tensor(f, *t), vals);
  const GgufTensorInfo* q = f.find_tensor("t.q8");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->offset, 256u);
  EXPECT_EQ(q->nbytes, 68u);
  std::vector<float> dq = gguf_dequantize_tensor(f, *q);
  ASSERT_EQ(dq.size(), 64u);
  EXPECT_EQ(dq[0], 5.0f);
  EXPECT_EQ(dq[1], 0.0f);
  EXPECT_EQ(dq[32], -6.0f);
  std::remove(path.c_str());
}

TEST(GgufValid, UnsupportedTypeDequantizeNamesTensor) {
  Builder b;
  b.tensor("iq.weight", {256}, 16, std::vector<uint8_t>(66));  // IQ2_XXS: parsed, not converted
  const std::string path = write_file("iq", b.bytes());
  GgufFile f(path);
  try {
    gguf_dequantize_tensor(f, f.tensors()[0]);
    ADD_FAILURE() << "expected a ModelFormatError";
  } catch (const ModelFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("'iq.weight'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

TEST(GgufValid, MissingFileIsModelFormatError) {
  EXPECT_THROW(GgufFile f("/nonexistent/ember/model.gguf"), ModelFormatError);
}

}  // namespace
}  // namespace ember
