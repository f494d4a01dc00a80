// Loads a stage's weights: converts each tensor to the backend's storage dtype on the host, fuses
// q/k/v and gate/up by rows so that each becomes one matmul, and uploads it once at start-up.
#include "model/weights.h"

#include <cstring>
#include <string>

#include "ember/error.h"

namespace ember {
namespace {

float load_element(const WeightInfo& w, size_t i) {
  switch (w.dtype) {
    case DType::F32: { float v; std::memcpy(&v, static_cast<const char*>(w.data) + 4 * i, 4); return v; }
    case DType::F16: { uint16_t h; std::memcpy(&h, static_cast<const char*>(w.data) + 2 * i, 2); return f16_to_f32(h); }
    case DType::BF16: { uint16_t h; std::memcpy(&h, static_cast<const char*>(w.data) + 2 * i, 2); return bf16_to_f32(h); }
    default: throw ModelFormatError("tensor " + w.name + " in " + w.file + " has unsupported dtype " + dtype_name(w.dtype));
  }
}

// Appends `w` converted to `dtype` at `dst`; returns bytes written.
size_t convert_into(const WeightInfo& w, DType dtype, char* dst) {
  size_t n = 1;
  for (int64_t d : w.shape) n *= static_cast<size_t>(d);
  if (w.dtype == dtype) {
    std::memcpy(dst, w.data, n * dtype_size(dtype));
    return n * dtype_size(dtype);
  }
  for (size_t i = 0; i < n; ++i) {
    float v = load_element(w, i);
    switch (dtype) {
      case DType::F32: std::memcpy(dst + 4 * i, &v, 4); break;
      case DType::F16: { uint16_t h = f32_to_f16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
      case DType::BF16: { uint16_t h = f32_to_bf16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
      default: throw EngineError("cannot store weights as " + std::string(dtype_name(dtype)));
    }
  }
  return n * dtype_size(dtype);
}

class Uploader {
 public:
  Uploader(const WeightSource& src, Backend& backend, StageWeights* out) : src_(src), backend_(backend), out_(out) {}

  // Concatenates tensors by rows (all [rows_i, cols]) into one [sum rows, cols] tensor.
  Tensor matrix(const std::vector<std::string>& names, DType dtype) {
    std::vector<const WeightInfo*> parts;
    int64_t rows = 0, cols = -1;
    for (const auto& n : names) {
      const WeightInfo* w = src_.find(n);
      if (!w) throw ModelFormatError("tensor " + n + " is missing");
      int64_t r = w->shape.size() == 2 ? w->shape[0] : 1;
      int64_t c = w->shape.empty() ? 1 : w->shape.back();
      if (cols >= 0 && c != cols) throw ModelFormatError("tensor " + n + " has " + std::to_string(c) + " columns, expected " + std::to_string(cols));
      cols = c;
      rows += r;
      parts.push_back(w);
    }
    std::vector<int64_t> shape{rows, cols};
    size_t bytes = static_cast<size_t>(rows * cols) * dtype_size(dtype);
    std::vector<char> host(bytes);
    size_t off = 0;
    for (const WeightInfo* w : parts) off += convert_into(*w, dtype, host.data() + off);
    Buffer buf = backend_.allocate(bytes, "weights " + names[0]);
    backend_.copy_to_device(buf.get(), host.data(), bytes);
    Tensor t{buf.get(), dtype, shape};
    out_->bytes += bytes;
    out_->storage.push_back(std::move(buf));
    return t;
  }
  // Concatenates 1-D tensors end to end as F32.
  Tensor vector_f32(const std::vector<std::string>& names) {
    std::vector<const WeightInfo*> parts;
    size_t n = 0;
    for (const auto& name : names) {
      const WeightInfo* w = src_.find(name);
      if (!w) throw ModelFormatError("tensor " + name + " is missing");
      parts.push_back(w);
      n += static_cast<size_t>(w->nbytes / dtype_size(w->dtype));
    }
    std::vector<char> host(n * 4);
    size_t off = 0;
    for (const WeightInfo* w : parts) off += convert_into(*w, DType::F32, host.data() + off);
    Buffer buf = backend_.allocate(host.size(), "weights " + names[0]);
    backend_.copy_to_device(buf.get(), host.data(), host.size());
    Tensor t{buf.get(), DType::F32, {static_cast<int64_t>(n)}};
    out_->bytes += host.size();
    out_->storage.push_back(std::move(buf));
    return t;
  }

 private:
  const WeightSource& src_;
  Backend& backend_;
  StageWeights* out_;
};

}  // namespace

size_t stage_weight_bytes(const ModelConfig& cfg, int64_t begin, int64_t end, bool first, bool last, DType matrix_dtype) {
  const int64_t H = cfg.hidden_size, F = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t per_layer = (cfg.q_size() + 2 * cfg.kv_size()) * H + H * cfg.q_size() + 3 * F * H;
  size_t bytes = static_cast<size_t>(per_layer * (end - begin)) * dtype_size(matrix_dtype);
  bytes += static_cast<size_t>((2 * H + 2 * D + cfg.q_size() + 2 * cfg.kv_size()) * (end - begin)) * 4;
  const size_t vocab_matrix = static_cast<size_t>(cfg.vocab_size * H) * dtype_size(matrix_dtype);
  if (first) bytes += vocab_matrix;
  if (last && (!cfg.tie_word_embeddings || !first)) bytes += vocab_matrix;
  if (last) bytes += static_cast<size_t>(H) * 4;
  return bytes;
}

StageWeights load_stage_weights(const ModelConfig& cfg, const WeightSource& src, Backend& backend,
                                int64_t begin, int64_t end, bool first, bool last) {
  StageWeights sw;
  sw.layer_begin = begin;
  sw.layer_end = end;
  Uploader up(src, backend, &sw);
  auto mdt = [&](const std::string& name) {
    const WeightInfo* w = src.find(name);
    if (!w) throw ModelFormatError("tensor " + name + " is missing");
    return backend.weight_storage_dtype(w->dtype);
  };
  const std::string embed_name = "model.embed_tokens.weight";
  if (first) sw.embed = up.matrix({embed_name}, mdt(embed_name));
  if (last) {
    sw.final_norm = up.vector_f32({"model.norm.weight"});
    bool has_head = src.find("lm_head.weight") != nullptr;
    if (cfg.tie_word_embeddings || !has_head) {
      sw.lm_head = first ? sw.embed : up.matrix({embed_name}, mdt(embed_name));
    } else {
      sw.lm_head = up.matrix({"lm_head.weight"}, mdt("lm_head.weight"));
    }
  }
  std::vector<float> inv = rope_inv_freq(cfg);
  Buffer inv_buf = backend.allocate(inv.size() * 4, "rope inv_freq");
  backend.copy_to_device(inv_buf.get(), inv.data(), inv.size() * 4);
  sw.inv_freq = Tensor{inv_buf.get(), DType::F32, {static_cast<int64_t>(inv.size())}};
  sw.storage.push_back(std::move(inv_buf));

  for (int64_t i = begin; i < end; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights lw;
    const std::string q = p + "self_attn.q_proj.weight";
    const DType dt = mdt(q);
    lw.attn_norm = up.vector_f32({p + "input_layernorm.weight"});
    lw.qkv = up.matrix({q, p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"}, dt);
    if (cfg.attention_bias)
      lw.qkv_bias = up.vector_f32({p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias", p + "self_attn.v_proj.bias"});
    if (cfg.qk_norm) {
      lw.q_norm = up.vector_f32({p + "self_attn.q_norm.weight"});
      lw.k_norm = up.vector_f32({p + "self_attn.k_norm.weight"});
    }
    lw.o_proj = up.matrix({p + "self_attn.o_proj.weight"}, dt);
    lw.mlp_norm = up.vector_f32({p + "post_attention_layernorm.weight"});
    lw.gate_up = up.matrix({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, dt);
    lw.down = up.matrix({p + "mlp.down_proj.weight"}, dt);
    sw.layers.push_back(lw);
  }
  return sw;
}

}  // namespace ember
