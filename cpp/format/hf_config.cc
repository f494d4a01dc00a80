// Hugging Face config.json / generation_config.json -> ModelConfig, checked field by field so
// that a wrong or unsupported model fails here with the field's name rather than deep in a kernel.
#include <cmath>
#include <limits>
#include <numbers>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ember/config.h"
#include "ember/error.h"

namespace ember {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw ModelFormatError(where + ": " + what);
}

json parse_object(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(where, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(where, std::string("expected a JSON object, found ") + j.type_name());
  return j;
}

const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& where) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(where, std::string("field '") + key + "' = " + v->dump() + " is too large");
    return static_cast<int64_t>(u);
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  fail(where, std::string("field '") + key + "' must be an integer, found " + v->dump());
}

int64_t req_int(const json& j, const char* key, const std::string& where) {
  auto v = opt_int(j, key, where);
  if (!v) fail(where, std::string("missing required field '") + key + "'");
  return *v;
}

std::optional<double> opt_double(const json& j, const char* key, const std::string& where) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) fail(where, std::string("field '") + key + "' must be a number, found " + v->dump());
  return v->get<double>();
}

std::optional<bool> opt_bool(const json& j, const char* key, const std::string& where) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) fail(where, std::string("field '") + key + "' must be true or false, found " + v->dump());
  return v->get<bool>();
}

int32_t token_id(const json& v, const char* key, const std::string& where) {
  int64_t x = -1;
  if (v.is_number_unsigned()) {
    x = v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX) ? -1 : static_cast<int64_t>(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
  }
  if (x < 0 || x > INT32_MAX)
    fail(where, std::string("field '") + key + "' must hold token ids in [0, 2^31), found " + v.dump());
  return static_cast<int32_t>(x);
}

// An int or a list of ints; nullopt when absent or null.
std::optional<std::vector<int32_t>> opt_token_ids(const json& j, const char* key, const std::string& where) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  std::vector<int32_t> ids;
  if (v->is_array()) {
    for (const json& x : *v) ids.push_back(token_id(x, key, where));
  } else {
    ids.push_back(token_id(*v, key, where));
  }
  return ids;
}

struct Family {
  const char* architecture;  // HF class name
  const char* model_type;    // config.json model_type
  const char* family;
};

