// Turns a validated GGUF file into Ember's ModelConfig and a WeightSource under Hugging Face names,
// so the rest of the engine never sees GGUF naming, ggml dimension order or the converter's Q/K
// row permutation.
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "ember/error.h"
#include "ember/gguf.h"
#include "format/gguf_dequant.h"

namespace ember {
namespace {

constexpr double kPi = 3.14159265358979323846;

// ---------------------------------------------------------------------------------------------
// Metadata access with errors that name the file, the key and the expected type.
class Meta {
 public:
  Meta(const GgufFile& f, std::string arch) : f_(f), arch_(std::move(arch)) {}

  const GgufValue* get(const std::string& key) const { return f_.find(key); }
  const std::string& arch() const { return arch_; }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw ModelFormatError(f_.path() + ": metadata key '" + key + "' " + what);
  }

  // A non-negative integer; a per-layer array is accepted when all its entries agree.
  bool int_value(const std::string& key, int64_t* out) const {
    const GgufValue* v = get(key);
    if (!v) return false;
    if (v->is_integer()) {
      bool is_unsigned = v->type == GgufValueType::U8 || v->type == GgufValueType::U16 ||
                         v->type == GgufValueType::U32 || v->type == GgufValueType::U64;
      if (is_unsigned && v->u > static_cast<uint64_t>(INT64_MAX)) fail(key, "is out of range");
      *out = is_unsigned ? static_cast<int64_t>(v->u) : v->i;
      return true;
    }
    if (v->type == GgufValueType::ARRAY && v->count > 0 && !v->raw.empty() &&
        v->elem_type != GgufValueType::F32 && v->elem_type != GgufValueType::F64 &&
        v->elem_type != GgufValueType::BOOL) {
      int64_t first = v->array_int(0);
      for (uint64_t k = 1; k < v->count; ++k) {
        if (v->array_int(k) != first) {
          fail(key, "varies per layer (" + std::to_string(first) + " vs " +
                        std::to_string(v->array_int(k)) + " at layer " + std::to_string(k) +
                        "); Ember needs the same value for every layer");
        }
      }
      *out = first;
      return true;
    }
    fail(key, std::string("has type ") + gguf_value_type_name(v->type) + ", expected an integer");
  }
  int64_t require_int(const std::string& key, int64_t min_value = 1) const {
    int64_t v = 0;
    if (!int_value(key, &v)) fail(key, "is missing (required for architecture '" + arch_ + "')");
    if (v < min_value) fail(key, "is " + std::to_string(v) + ", expected >= " + std::to_string(min_value));
    return v;
  }
  int64_t optional_int(const std::string& key, int64_t def, int64_t min_value = 0) const {
    int64_t v = 0;
    if (!int_value(key, &v)) return def;
    if (v < min_value) fail(key, "is " + std::to_string(v) + ", expected >= " + std::to_string(min_value));
    return v;
  }
  double optional_float(const std::string& key, double def) const {
    const GgufValue* v = get(key);
    if (!v) return def;
    if (v->type == GgufValueType::F32) {
      // The shortest decimal that round-trips the float: 1e-5 stays 1e-5, as in config.json.
      char buf[32];
      auto res = std::to_chars(buf, buf + sizeof(buf), static_cast<float>(v->f));
      return std::strtod(std::string(buf, res.ptr).c_str(), nullptr);
    }
    if (v->is_float()) return v->f;
    if (v->is_integer()) {
      bool is_unsigned = v->type == GgufValueType::U8 || v->type == GgufValueType::U16 ||
                         v->type == GgufValueType::U32 || v->type == GgufValueType::U64;
      return is_unsigned ? static_cast<double>(v->u) : static_cast<double>(v->i);
    }
    fail(key, std::string("has type ") + gguf_value_type_name(v->type) + ", expected a number");
  }
  std::string optional_string(const std::string& key, const std::string& def) const {
    const GgufValue* v = get(key);
    if (!v) return def;
    if (v->type != GgufValueType::STRING) {
      fail(key, std::string("has type ") + gguf_value_type_name(v->type) + ", expected a string");
    }
    return v->s;
  }

