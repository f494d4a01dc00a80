// Test helpers that write tiny model files (safetensors bytes, config.json, whole model
// directories) into a temporary directory that is removed when the test ends.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ember/config.h"
#include "ember/error.h"
#include "ember/weights.h"

namespace ember::test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ember_test_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// Length prefix + header text + data, exactly as given (for malformed files).
inline std::string raw_safetensors(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

struct TestTensor {
  std::string name;
  std::string dtype;  // safetensors dtype string
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian data
};

inline size_t test_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  return 1;
}

inline std::string f32_bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// A tensor of `dtype` and `shape` whose bytes count up from `seed` (so contents are checkable).
inline TestTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape, const std::string& dtype = "F32",
                              uint8_t seed = 0) {
  size_t n = test_dtype_size(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  std::string bytes(n, '\0');
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(static_cast<uint8_t>(seed + i));
  return {name, dtype, shape, bytes};
}

// A well-formed file: tensors laid out in order, header padded with spaces to 8 bytes.
inline std::string valid_safetensors(const std::vector<TestTensor>& tensors, const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const TestTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  return raw_safetensors(text, data);
}

inline void write_safetensors(const std::string& path, const std::vector<TestTensor>& tensors) {
  write_bytes(path, valid_safetensors(tensors));
}

// Every tensor a config expects, as F32 with the expected shapes.
inline std::vector<TestTensor> tensors_for(const ModelConfig& cfg, bool include_optional = false) {
  std::vector<TestTensor> out;
  uint8_t seed = 0;
  for (const ExpectedTensor& e : expected_tensors(cfg))
    if (!e.optional || include_optional) out.push_back(make_tensor(e.name, e.shape, "F32", seed++));
  return out;
}

// Expects `fn` to throw ModelFormatError whose message contains every one of `parts`.
template <typename Fn>
void expect_format_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected ModelFormatError mentioning '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const ModelFormatError& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
  }
}

}  // namespace ember::test
