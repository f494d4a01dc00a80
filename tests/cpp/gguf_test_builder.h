// A byte-level GGUF writer for the C++ tests: every field can be set to anything, including
// values a real writer would never produce, so hostile files are easy to build.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <optional>
#include <string>
#include <vector>

namespace ember {
namespace gguf_test {

// Writes GGUF files byte by byte so that tests can break any field.
class Builder {
 public:
  uint32_t version = 3;
  std::optional<uint64_t> n_kv_override, n_tensors_override;
  uint64_t alignment = 32;
  bool pad_data = true;

  // ---- raw encoders ----
  static void put32(std::vector<uint8_t>& b, uint32_t v) { put(b, &v, 4); }
  static void put64(std::vector<uint8_t>& b, uint64_t v) { put(b, &v, 8); }
  static void put(std::vector<uint8_t>& b, const void* p, size_t n) {
    const uint8_t* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  static void put_str(std::vector<uint8_t>& b, const std::string& s) {
    put64(b, s.size());
    put(b, s.data(), s.size());
  }

  // ---- metadata ----
  void kv_raw(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
    put_str(kv_, key);
    put32(kv_, type);
    kv_.insert(kv_.end(), payload.begin(), payload.end());
    ++n_kv_;
  }
  void kv_u32(const std::string& key, uint32_t v) {
    std::vector<uint8_t> p;
    put32(p, v);
    kv_raw(key, 4, p);
  }
  void kv_f32(const std::string& key, float v) {
    std::vector<uint8_t> p;
    put(p, &v, 4);
    kv_raw(key, 6, p);
  }
  void kv_str(const std::string& key, const std::string& s) {
    std::vector<uint8_t> p;
    put_str(p, s);
    kv_raw(key, 8, p);
  }

  // ---- tensors ----
  void tensor_info(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
                   uint64_t offset) {
    put_str(ti_, name);
    put32(ti_, static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) put64(ti_, d);
    put32(ti_, type);
    put64(ti_, offset);
    ++n_tensors_;
  }
  // Appends data at the next aligned offset and the matching info.
  void tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
              const std::vector<uint8_t>& bytes) {
    while (data_.size() % alignment) data_.push_back(0);
    tensor_info(name, ne, type, data_.size());
    data_.insert(data_.end(), bytes.begin(), bytes.end());
  }
  void tensor_f32(const std::string& name, const std::vector<uint64_t>& ne,
                  const std::vector<float>& vals) {
    std::vector<uint8_t> b(vals.size() * 4);
    std::memcpy(b.data(), vals.data(), b.size());
    tensor(name, ne, 0, b);
  }
  std::vector<uint8_t>& data() { return data_; }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    put(out, "GGUF", 4);
    put32(out, version);
    put64(out, n_tensors_override.value_or(n_tensors_));
    put64(out, n_kv_override.value_or(n_kv_));
    out.insert(out.end(), kv_.begin(), kv_.end());
    out.insert(out.end(), ti_.begin(), ti_.end());
    if (pad_data) {
      while (out.size() % alignment) out.push_back(0);
    }
    out.insert(out.end(), data_.begin(), data_.end());
    return out;
  }

 private:
  std::vector<uint8_t> kv_, ti_, data_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

inline std::string write_file(const std::string& name, const std::vector<uint8_t>& bytes) {
  std::string path = ::testing::TempDir() + "ember_gguf_" + std::to_string(::getpid()) + "_" + name +
                     ".gguf";
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

}  // namespace gguf_test
}  // namespace ember