 private:
  const GgufFile& f_;
  std::string arch_;
};

// ---------------------------------------------------------------------------------------------
// GGUF tensor name -> HF name ("" when Ember has no use for the tensor).
std::string hf_name(const std::string& g, int64_t num_layers, const std::string& path) {
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (g.rfind("blk.", 0) != 0) return "";
  size_t p = 4;
  size_t digits_end = p;
  while (digits_end < g.size() && g[digits_end] >= '0' && g[digits_end] <= '9') ++digits_end;
  if (digits_end == p || digits_end - p > 6 || digits_end >= g.size() || g[digits_end] != '.') {
    return "";
  }
  const int64_t layer = std::stoll(g.substr(p, digits_end - p));
  if (layer >= num_layers) {
    throw ModelFormatError(path + ": tensor '" + g + "' belongs to layer " + std::to_string(layer) +
                           " but the model has " + std::to_string(num_layers) + " layers");
  }
  std::string rest = g.substr(digits_end + 1);
  size_t dot = rest.rfind('.');
  if (dot == std::string::npos) return "";
  const std::string base = rest.substr(0, dot);
  const std::string suffix = rest.substr(dot + 1);
  if (suffix != "weight" && suffix != "bias") return "";
  static const std::map<std::string, std::string> kMap = {
      {"attn_norm", "input_layernorm"},
      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},
      {"attn_q_norm", "self_attn.q_norm"},
      {"attn_k_norm", "self_attn.k_norm"},
      {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  auto it = kMap.find(base);
  if (it == kMap.end()) return "";
  return "model.layers." + std::to_string(layer) + "." + it->second + "." + suffix;
}

// Undoes llama.cpp's converter permutation of Q/K rows: within each head of D rows it stored
// HF row s * D/2 + t at position 2t + s (rotate-half -> interleaved pairs).
std::vector<uint8_t> unpermute_rows(const uint8_t* src, int64_t rows, int64_t row_bytes,
                                    int64_t n_heads) {
  const int64_t d = rows / n_heads;
  const int64_t half = d / 2;
  std::vector<uint8_t> out(static_cast<size_t>(rows * row_bytes));
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t t = 0; t < half; ++t) {
        const int64_t hf_row = h * d + s * half + t;
        const int64_t gguf_row = h * d + 2 * t + s;
        std::memcpy(out.data() + hf_row * row_bytes, src + gguf_row * row_bytes,
                    static_cast<size_t>(row_bytes));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
class GgufWeightSource : public WeightSource {
 public:
  explicit GgufWeightSource(std::shared_ptr<const GgufMap> map) : map_(std::move(map)) {}

  const WeightInfo* find(const std::string& name) const override {
    auto it = infos_.find(name);
    return it == infos_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(infos_.size());
    for (const auto& kv : infos_) out.push_back(kv.first);
    return out;
  }

  // Data stays in the mapping (valid while this source lives).
  void add_view(WeightInfo info) { insert(std::move(info)); }
  // Data owned by the source (a moved vector keeps its heap block, so the pointer stays valid).
  void add_owned(WeightInfo info, std::vector<uint8_t> bytes) {
    info.data = bytes.data();
    info.nbytes = bytes.size();
    owned_.push_back(std::move(bytes));
    insert(std::move(info));
  }
  void add_owned(WeightInfo info, std::vector<float> values) {
    info.data = values.data();
    info.nbytes = values.size() * sizeof(float);
    owned_f32_.push_back(std::move(values));
    insert(std::move(info));
  }

 private:
  void insert(WeightInfo info) {
    std::string name = info.name;
    infos_.emplace(std::move(name), std::move(info));
  }
  std::shared_ptr<const GgufMap> map_;
  std::vector<std::vector<uint8_t>> owned_;
  std::vector<std::vector<float>> owned_f32_;
  std::map<std::string, WeightInfo> infos_;
};

// Llama-3 frequency scaling is stored by the converter as a rope_freqs tensor of per-frequency
// divisors. Recover the (factor, low, high) parameters that produce it, or explain why not.
RopeScaling llama3_scaling_from_factors(const std::vector<float>& rf, const ModelConfig& cfg,
                                        int64_t original_ctx, const std::string& path) {
  const int64_t n = cfg.head_dim / 2;
  auto fail = [&](const std::string& why) -> ModelFormatError {
    return ModelFormatError(path + ": tensor 'rope_freqs.weight' (" + why +
                            ") does not describe Llama-3 frequency scaling, the only kind Ember "
                            "supports");
  };
  if (static_cast<int64_t>(rf.size()) != n) {
    throw fail("has " + std::to_string(rf.size()) + " entries, expected head_dim / 2 = " +
               std::to_string(n));
  }
  std::vector<double> x(n);  // original_ctx / wavelength of each frequency
  for (int64_t i = 0; i < n; ++i) {
    double freq = 1.0 / std::pow(cfg.rope_theta, static_cast<double>(2 * i) / cfg.head_dim);
    x[i] = static_cast<double>(original_ctx) * freq / (2.0 * kPi);
  }
  double factor = 1.0;
  for (float v : rf) {
    if (!(v >= 1.0f) || !std::isfinite(v)) throw fail("entry " + std::to_string(v) + " is not >= 1");
    factor = std::max(factor, static_cast<double>(v));
  }
  RopeScaling rs;
  rs.kind = RopeScaling::Kind::Llama3;
  rs.factor = factor;
  rs.original_max_position_embeddings = original_ctx;
  rs.low_freq_factor = 1.0;
  rs.high_freq_factor = 4.0;
  if (factor == 1.0) {
    rs.kind = RopeScaling::Kind::None;
    return rs;
  }
  // smooth = (x - low) / (high - low) for the entries strictly between 1 and factor.
  std::vector<std::pair<double, double>> pts;
  for (int64_t i = 0; i < n; ++i) {
    double v = rf[i];
    if (v > 1.0 + 1e-4 && v < factor * (1.0 - 1e-4)) {
      double smooth = (1.0 / v - 1.0 / factor) / (1.0 - 1.0 / factor);
      pts.emplace_back(x[i], smooth);
    }
  }
  if (pts.size() >= 2) {
    const auto& a = pts.front();
    const auto& b = pts.back();
    double slope = (b.second - a.second) / (b.first - a.first);
    if (slope > 0) {
      double width = 1.0 / slope;  // high - low
      rs.low_freq_factor = a.first - a.second * width;
      rs.high_freq_factor = rs.low_freq_factor + width;
    }
  }
  // Check every entry against the fitted parameters.
  const double low_wl = original_ctx / rs.low_freq_factor;
  const double high_wl = original_ctx / rs.high_freq_factor;
  for (int64_t i = 0; i < n; ++i) {
    double wavelen = original_ctx / x[i];
    double expect;
    if (wavelen < high_wl) {
      expect = 1.0;
    } else if (wavelen > low_wl) {
      expect = factor;
    } else {
      double smooth = (x[i] - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      expect = 1.0 / ((1.0 - smooth) / factor + smooth);
    }
    if (std::fabs(expect - rf[i]) > 1e-3 * expect) {
      throw fail("entry " + std::to_string(i) + " is " + std::to_string(rf[i]) + ", expected " +
                 std::to_string(expect));
    }
  }
  return rs;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
ModelFiles open_gguf_model(const std::string& path, const ModelLoadOptions& opts) {
  auto file = std::make_shared<GgufFile>(path);
  const GgufFile& f = *file;

  const GgufValue* arch_v = f.find("general.architecture");
  if (!arch_v || arch_v->type != GgufValueType::STRING) {
    throw ModelFormatError(path + ": metadata key 'general.architecture' is missing or not a string");
  }
  const std::string arch = arch_v->s;
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3") {
    throw ModelFormatError(path + ": unsupported GGUF architecture '" + arch +
                           "' (supported: llama, qwen2, qwen3)");
  }
  Meta m(f, arch);
  const std::string a = arch + ".";

  ModelConfig cfg;
  cfg.architecture = arch;
  cfg.hidden_size = m.require_int(a + "embedding_length");
  cfg.num_layers = m.require_int(a + "block_count");
  cfg.intermediate_size = m.require_int(a + "feed_forward_length");
  cfg.num_heads = m.require_int(a + "attention.head_count");
  cfg.num_kv_heads = m.optional_int(a + "attention.head_count_kv", cfg.num_heads, 1);
  cfg.max_position_embeddings = m.require_int(a + "context_length");
  cfg.rms_norm_eps = m.optional_float(a + "attention.layer_norm_rms_epsilon", 1e-5);
  cfg.rope_theta = m.optional_float(a + "rope.freq_base", 10000.0);
  cfg.rope_neox = true;  // llama's Q/K are un-permuted below; qwen uses rotate-half natively
  if (cfg.num_heads % cfg.num_kv_heads != 0) {
    throw ModelFormatError(path + ": attention.head_count " + std::to_string(cfg.num_heads) +
                           " is not a multiple of attention.head_count_kv " +
                           std::to_string(cfg.num_kv_heads));
  }
  if (m.get(a + "attention.key_length")) {
    cfg.head_dim = m.require_int(a + "attention.key_length");
  } else {
    if (cfg.hidden_size % cfg.num_heads != 0) {
      throw ModelFormatError(path + ": embedding_length " + std::to_string(cfg.hidden_size) +
                             " is not a multiple of attention.head_count " +
                             std::to_string(cfg.num_heads) + " and attention.key_length is absent");
    }
    cfg.head_dim = cfg.hidden_size / cfg.num_heads;
  }
  const int64_t v_len = m.optional_int(a + "attention.value_length", cfg.head_dim, 1);
  if (v_len != cfg.head_dim) {
    throw ModelFormatError(path + ": attention.value_length " + std::to_string(v_len) +
                           " differs from the key length " + std::to_string(cfg.head_dim) +
                           "; Ember needs them equal");
  }
  const int64_t rope_dim = m.optional_int(a + "rope.dimension_count", cfg.head_dim, 1);
  if (rope_dim != cfg.head_dim) {
    throw ModelFormatError(path + ": rope.dimension_count " + std::to_string(rope_dim) +
                           " differs from the head dimension " + std::to_string(cfg.head_dim) +
                           " (partial rotary embeddings are not supported)");
  }
  if (cfg.head_dim % 2 != 0) {
    throw ModelFormatError(path + ": head dimension " + std::to_string(cfg.head_dim) +
                           " is odd; RoPE needs an even head dimension");
  }

  // ---- RoPE scaling ----
  const std::string scaling = m.optional_string(a + "rope.scaling.type", "none");
  const int64_t orig_ctx = m.optional_int(a + "rope.scaling.original_context_length", 8192, 1);
  if (scaling == "linear") {
    cfg.rope_scaling.kind = RopeScaling::Kind::Linear;
    cfg.rope_scaling.factor = m.optional_float(a + "rope.scaling.factor", 1.0);
  } else if (scaling != "none" && !scaling.empty()) {
    throw ModelFormatError(path + ": metadata key '" + a + "rope.scaling.type' is '" + scaling +
                           "'; Ember supports none, linear and Llama-3 scaling");
  } else if (m.get(a + "rope.scale_linear")) {
    cfg.rope_scaling.kind = RopeScaling::Kind::Linear;
    cfg.rope_scaling.factor = m.optional_float(a + "rope.scale_linear", 1.0);
  }
  if (cfg.rope_scaling.kind == RopeScaling::Kind::Linear && !(cfg.rope_scaling.factor > 0)) {
    throw ModelFormatError(path + ": RoPE linear scaling factor must be > 0");
  }
  if (const GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight")) {
    if (cfg.rope_scaling.kind != RopeScaling::Kind::None) {
      throw ModelFormatError(path + ": both linear RoPE scaling and a rope_freqs.weight tensor");
    }
    cfg.rope_scaling = llama3_scaling_from_factors(gguf_dequantize_tensor(f, *rf), cfg, orig_ctx, path);
  }

  // ---- tokens ----
  int64_t vocab = 0;
  if (!m.int_value(a + "vocab_size", &vocab)) {
    const GgufValue* toks = f.find("tokenizer.ggml.tokens");
    if (toks && toks->type == GgufValueType::ARRAY) {
      vocab = static_cast<int64_t>(toks->count);
    } else if (const GgufTensorInfo* emb = f.find_tensor("token_embd.weight")) {
      vocab = emb->ne.size() == 2 ? emb->ne[1] : 0;
    }
  }
  if (vocab <= 0) {
    throw ModelFormatError(path + ": cannot tell the vocabulary size (no '" + a +
                           "vocab_size', no tokenizer.ggml.tokens, no token_embd.weight)");
  }
  cfg.vocab_size = vocab;
  int64_t id = 0;
  auto token_id = [&](const std::string& key, int64_t* out) {
    if (!m.int_value(key, out)) return false;
    if (*out < 0 || *out >= vocab) {
      m.fail(key, "is " + std::to_string(*out) + ", outside the vocabulary [0, " +
                      std::to_string(vocab) + ")");
    }
    return true;
  };
  if (token_id("tokenizer.ggml.eos_token_id", &id)) cfg.eos_token_ids.push_back(static_cast<int32_t>(id));
  if (token_id("tokenizer.ggml.eot_token_id", &id) &&
      (cfg.eos_token_ids.empty() || cfg.eos_token_ids[0] != id)) {
    cfg.eos_token_ids.push_back(static_cast<int32_t>(id));
  }
  if (token_id("tokenizer.ggml.bos_token_id", &id)) cfg.bos_token_id = static_cast<int32_t>(id);

  // ---- weights ----
  auto src = std::make_shared<GgufWeightSource>(f.mapping());
  bool has_lm_head = false, has_q_bias = false;
  for (const GgufTensorInfo& t : f.tensors()) {
    const std::string name = hf_name(t.name, cfg.num_layers, path);
    if (name.empty()) continue;
    const GgmlTypeInfo* info = ggml_type_info(t.type);
    if (!info->dequantizable) {
      throw ModelFormatError(path + ": tensor '" + t.name + "' has ggml type " + info->name +
                             ", which Ember cannot load yet (supported: F32, F16, BF16, Q4_0, "
                             "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
    }
    if (name == "lm_head.weight") has_lm_head = true;
    if (name == "model.layers.0.self_attn.q_proj.bias") has_q_bias = true;

    WeightInfo w;
    w.name = name;
    w.shape = t.shape();
    w.file = path;
    const bool is_q = name.find(".self_attn.q_proj.") != std::string::npos;
    const bool is_k = name.find(".self_attn.k_proj.") != std::string::npos;
    const bool permuted = arch == "llama" && (is_q || is_k);
    const int64_t heads = is_q ? cfg.num_heads : cfg.num_kv_heads;
    if (permuted && t.ne.size() <= 2) {
      const int64_t rows = t.ne.size() == 2 ? t.ne[1] : t.ne[0];
      if (rows != heads * cfg.head_dim) {
        throw ModelFormatError(path + ": tensor '" + t.name + "' has " + std::to_string(rows) +
                               " rows, expected " + std::to_string(heads) + " heads x " +
                               std::to_string(cfg.head_dim) + " = " +
                               std::to_string(heads * cfg.head_dim));
      }
    }

    const uint8_t* data = f.tensor_data(t);
    const GgmlType type = static_cast<GgmlType>(t.type);
    if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) {
      w.dtype = type == GgmlType::F32 ? DType::F32 : type == GgmlType::F16 ? DType::F16 : DType::BF16;
      const size_t esize = dtype_size(w.dtype);
      if (permuted && t.ne.size() <= 2) {
        const int64_t rows = t.ne.size() == 2 ? t.ne[1] : t.ne[0];
        src->add_owned(std::move(w), unpermute_rows(data, rows, t.nbytes / rows, heads));
      } else if (reinterpret_cast<uintptr_t>(data) % esize != 0) {
        src->add_owned(std::move(w), std::vector<uint8_t>(data, data + t.nbytes));
      } else {
        w.data = data;
        w.nbytes = t.nbytes;
        src->add_view(std::move(w));
      }
      continue;
    }
    // Block formats a backend can read directly stay blocks: a matrix's rows are whole blocks, so
    // the Q/K un-permutation is a copy of rows and everything else a view into the mapping.
    const DType block = type == GgmlType::Q4_0   ? DType::Q4_0
                        : type == GgmlType::Q4_1 ? DType::Q4_1
                        : type == GgmlType::Q8_0 ? DType::Q8_0
                                                 : DType::F32;
    if (opts.keep_quantized && block != DType::F32 && t.ne.size() == 2 &&
        t.ne[0] % dtype_block_elems(block) == 0) {
      w.dtype = block;
      if (permuted) {
        src->add_owned(std::move(w), unpermute_rows(data, t.ne[1], t.nbytes / t.ne[1], heads));
      } else {
        w.data = data;
        w.nbytes = t.nbytes;
        src->add_view(std::move(w));
      }
      continue;
    }
    w.dtype = DType::F32;
    std::vector<float> vals = gguf_dequantize_tensor(f, t);
    if (permuted && t.ne.size() <= 2) {
      const int64_t rows = t.ne.size() == 2 ? t.ne[1] : t.ne[0];
      const int64_t row_bytes = static_cast<int64_t>(vals.size() * sizeof(float)) / rows;
      src->add_owned(std::move(w), unpermute_rows(reinterpret_cast<const uint8_t*>(vals.data()),
                                                  rows, row_bytes, heads));
    } else {
      src->add_owned(std::move(w), std::move(vals));
    }
  }
  cfg.tie_word_embeddings = !has_lm_head;
  cfg.attention_bias = arch == "qwen2" || has_q_bias;
  cfg.qk_norm = arch == "qwen3";
  if (const WeightInfo* q = src->find("model.layers.0.self_attn.q_proj.weight")) cfg.dtype = q->dtype;

  validate_weights(cfg, *src);
  ModelFiles out;
  out.config = cfg;
  out.weights = src;
  return out;
}

}  // namespace ember
