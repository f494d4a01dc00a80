// The safetensors reader against well-formed files and a corpus of hostile ones written by the
// test itself: each malformed file must fail with an error naming the file, tensor and problem.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ember/error.h"
#include "ember/weights.h"
#include "model_file_writer.h"

namespace ember {
namespace {

using test::expect_format_error;
using test::make_tensor;
using test::raw_safetensors;
using test::TempDir;
using test::write_bytes;

// One F32 tensor "w" of shape [2] at offsets [0, 8], with `entry` overriding fields.
std::string one_tensor_header(const std::string& entry) { return R"({"w":)" + entry + "}"; }

class MalformedSafetensors : public ::testing::Test {
 protected:
  // Writes `bytes` and expects opening it to fail with a message naming the file and `parts`.
  void expect_bad(const std::string& bytes, std::vector<std::string> parts) {
    const std::string path = dir_.file("bad.safetensors");
    write_bytes(path, bytes);
    parts.push_back(path);
    expect_format_error([&] { open_safetensors_file(path); }, parts);
  }
  TempDir dir_;
  const std::string data8_ = std::string(8, '\x01');
};

TEST_F(MalformedSafetensors, FileShorterThanEightBytes) {
  expect_bad("abc", {"3 bytes", "at least 8"});
  expect_bad("", {"0 bytes", "at least 8"});
}

TEST_F(MalformedSafetensors, TruncatedFile) {
  std::string good = test::valid_safetensors({make_tensor("a", {4}), make_tensor("b", {4})});
  expect_bad(good.substr(0, good.size() - 3), {"tensor 'b'", "past the end of the data section"});
}

TEST_F(MalformedSafetensors, HeaderLengthPastEnd) {
  expect_bad(test::u64_le(1000) + "{}", {"header length 1000", "past the end", "file size 10"});
}

TEST_F(MalformedSafetensors, HeaderLengthOverLimit) {
  expect_bad(test::u64_le(100000001) + "{}", {"header length 100000001", "limit of 100000000"});
  expect_bad(test::u64_le(~0ull) + "{}", {"exceeds the limit"});
}

TEST_F(MalformedSafetensors, InvalidJson) {
  expect_bad(raw_safetensors(R"({"w": {"dtype": "F32",)", data8_), {"not valid JSON"});
}

TEST_F(MalformedSafetensors, JsonNotAnObject) {
  expect_bad(raw_safetensors("[1, 2, 3]", ""), {"must be a JSON object", "array"});
}

TEST_F(MalformedSafetensors, UnknownDtype) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F12","shape":[2],"data_offsets":[0,8]})"), data8_),
             {"tensor 'w'", "unknown dtype 'F12'", "BF16"});
}

TEST_F(MalformedSafetensors, ShapeDoesNotMatchByteLength) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), data8_),
             {"tensor 'w'", "span 8 bytes", "shape [3] needs 12 bytes"});
}

TEST_F(MalformedSafetensors, OverlappingOffsets) {
  std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  expect_bad(raw_safetensors(h, data8_), {"tensor 'b'", "overlap tensor 'a'"});
}

TEST_F(MalformedSafetensors, GapBetweenOffsets) {
  std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  expect_bad(raw_safetensors(h, std::string(12, 'x')), {"tensor 'b'", "gap of 4 bytes", "'a'"});
}

TEST_F(MalformedSafetensors, TrailingBytes) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"),
                             data8_ + "junk"),
             {"4 trailing bytes", "data section is 12 bytes"});
}

TEST_F(MalformedSafetensors, OffsetsNotStartingAtZero) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), data8_),
             {"tensor 'w'", "must start at offset 0", "begins at 4"});
}

TEST_F(MalformedSafetensors, NegativeShape) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), data8_),
             {"tensor 'w'", "shape[0] must be a non-negative integer", "-2"});
}

TEST_F(MalformedSafetensors, NonIntegerShape) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"), data8_),
             {"tensor 'w'", "shape[0] must be a non-negative integer", "2.5"});
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), data8_),
             {"shape[0] must be a non-negative integer"});
}

TEST_F(MalformedSafetensors, EndBeforeBegin) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), data8_),
             {"tensor 'w'", "[8, 0]", "end before they begin"});
}

