// Loads a stage's weights: converts each tensor to the backend's storage dtype on the host, fuses
// q/k/v and gate/up by rows so that each becomes one matmul, and uploads it once at start-up.
#include "model/weights.h"

#include <cstring>
#include <string>
#include <vector>

#include "ember/error.h"
#include "format/gguf_dequant.h"

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

// Appends `w` converted to `dtype` at `dst`; returns bytes written. Block formats are copied as
// they are (rows of whole blocks, so concatenating tensors by rows is concatenating bytes) or
// dequantized exactly as the GGUF reader would, then stored like any F32 tensor.
size_t convert_into(const WeightInfo& w, DType dtype, char* dst) {
  int64_t n = 1;
  for (int64_t d : w.shape) n *= d;
  const size_t out_bytes = dtype_nbytes(dtype, n);
  if (w.dtype == dtype) {
    std::memcpy(dst, w.data, out_bytes);
    return out_bytes;
  }
  if (dtype_is_quantized(dtype)) {
    throw EngineError("tensor " + w.name + " in " + w.file + " is " + dtype_name(w.dtype) +
                      "; weights cannot be stored as " + dtype_name(dtype));
  }
  WeightInfo src = w;
  std::vector<float> dequantized;
  if (dtype_is_quantized(w.dtype)) {
    dequantized.resize(static_cast<size_t>(n));
    dequantize_blocks(w.dtype, w.data, n, dequantized.data());
    if (dtype == DType::F32) {
      std::memcpy(dst, dequantized.data(), out_bytes);
      return out_bytes;
    }
    src.dtype = DType::F32;
    src.data = dequantized.data();
  }
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    float v = load_element(src, i);
    switch (dtype) {
      case DType::F32: std::memcpy(dst + 4 * i, &v, 4); break;
      case DType::F16: { uint16_t h = f32_to_f16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
      case DType::BF16: { uint16_t h = f32_to_bf16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
      default: throw EngineError("cannot store weights as " + std::string(dtype_name(dtype)));
    }
  }
  return out_bytes;
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
    if (cols % dtype_block_elems(dtype) != 0) {
      throw ModelFormatError("tensor " + names[0] + " has " + std::to_string(cols) + " columns, not whole " +
                             dtype_name(dtype) + " blocks of " + std::to_string(dtype_block_elems(dtype)));
    }
    std::vector<int64_t> shape{rows, cols};
    size_t bytes = dtype_nbytes(dtype, rows * cols);
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
      size_t numel = 1;
      for (int64_t d : w->shape) numel *= static_cast<size_t>(d);
      n += numel;
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
  size_t bytes = dtype_nbytes(matrix_dtype, per_layer * (end - begin));
  bytes += static_cast<size_t>((2 * H + 2 * D + cfg.q_size() + 2 * cfg.kv_size()) * (end - begin)) * 4;
  const size_t vocab_matrix = dtype_nbytes(matrix_dtype, cfg.vocab_size * H);
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
  const bool has_head = src.find("lm_head.weight") != nullptr;
  const std::string head_name = cfg.tie_word_embeddings || !has_head ? embed_name : "lm_head.weight";
  // A group of matrices stored in one block format that the backend reads directly stays blocks;
  // anything else takes `fallback` (the tensor's own storage dtype for the embedding and LM head,
  // the q projection's for a layer), or the backend's F32 storage where that is a block format.
  auto group_dtype = [&](const std::vector<std::string>& names, DType fallback) {
    const DType d = mdt(names[0]);
    bool same = true;
    for (const std::string& n : names) same = same && mdt(n) == d;
    if (same && dtype_is_quantized(d)) return d;
    return dtype_is_quantized(fallback) ? backend.weight_storage_dtype(DType::F32) : fallback;
  };
  auto matrix = [&](const std::vector<std::string>& names, DType fallback) {
    return up.matrix(names, group_dtype(names, fallback));
  };
  if (first) sw.embed = matrix({embed_name}, mdt(embed_name));
  if (last) {
    sw.final_norm = up.vector_f32({"model.norm.weight"});
    sw.lm_head = first && head_name == embed_name ? sw.embed : matrix({head_name}, mdt(head_name));
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
    lw.qkv = matrix({q, p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"}, dt);
    if (cfg.attention_bias)
      lw.qkv_bias = up.vector_f32({p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias", p + "self_attn.v_proj.bias"});
    if (cfg.qk_norm) {
      lw.q_norm = up.vector_f32({p + "self_attn.q_norm.weight"});
      lw.k_norm = up.vector_f32({p + "self_attn.k_norm.weight"});
    }
    lw.o_proj = matrix({p + "self_attn.o_proj.weight"}, dt);
    lw.mlp_norm = up.vector_f32({p + "post_attention_layernorm.weight"});
    lw.gate_up = matrix({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, dt);
    lw.down = matrix({p + "mlp.down_proj.weight"}, dt);
    sw.layers.push_back(lw);
  }
  return sw;
}

}  // namespace ember