constexpr Family kFamilies[] = {
    {"LlamaForCausalLM", "llama", "llama"},
    {"MistralForCausalLM", "mistral", "llama"},
    {"Qwen2ForCausalLM", "qwen2", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3", "qwen3"},
};

constexpr const char* kSupported = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

std::string family_of(const json& j, const std::string& where) {
  if (const json* archs = field(j, "architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string())
      fail(where, "field 'architectures' must be a non-empty list of class names, found " + archs->dump());
    const std::string arch = (*archs)[0].get<std::string>();
    for (const Family& f : kFamilies)
      if (arch == f.architecture) return f.family;
    throw ModelFormatError("unsupported architecture '" + arch + "' in " + where + "; supported: " + kSupported);
  }
  if (const json* mt = field(j, "model_type")) {
    const std::string type = mt->is_string() ? mt->get<std::string>() : mt->dump();
    for (const Family& f : kFamilies)
      if (type == f.model_type) return f.family;
    throw ModelFormatError("unsupported architecture (model_type '" + type + "') in " + where + "; supported: " +
                           kSupported);
  }
  fail(where, "neither 'architectures' nor 'model_type' is set, so the architecture is unknown; supported: " +
                  std::string(kSupported));
}

RopeScaling parse_rope_scaling(const json& j, const std::string& where) {
  RopeScaling rs;
  const json* v = field(j, "rope_scaling");
  if (v == nullptr) return rs;
  if (!v->is_object()) fail(where, "field 'rope_scaling' must be an object or null, found " + v->dump());
  const json* type = field(*v, "rope_type");
  if (type == nullptr) type = field(*v, "type");
  if (type == nullptr || !type->is_string())
    fail(where, "field 'rope_scaling' needs a string 'rope_type' (or 'type'), found " + v->dump());
  const std::string t = type->get<std::string>();
  auto need = [&](const char* key) {
    auto x = opt_double(*v, key, where + " (rope_scaling)");
    if (!x) fail(where, std::string("rope_scaling of type '") + t + "' needs field '" + key + "'");
    return *x;
  };
  if (t == "default") return rs;
  if (t == "linear") {
    rs.kind = RopeScaling::Kind::Linear;
    rs.factor = need("factor");
  } else if (t == "llama3") {
    rs.kind = RopeScaling::Kind::Llama3;
    rs.factor = need("factor");
    rs.low_freq_factor = need("low_freq_factor");
    rs.high_freq_factor = need("high_freq_factor");
    auto orig = opt_int(*v, "original_max_position_embeddings", where + " (rope_scaling)");
    if (!orig) fail(where, "rope_scaling of type 'llama3' needs field 'original_max_position_embeddings'");
    rs.original_max_position_embeddings = *orig;
    if (!(rs.low_freq_factor > 0) || !(rs.high_freq_factor > rs.low_freq_factor))
      fail(where, "rope_scaling needs 0 < low_freq_factor < high_freq_factor, found low_freq_factor=" +
                      std::to_string(rs.low_freq_factor) + ", high_freq_factor=" + std::to_string(rs.high_freq_factor));
    if (rs.original_max_position_embeddings <= 0)
      fail(where, "rope_scaling original_max_position_embeddings must be positive, found " +
                      std::to_string(rs.original_max_position_embeddings));
  } else {
    fail(where, "unsupported rope_scaling type '" + t + "'; supported: linear, llama3 (or null)");
  }
  if (!(rs.factor > 0) || !std::isfinite(rs.factor))
    fail(where, "rope_scaling factor must be positive, found " + std::to_string(rs.factor));
  return rs;
}

DType parse_torch_dtype(const json& j, const std::string& where) {
  const char* key = "torch_dtype";
  const json* v = field(j, key);
  if (v == nullptr) {
    key = "dtype";
    v = field(j, key);
  }
  if (v == nullptr) return DType::F32;
  const std::string s = v->is_string() ? v->get<std::string>() : v->dump();
  if (s == "float32") return DType::F32;
  if (s == "float16") return DType::F16;
  if (s == "bfloat16") return DType::BF16;
  fail(where, std::string("field '") + key + "' must be float32, float16 or bfloat16, found '" + s + "'");
}

void require_positive(int64_t v, const char* name, const std::string& where) {
  if (v <= 0) fail(where, std::string("field '") + name + "' must be positive, found " + std::to_string(v));
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& where) {
  const json j = parse_object(json_text, where);
  ModelConfig c;
  c.architecture = family_of(j, where);

  if (auto act = field(j, "hidden_act"); act != nullptr && !(act->is_string() && act->get<std::string>() == "silu"))
    fail(where, "field 'hidden_act' must be \"silu\" for this architecture, found " + act->dump());
  if (opt_bool(j, "mlp_bias", where).value_or(false))
    fail(where, "field 'mlp_bias' is true; MLP biases are not supported");

  c.vocab_size = req_int(j, "vocab_size", where);
  c.hidden_size = req_int(j, "hidden_size", where);
  c.intermediate_size = req_int(j, "intermediate_size", where);
  c.num_layers = req_int(j, "num_hidden_layers", where);
  c.num_heads = req_int(j, "num_attention_heads", where);
  require_positive(c.vocab_size, "vocab_size", where);
  require_positive(c.hidden_size, "hidden_size", where);
  require_positive(c.intermediate_size, "intermediate_size", where);
  require_positive(c.num_layers, "num_hidden_layers", where);
  require_positive(c.num_heads, "num_attention_heads", where);

  c.num_kv_heads = opt_int(j, "num_key_value_heads", where).value_or(c.num_heads);
  require_positive(c.num_kv_heads, "num_key_value_heads", where);
  if (c.num_heads % c.num_kv_heads != 0)
    fail(where, "num_attention_heads (" + std::to_string(c.num_heads) + ") must be a multiple of num_key_value_heads (" +
                    std::to_string(c.num_kv_heads) + ")");

  if (auto hd = opt_int(j, "head_dim", where)) {
    c.head_dim = *hd;
    require_positive(c.head_dim, "head_dim", where);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      fail(where, "head_dim is not set and hidden_size (" + std::to_string(c.hidden_size) +
                      ") is not a multiple of num_attention_heads (" + std::to_string(c.num_heads) + ")");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) fail(where, "head_dim must be even for RoPE, found " + std::to_string(c.head_dim));

  c.max_position_embeddings = opt_int(j, "max_position_embeddings", where).value_or(c.max_position_embeddings);
  require_positive(c.max_position_embeddings, "max_position_embeddings", where);
  c.rms_norm_eps = opt_double(j, "rms_norm_eps", where).value_or(c.rms_norm_eps);
  if (!(c.rms_norm_eps > 0)) fail(where, "field 'rms_norm_eps' must be positive, found " + std::to_string(c.rms_norm_eps));
  c.rope_theta = opt_double(j, "rope_theta", where).value_or(10000.0);
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail(where, "field 'rope_theta' must be positive, found " + std::to_string(c.rope_theta));
  c.rope_scaling = parse_rope_scaling(j, where);
  c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", where).value_or(false);
  c.attention_bias = opt_bool(j, "attention_bias", where).value_or(false);
  if (c.architecture == "qwen2") c.attention_bias = true;  // Qwen2 always has q/k/v biases
  c.qk_norm = c.architecture == "qwen3";
  c.dtype = parse_torch_dtype(j, where);
  if (auto bos = opt_token_ids(j, "bos_token_id", where)) {
    if (bos->size() != 1) fail(where, "field 'bos_token_id' must be a single token id, found a list");
    c.bos_token_id = (*bos)[0];
  }
  if (auto eos = opt_token_ids(j, "eos_token_id", where)) c.eos_token_ids = *eos;
  return c;
}

void apply_generation_config(const std::string& json_text, const std::string& where, ModelConfig* cfg) {
  const json j = parse_object(json_text, where);
  if (auto eos = opt_token_ids(j, "eos_token_id", where)) cfg->eos_token_ids = *eos;
  if (auto bos = opt_token_ids(j, "bos_token_id", where)) {
    if (bos->size() != 1) fail(where, "field 'bos_token_id' must be a single token id, found a list");
    cfg->bos_token_id = (*bos)[0];
  }
}

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  const RopeScaling& rs = cfg.rope_scaling;
  std::vector<float> out(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(cfg.rope_theta, static_cast<double>(2 * i) / static_cast<double>(cfg.head_dim));
    if (rs.kind == RopeScaling::Kind::Linear) {
      f /= rs.factor;
    } else if (rs.kind == RopeScaling::Kind::Llama3) {
      // Long wavelengths are slowed by `factor`, short ones kept, and the band between the two
      // wavelength thresholds blended linearly in (old_context / wavelength).
      const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
      const double low_freq_wavelen = old_ctx / rs.low_freq_factor;
      const double high_freq_wavelen = old_ctx / rs.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    out[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return out;
}

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden_size, q = q_size(), kv = kv_size(), f = intermediate_size;
  int64_t layer = 2 * h                   // input and post-attention norms
                  + h * q + 2 * h * kv    // q, k, v projections
                  + q * h                 // o projection
                  + 3 * h * f;            // gate, up, down
  if (attention_bias) layer += q + 2 * kv;
  if (qk_norm) layer += 2 * head_dim;
  int64_t total = vocab_size * h + num_layers * layer + h;
  if (!tie_word_embeddings) total += vocab_size * h;
  return total;
}

}  // namespace ember