TEST_F(MalformedSafetensors, NegativeOffset) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), data8_),
             {"data_offsets[0] must be a non-negative integer"});
}

TEST_F(MalformedSafetensors, MissingField) {
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[2]})"), data8_),
             {"tensor 'w'", "lacks 'data_offsets'"});
  expect_bad(raw_safetensors(one_tensor_header(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), data8_),
             {"data_offsets must be [begin, end]"});
  expect_bad(raw_safetensors(one_tensor_header("7"), data8_), {"tensor 'w'", "must be an object"});
}

TEST_F(MalformedSafetensors, DuplicateTensorInHeader) {
  std::string h = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  expect_bad(raw_safetensors(h, data8_), {"'w' more than once"});
}

TEST_F(MalformedSafetensors, ShapeOverflow) {
  expect_bad(raw_safetensors(one_tensor_header(
                                 R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"),
                             data8_),
             {"tensor 'w'", "overflows"});
}

TEST_F(MalformedSafetensors, BadMetadata) {
  expect_bad(raw_safetensors(R"({"__metadata__":{"format":1}})", ""), {"__metadata__", "'format'", "string"});
  expect_bad(raw_safetensors(R"({"__metadata__":[1]})", ""), {"__metadata__ must be an object"});
}

TEST(Safetensors, OpensValidFile) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  auto a = make_tensor("a.weight", {2, 3}, "F32", 10);
  auto b = make_tensor("b.weight", {4}, "BF16", 50);
  auto c = make_tensor("c.weight", {3, 1}, "F16", 90);
  auto empty = make_tensor("empty", {0, 5}, "F32");
  auto ids = make_tensor("ids", {2}, "I32", 7);
  write_bytes(path, test::valid_safetensors({a, b, empty, c, ids}, {{"format", "pt"}}));

  auto src = open_safetensors_file(path);
  EXPECT_EQ(src->names(), (std::vector<std::string>{"a.weight", "b.weight", "c.weight", "empty", "ids"}));
  const WeightInfo* w = src->find("a.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::F32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->nbytes, 24u);
  EXPECT_EQ(w->file, path);
  EXPECT_EQ(std::memcmp(w->data, a.bytes.data(), 24), 0);
  const WeightInfo* wb = src->find("b.weight");
  ASSERT_NE(wb, nullptr);
  EXPECT_EQ(wb->dtype, DType::BF16);
  EXPECT_EQ(std::memcmp(wb->data, b.bytes.data(), 8), 0);
  const WeightInfo* wc = src->find("c.weight");
  ASSERT_NE(wc, nullptr);
  EXPECT_EQ(wc->dtype, DType::F16);
  EXPECT_EQ(std::memcmp(wc->data, c.bytes.data(), 6), 0);
  EXPECT_EQ(src->find("empty")->nbytes, 0u);
  EXPECT_EQ(src->find("ids")->dtype, DType::I32);
  EXPECT_EQ(src->find("nope"), nullptr);

  EXPECT_EQ(&src->require("a.weight", {2, 3}), w);
  expect_format_error([&] { src->require("a.weight", {3, 2}); }, {"a.weight", path, "[2, 3]", "expected [3, 2]"});
  expect_format_error([&] { src->require("nope", {1}); }, {"missing tensor 'nope'", "[1]", path});
  expect_format_error([&] { src->require("ids", {2}); }, {"'ids'", "dtype I32", "F32, F16 or BF16"});
}

TEST(Safetensors, EmptyHeaderIsValid) {
  TempDir dir;
  write_bytes(dir.file("e.safetensors"), raw_safetensors("{}      ", ""));
  EXPECT_TRUE(open_safetensors_file(dir.file("e.safetensors"))->names().empty());
}

TEST(Safetensors, KnownButUnsupportedDtypeIsReportedByName) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  test::write_safetensors(path, {make_tensor("x", {2}, "F64"), make_tensor("y", {3}, "F8_E4M3"),
                                 make_tensor("z", {1}, "F32")});
  auto src = open_safetensors_file(path);
  EXPECT_EQ(src->find("x"), nullptr);
  EXPECT_EQ(src->names(), std::vector<std::string>{"z"});
  expect_format_error([&] { src->require("x", {2}); }, {"tensor 'x'", path, "dtype F64", "F32, F16 or BF16"});
  expect_format_error([&] { src->require("y", {3}); }, {"dtype F8_E4M3"});
}

