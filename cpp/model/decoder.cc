// One block's share of the forward pass: per layer RMSNorm -> q/k/v -> (q/k norm) -> RoPE -> KV
// write -> paged attention -> o_proj -> residual -> RMSNorm -> SwiGLU MLP -> residual.
#include "model/decoder.h"

#include <cmath>
#include <string>

#include "ember/error.h"

namespace ember {
namespace {
enum Ws { kNormed, kQkv, kQ, kK, kV, kQn, kKn, kAttn, kTmp, kGateUp, kAct, kRows, kRowsNormed, kLogits, kNumWs };
}

DecoderWorkspace::DecoderWorkspace(const ModelConfig& cfg, Backend& backend, DType act_dtype, int64_t max_tokens,
                                   int64_t max_logits, bool logits)
    : dtype_(act_dtype), max_tokens_(max_tokens), max_logits_(max_logits) {
  const int64_t H = cfg.hidden_size, F = cfg.intermediate_size, T = max_tokens;
  const size_t a = dtype_size(act_dtype);
  const int64_t sizes[kNumWs] = {T * H, T * (cfg.q_size() + 2 * cfg.kv_size()), T * cfg.q_size(), T * cfg.kv_size(), T * cfg.kv_size(), T * cfg.q_size(),
                                 T * cfg.kv_size(), T * cfg.q_size(), T * H, T * 2 * F, T * F,
                                 max_logits * H, max_logits * H, max_logits * cfg.vocab_size};
  for (int i = 0; i < kNumWs; ++i) {
    const bool logits_only = i == kRows || i == kRowsNormed || i == kLogits;
    // Only the device that runs the last block computes logits; the others keep empty buffers there.
    buffers_.push_back(logits_only && !logits ? Buffer() : backend.allocate(static_cast<size_t>(sizes[i]) * a, "workspace"));
  }
}

DType DecoderStage::activation_dtype_for(const StageWeights& weights, Backend& backend) {
  const DType wdt = weights.layers.empty() ? (weights.embed.data ? weights.embed.dtype : weights.lm_head.dtype)
                                           : weights.layers[0].qkv.dtype;
  return backend.activation_dtype(wdt);
}

DecoderStage::DecoderStage(const ModelConfig& cfg, StageWeights weights, Backend& backend,
                           std::shared_ptr<const DecoderWorkspace> workspace, int64_t num_blocks, int32_t block_size,
                           bool first, bool last)
    : cfg_(cfg), weights_(std::move(weights)), backend_(backend), workspace_(std::move(workspace)), first_(first),
      last_(last) {
  act_dtype_ = activation_dtype_for(weights_, backend);
  if (!workspace_ || workspace_->dtype() != act_dtype_)
    throw EngineError("decoder stage: the workspace must be made in the stage's activation dtype");
  const size_t a = dtype_size(act_dtype_);
  const int64_t slots = num_blocks * block_size;
  for (int64_t l = weights_.layer_begin; l < weights_.layer_end; ++l) {
    const size_t bytes = static_cast<size_t>(slots * cfg.kv_size()) * a;
    Buffer k = backend.allocate(bytes, "KV cache (keys) of layer " + std::to_string(l));
    Buffer v = backend.allocate(bytes, "KV cache (values) of layer " + std::to_string(l));
    kv_.push_back({k.view(act_dtype_, {slots, cfg.num_kv_heads, cfg.head_dim}),
                   v.view(act_dtype_, {slots, cfg.num_kv_heads, cfg.head_dim})});
    kv_storage_.push_back(std::move(k));
    kv_storage_.push_back(std::move(v));
  }
}

void DecoderStage::forward(const DeviceStep& step, Tensor x) {
  const int64_t T = step.num_tokens;
  if (T > workspace_->max_tokens())
    throw EngineError("step of " + std::to_string(T) + " tokens exceeds the workspace of " +
                      std::to_string(workspace_->max_tokens()));
  const int64_t H = cfg_.hidden_size, D = cfg_.head_dim, Hq = cfg_.num_heads, Hk = cfg_.num_kv_heads;
  const int64_t F = cfg_.intermediate_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (first_) backend_.embed(weights_.embed, step.token_ids, T, x);

  Tensor normed = ws(kNormed, {T, H});
  Tensor q = ws(kQ, {T, Hq * D}), k = ws(kK, {T, Hk * D}), v = ws(kV, {T, Hk * D});
  Tensor attn = ws(kAttn, {T, Hq * D}), tmp = ws(kTmp, {T, H});
  Tensor gate_up = ws(kGateUp, {T, 2 * F}), act = ws(kAct, {T, F});
  const int64_t qs = cfg_.q_size(), ks = cfg_.kv_size();

  for (size_t li = 0; li < weights_.layers.size(); ++li) {
    const LayerWeights& L = weights_.layers[li];
    // The previous layer's MLP residual add is fused into this norm (add_rms_norm below).
    if (li == 0) backend_.rms_norm(x, L.attn_norm, eps, normed);
    // One GEMM over the fused q|k|v weights, then split into q (rotated) and the rotated k and v
    // in the cache: one fused op without q/k norm, the separate steps with it (Qwen3).
    Tensor qkv = ws(kQkv, {T, qs + 2 * ks});
    backend_.matmul(normed, L.qkv, L.qkv_bias.data ? &L.qkv_bias : nullptr, qkv);
    Tensor q3 = q.reshaped({T, Hq, D});
    if (!L.q_norm.data) {
      backend_.qkv_rope_kv_write(qkv, Hq, Hk, D, step.positions, weights_.inv_freq.as<float>(), cfg_.rope_neox,
                                 step.slot_mapping, q3, kv_[li].k, kv_[li].v);
    } else {
      backend_.slice_columns(qkv, 0, q);
      backend_.slice_columns(qkv, qs, k);
      backend_.slice_columns(qkv, qs + ks, v);
      Tensor qn = ws(kQn, {T * Hq, D}), kn = ws(kKn, {T * Hk, D});
      backend_.rms_norm(q.reshaped({T * Hq, D}), L.q_norm, eps, qn);
      backend_.rms_norm(k.reshaped({T * Hk, D}), L.k_norm, eps, kn);
      q3 = qn.reshaped({T, Hq, D});
      Tensor k3 = kn.reshaped({T, Hk, D});
      backend_.rope(q3, k3, step.positions, weights_.inv_freq.as<float>(), cfg_.rope_neox);
      backend_.kv_write(k3, v.reshaped({T, Hk, D}), step.slot_mapping, kv_[li].k, kv_[li].v);
    }
    Tensor attn3 = attn.reshaped({T, Hq, D});
    backend_.attention(q3, kv_[li].k, kv_[li].v, step, scale, attn3);
    backend_.matmul(attn, L.o_proj, nullptr, tmp);
    backend_.add_rms_norm(x, tmp, L.mlp_norm, eps, normed);
    backend_.matmul(normed, L.gate_up, nullptr, gate_up);
    backend_.silu_mul(gate_up, act);
    backend_.matmul(act, L.down, nullptr, tmp);
    if (li + 1 < weights_.layers.size()) {
      backend_.add_rms_norm(x, tmp, weights_.layers[li + 1].attn_norm, eps, normed);
    } else {
      backend_.add(x, tmp);
    }
  }
}

Tensor DecoderStage::compute_logits(const DeviceStep& step, const Tensor& x) {
  const int64_t N = step.num_logits, H = cfg_.hidden_size;
  if (N > workspace_->max_logits())
    throw EngineError("step samples " + std::to_string(N) + " rows, more than the " +
                      std::to_string(workspace_->max_logits()) + " reserved");
  Tensor rows = ws(kRows, {N, H}), rows_n = ws(kRowsNormed, {N, H});
  backend_.gather_rows(x, step.logits_indices, N, rows);
  backend_.rms_norm(rows, weights_.final_norm, static_cast<float>(cfg_.rms_norm_eps), rows_n);
  Tensor logits = ws(kLogits, {N, cfg_.vocab_size});
  backend_.matmul(rows_n, weights_.lm_head, nullptr, logits);
  return logits;
}

}  // namespace ember
