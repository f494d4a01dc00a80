// Where weights come from: a read-only map from Hugging Face tensor names to host data. The
// safetensors reader maps files; the GGUF reader dequantizes and renames into the same names.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ember/config.h"
#include "ember/dtype.h"

namespace ember {

struct WeightInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // host memory valid for the WeightSource's lifetime
  size_t nbytes = 0;
  std::string file;            // for errors
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const WeightInfo* find(const std::string& name) const = 0;
  virtual std::vector<std::string> names() const = 0;
  // Present with exactly this shape, or a ModelFormatError naming the tensor, file and shapes.
  const WeightInfo& require(const std::string& name, const std::vector<int64_t>& shape) const;
};

// One .safetensors file, memory-mapped and validated against the format's rules.
std::unique_ptr<WeightSource> open_safetensors_file(const std::string& path);

// A Hugging Face model directory: model.safetensors, or shards listed in
// model.safetensors.index.json, or every *.safetensors file in it.
std::unique_ptr<WeightSource> open_safetensors_dir(const std::string& dir);

// Every tensor the config needs, with its expected shape (HF names).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool optional = false;
};
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& cfg);

// Checks presence and shape of every tensor the config needs; throws ModelFormatError.
void validate_weights(const ModelConfig& cfg, const WeightSource& src);

// A loaded model: its config and weights, whatever the file format.
struct ModelFiles {
  ModelConfig config;
  std::shared_ptr<WeightSource> weights;
};

// How a model's weights are handed over.
struct ModelLoadOptions {
  // GGUF: keep Q4_0 / Q4_1 / Q8_0 matrices in their block format (dtypes Q4_0, Q4_1, Q8_0) for
  // backends that read blocks directly; false dequantizes every quantized tensor to F32.
  bool keep_quantized = false;
};

// Opens a model directory (config.json + safetensors) or a .gguf file and validates it.
ModelFiles open_model(const std::string& path, const ModelLoadOptions& opts = {});

}  // namespace ember