TEST(Safetensors, NonexistentFile) {
  expect_format_error([] { open_safetensors_file("/nonexistent/dir/m.safetensors"); },
                      {"/nonexistent/dir/m.safetensors"});
}

TEST(SafetensorsDir, ShardedWithIndex) {
  TempDir dir;
  test::write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                          {make_tensor("a", {2}), make_tensor("b", {3}, "F16")});
  test::write_safetensors(dir.file("model-00002-of-00002.safetensors"), {make_tensor("c", {4}, "BF16", 3)});
  nlohmann::json index = {{"metadata", {{"total_size", 24}}},
                          {"weight_map",
                           {{"a", "model-00001-of-00002.safetensors"},
                            {"b", "model-00001-of-00002.safetensors"},
                            {"c", "model-00002-of-00002.safetensors"}}}};
  write_bytes(dir.file("model.safetensors.index.json"), index.dump());
  // A stray file the index does not mention must be ignored.
  write_bytes(dir.file("stray.safetensors"), "garbage");
  auto src = open_safetensors_dir(dir.path().string());
  EXPECT_EQ(src->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(src->find("c")->file, dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(static_cast<const uint8_t*>(src->find("c")->data)[0], 3);
}

TEST(SafetensorsDir, IndexMapsToShardLackingTensor) {
  TempDir dir;
  test::write_safetensors(dir.file("s1.safetensors"), {make_tensor("a", {2})});
  test::write_safetensors(dir.file("s2.safetensors"), {make_tensor("b", {2})});
  nlohmann::json index = {{"weight_map", {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}}}};
  write_bytes(dir.file("model.safetensors.index.json"), index.dump());
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); },
                      {"model.safetensors.index.json", "'b'", "s1.safetensors", "does not contain it"});
}

TEST(SafetensorsDir, IndexNamesMissingShard) {
  TempDir dir;
  nlohmann::json index = {{"weight_map", {{"a", "gone.safetensors"}}}};
  write_bytes(dir.file("model.safetensors.index.json"), index.dump());
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); }, {"gone.safetensors", "does not exist"});
  write_bytes(dir.file("model.safetensors.index.json"), R"({"weight_map": {"a": "../x.safetensors"}})");
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); }, {"inside the model directory"});
  write_bytes(dir.file("model.safetensors.index.json"), R"({"metadata": {}})");
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); }, {"'weight_map'"});
}

TEST(SafetensorsDir, DuplicateNamesAcrossShards) {
  TempDir dir;
  test::write_safetensors(dir.file("part1.safetensors"), {make_tensor("a", {2}), make_tensor("dup", {1})});
  test::write_safetensors(dir.file("part2.safetensors"), {make_tensor("dup", {1})});
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); },
                      {"'dup'", "part1.safetensors", "part2.safetensors"});
}

TEST(SafetensorsDir, GlobsSortedFilesAndPrefersModelSafetensors) {
  TempDir dir;
  test::write_safetensors(dir.file("b.safetensors"), {make_tensor("y", {1})});
  test::write_safetensors(dir.file("a.safetensors"), {make_tensor("x", {1})});
  auto src = open_safetensors_dir(dir.path().string());
  EXPECT_EQ(src->names(), (std::vector<std::string>{"x", "y"}));
  test::write_safetensors(dir.file("model.safetensors"), {make_tensor("only", {1})});
  EXPECT_EQ(open_safetensors_dir(dir.path().string())->names(), std::vector<std::string>{"only"});
}

TEST(SafetensorsDir, NoWeightsNamesDirectory) {
  TempDir dir;
  write_bytes(dir.file("config.json"), "{}");
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); },
                      {"no safetensors weights", dir.path().string()});
  expect_format_error([&] { open_safetensors_dir(dir.file("missing")); }, {"missing", "not a directory"});
}

TEST(SafetensorsDir, MalformedShardNamesShard) {
  TempDir dir;
  test::write_safetensors(dir.file("a.safetensors"), {make_tensor("x", {1})});
  write_bytes(dir.file("b.safetensors"), "short");
  expect_format_error([&] { open_safetensors_dir(dir.path().string()); }, {dir.file("b.safetensors"), "at least 8"});
}

}  // namespace
}  // namespace ember
