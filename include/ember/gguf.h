// GGUF model files: a validating parser (metadata, tensor infos, mapped tensor data) and the entry
// point that turns a .gguf file into Ember's ModelConfig + HF-named WeightSource.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ember/weights.h"

namespace ember {

// Element types of ggml tensors (the numbering is the file format's).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeInfo {
  const char* name;
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
  bool dequantizable;  // Ember can convert it to fp32
};

// nullptr for a type number the format does not define.
const GgmlTypeInfo* ggml_type_info(uint32_t type);

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8,
  ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);

// One metadata value. Scalars live in the field matching their type; arrays of scalars keep their
// packed little-endian bytes (so a large array costs what it costs in the file), arrays of strings
// are strings, and arrays of arrays are values.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  uint64_t u = 0;   // U8, U16, U32, U64, BOOL (0/1)
  int64_t i = 0;    // I8, I16, I32, I64
  double f = 0.0;   // F32, F64
  std::string s;    // STRING (raw bytes; not checked to be UTF-8)

  GgufValueType elem_type = GgufValueType::U8;  // ARRAY only
  uint64_t count = 0;                           // ARRAY only
  std::vector<uint8_t> raw;                     // ARRAY of scalars
  std::vector<std::string> strings;             // ARRAY of STRING
  std::vector<GgufValue> items;                 // ARRAY of ARRAY

  bool is_integer() const;
  bool is_float() const;
  // Scalar element k of an array of numbers (or bool) as a 64-bit value.
  int64_t array_int(uint64_t k) const;
  uint64_t array_uint(uint64_t k) const;
  double array_float(uint64_t k) const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest-varying (row length)
  uint32_t type = 0;
  uint64_t offset = 0;      // relative to the start of the data section
  uint64_t nbytes = 0;
  int64_t numel = 0;
  // Row-major shape as numpy / Hugging Face see it: ne reversed.
  std::vector<int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
};

class GgufMap;  // the file's read-only memory map (RAII)

// A parsed, fully validated GGUF file. Every check happens in the constructor, which throws
// ModelFormatError naming the file, the byte offset / key / tensor and what was expected.
class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const;

  // In file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // The tensor's nbytes bytes inside the mapping (valid while this object lives).
  const uint8_t* tensor_data(const GgufTensorInfo& t) const;
  // Keeps the mapping alive for views handed out by tensor_data().
  std::shared_ptr<const GgufMap> mapping() const { return map_; }

 private:
  std::string path_;
  std::shared_ptr<const GgufMap> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// Dequantizes a whole tensor to fp32 in GGUF's own element order (no renaming, no permutation).
// Throws ModelFormatError for a type Ember cannot convert.
std::vector<float> gguf_dequantize_tensor(const GgufFile& file, const GgufTensorInfo& t);

// Opens a .gguf model (architectures llama, qwen2, qwen3): config from the metadata, weights under
// Hugging Face names with HF shapes, quantized tensors dequantized to F32 (except, with
// opts.keep_quantized, Q4_0 / Q4_1 / Q8_0 matrices, which stay blocks), the converter's Q/K row
// permutation undone for llama. Validated with validate_weights().
ModelFiles open_gguf_model(const std::string& path, const ModelLoadOptions& opts = {});

}  // namespace ember
