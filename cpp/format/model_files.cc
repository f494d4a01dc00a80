// From a path to a validated model: reads config.json (+ generation_config.json) and the weights,
// and checks that every tensor the config implies is present with the right shape and dtype.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ember/config.h"
#include "ember/error.h"
#include "ember/tensor.h"
#include "ember/weights.h"
#include "format/weight_source_info.h"

#if __has_include("ember/gguf.h")
#include "ember/gguf.h"
#define EMBER_HAVE_GGUF 1
#else
#define EMBER_HAVE_GGUF 0
#endif

namespace ember {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw ModelFormatError("cannot read '" + p.string() + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Block formats only come from GGUF files, whose reader names the ggml type in its own errors.
bool is_weight_dtype(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || dtype_is_quantized(t);
}

bool holds(const WeightSource& src, const std::string& name) {
  return src.find(name) != nullptr || !unusable_dtype(src, name).empty();
}

}  // namespace

const WeightInfo& WeightSource::require(const std::string& name, const std::vector<int64_t>& shape) const {
  const std::string bad_dtype = unusable_dtype(*this, name);
  if (!bad_dtype.empty())
    throw ModelFormatError("tensor '" + name + "' in '" + unusable_dtype_file(*this, name) + "' has dtype " + bad_dtype +
                           "; weights must be F32, F16 or BF16");
  const WeightInfo* w = find(name);
  if (w == nullptr) {
    const std::string origin = weight_source_origin(*this);
    throw ModelFormatError("missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")" +
                           (origin.empty() ? std::string() : " in '" + origin + "'"));
  }
  if (!is_weight_dtype(w->dtype))
    throw ModelFormatError("tensor '" + name + "' in '" + w->file + "' has dtype " + dtype_name(w->dtype) +
                           "; weights must be F32, F16 or BF16");
  if (w->shape != shape)
    throw ModelFormatError("tensor '" + name + "' in '" + w->file + "' has shape " + shape_str(w->shape) +
                           ", expected " + shape_str(shape));
  return *w;
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& cfg) {
  const int64_t v = cfg.vocab_size, h = cfg.hidden_size, f = cfg.intermediate_size;
  const int64_t q = cfg.q_size(), kv = cfg.kv_size(), d = cfg.head_dim;
  std::vector<ExpectedTensor> out;
  out.push_back({"model.embed_tokens.weight", {v, h}});
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (cfg.attention_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q}});
      out.push_back({p + "self_attn.k_proj.bias", {kv}});
      out.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (cfg.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {d}});
      out.push_back({p + "self_attn.k_norm.weight", {d}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    out.push_back({p + "mlp.gate_proj.weight", {f, h}});
    out.push_back({p + "mlp.up_proj.weight", {f, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, f}});
  }
  out.push_back({"model.norm.weight", {h}});
  // Tied checkpoints sometimes still carry lm_head; accept it, but it must then have the right shape.
  out.push_back({"lm_head.weight", {v, h}, cfg.tie_word_embeddings});
  return out;
}

void validate_weights(const ModelConfig& cfg, const WeightSource& src) {
  for (const ExpectedTensor& e : expected_tensors(cfg)) {
    if (e.optional && !holds(src, e.name)) continue;
    src.require(e.name, e.shape);
  }
}

ModelFiles open_model(const std::string& path, const ModelLoadOptions& opts) {
  std::error_code ec;
  const fs::path p(path);
  const fs::file_status st = fs::status(p, ec);
  if (ec || !fs::exists(st)) throw ModelFormatError("model path '" + path + "' does not exist");

  if (fs::is_regular_file(st)) {
    if (p.extension() == ".gguf") {
#if EMBER_HAVE_GGUF
      ModelFiles files = open_gguf_model(path, opts);
      validate_weights(files.config, *files.weights);
      return files;
#else
      throw ModelFormatError("'" + path + "' is a GGUF file, but GGUF support is not built into this Ember");
#endif
    }
    throw ModelFormatError("model path '" + path +
                           "' is a file but not a .gguf file; expected a .gguf file or a Hugging Face model directory "
                           "(config.json + *.safetensors)");
  }
  if (!fs::is_directory(st))
    throw ModelFormatError("model path '" + path + "' is neither a directory nor a .gguf file");

  const fs::path config_path = p / "config.json";
  if (!fs::is_regular_file(config_path))
    throw ModelFormatError("model directory '" + path + "' has no config.json");
  ModelFiles files;
  files.config = parse_hf_config(read_text(config_path), config_path.string());
  const fs::path gen_path = p / "generation_config.json";
  if (fs::is_regular_file(gen_path)) apply_generation_config(read_text(gen_path), gen_path.string(), &files.config);
  files.weights = open_safetensors_dir(path);
  validate_weights(files.config, *files.weights);
  return files;
}

}  // namespace ember
