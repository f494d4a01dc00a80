// The named shapes follow the published configs of each model; weights are small uniform values
// (norms 1, biases 0) so that activations stay finite through every layer.
#include "model/random_model.h"

#include <map>
#include <sstream>

#include "ember/error.h"

namespace ember {
namespace {

ModelConfig llama_like(int64_t vocab, int64_t hidden, int64_t layers, int64_t heads, int64_t kv, int64_t ffn) {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.head_dim = hidden / heads;
  c.intermediate_size = ffn;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 32768;
  c.eos_token_ids = {0};
  return c;
}

ModelConfig qwen3(int64_t hidden, int64_t layers, int64_t heads, int64_t ffn) {
  ModelConfig c = llama_like(151936, hidden, layers, heads, 8, ffn);
  c.architecture = "qwen3";
  c.head_dim = 128;
  c.qk_norm = true;
  c.rope_theta = 1000000.0;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 40960;
  return c;
}

ModelConfig named_shape(const std::string& name) {
  if (name == "smollm2-135m") {
    ModelConfig c = llama_like(49152, 576, 30, 9, 3, 1536);
    c.tie_word_embeddings = true;
    c.rope_theta = 100000.0;
    c.max_position_embeddings = 8192;
    return c;
  }
  if (name == "llama3-8b") {
    ModelConfig c = llama_like(128256, 4096, 32, 32, 8, 14336);
    c.rope_theta = 500000.0;
    c.rope_scaling.kind = RopeScaling::Kind::Llama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.max_position_embeddings = 131072;
    return c;
  }
  if (name == "qwen3-8b") return qwen3(4096, 36, 32, 12288);
  if (name == "qwen3-14b") return qwen3(5120, 40, 40, 17408);
  if (name == "qwen3-32b") return qwen3(5120, 64, 64, 25600);
  if (name.rfind("custom:", 0) == 0) {
    std::map<std::string, int64_t> kv;
    std::stringstream ss(name.substr(7));
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto eq = item.find('=');
      if (eq == std::string::npos) throw InvalidArgument("random model: '" + item + "' is not key=value in '" + name + "'");
      try {
        kv[item.substr(0, eq)] = std::stoll(item.substr(eq + 1));
      } catch (const std::exception&) {
        throw InvalidArgument("random model: '" + item + "' needs an integer value");
      }
    }
    for (const char* k : {"vocab", "hidden", "layers", "heads", "ffn"})
      if (!kv.count(k) || kv[k] < 1) throw InvalidArgument(std::string("random model: custom shape needs ") + k + "=N (N >= 1)");
    ModelConfig c = llama_like(kv["vocab"], kv["hidden"], kv["layers"], kv["heads"], kv.count("kv_heads") ? kv["kv_heads"] : kv["heads"], kv["ffn"]);
    if (kv.count("head_dim")) c.head_dim = kv["head_dim"];
    if (kv.count("qk_norm") && kv["qk_norm"]) { c.qk_norm = true; c.architecture = "qwen3"; }
    if (kv.count("tied")) c.tie_word_embeddings = kv["tied"] != 0;
    if (c.num_heads % c.num_kv_heads != 0 || c.head_dim % 2 != 0 || c.head_dim < 2)
      throw InvalidArgument("random model: heads must be a multiple of kv_heads and head_dim even in '" + name + "'");
    return c;
  }
  throw InvalidArgument("random model: unknown shape '" + name +
                        "'; known: smollm2-135m, llama3-8b, qwen3-8b, qwen3-14b, qwen3-32b, custom:...");
}

}  // namespace

bool is_random_model(const std::string& path) { return path.rfind("random:", 0) == 0; }

ModelConfig random_model_config(const std::string& path) {
  std::string spec = path.substr(7);
  DType dtype = DType::BF16;
  const auto at = spec.rfind('@');
  if (at != std::string::npos) {
    const std::string d = spec.substr(at + 1);
    spec = spec.substr(0, at);
    if (d == "f32" || d == "fp32" || d == "float32") dtype = DType::F32;
    else if (d == "f16" || d == "fp16" || d == "float16") dtype = DType::F16;
    else if (d == "bf16" || d == "bfloat16") dtype = DType::BF16;
    else throw InvalidArgument("random model: dtype '" + d + "' is not one of f32, f16, bf16");
  }
  ModelConfig c = named_shape(spec);
  c.dtype = dtype;
  return c;
}

StageWeights random_stage_weights(const ModelConfig& cfg, Backend& backend, int64_t begin, int64_t end, bool first,
                                  bool last, uint64_t seed) {
  StageWeights sw;
  sw.layer_begin = begin;
  sw.layer_end = end;
  const DType mdt = backend.weight_storage_dtype(cfg.dtype);
  uint64_t tensor_index = 0;
  auto make = [&](std::vector<int64_t> shape, DType dt, float scale, float offset, const std::string& what) {
    Tensor t{nullptr, dt, std::move(shape)};
    Buffer b = backend.allocate(t.nbytes(), what);
    t.data = b.get();
    backend.fill_random(t, seed + tensor_index++, scale, offset);
    sw.bytes += t.nbytes();
    sw.storage.push_back(std::move(b));
    return t;
  };
  const int64_t H = cfg.hidden_size, F = cfg.intermediate_size, D = cfg.head_dim;
  const float w = 0.02f;
  // The embedding and head draw from numbers past every layer's, so that a model's weights do not
  // depend on how its layers are split into stages and blocks.
  tensor_index = static_cast<uint64_t>(cfg.num_layers) * 16 + 1;
  if (first) sw.embed = make({cfg.vocab_size, H}, mdt, 1.0f, 0.0f, "random embedding");
  tensor_index = static_cast<uint64_t>(cfg.num_layers) * 16 + 2;
  if (last) {
    sw.final_norm = make({H}, DType::F32, 0.0f, 1.0f, "random final norm");
    sw.lm_head = (cfg.tie_word_embeddings && first) ? sw.embed : make({cfg.vocab_size, H}, mdt, w, 0.0f, "random lm_head");
  }
  std::vector<float> inv = rope_inv_freq(cfg);
  Buffer inv_buf = backend.allocate(inv.size() * 4, "rope inv_freq");
  backend.copy_to_device(inv_buf.get(), inv.data(), inv.size() * 4);
  sw.inv_freq = Tensor{inv_buf.get(), DType::F32, {static_cast<int64_t>(inv.size())}};
  sw.storage.push_back(std::move(inv_buf));
  for (int64_t i = begin; i < end; ++i) {
    tensor_index = static_cast<uint64_t>(i) * 16 + 1;
    LayerWeights lw;
    const std::string l = "layer " + std::to_string(i);
    lw.attn_norm = make({H}, DType::F32, 0.0f, 1.0f, l);
    lw.qkv = make({cfg.q_size() + 2 * cfg.kv_size(), H}, mdt, w, 0.0f, l);
    if (cfg.attention_bias) lw.qkv_bias = make({cfg.q_size() + 2 * cfg.kv_size()}, DType::F32, 0.0f, 0.0f, l);
    if (cfg.qk_norm) {
      lw.q_norm = make({D}, DType::F32, 0.0f, 1.0f, l);
      lw.k_norm = make({D}, DType::F32, 0.0f, 1.0f, l);
    }
    lw.o_proj = make({H, cfg.q_size()}, mdt, w, 0.0f, l);
    lw.mlp_norm = make({H}, DType::F32, 0.0f, 1.0f, l);
    lw.gate_up = make({2 * F, H}, mdt, w, 0.0f, l);
    lw.down = make({H, F}, mdt, w, 0.0f, l);
    sw.layers.push_back(lw);
  }
  return sw;
}

}  // namespace ember
