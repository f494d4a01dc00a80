// The Llama / Mistral / Qwen2 / Qwen3 decoder forward for one pipeline stage, written only
// against Backend ops so that every backend runs the same model code.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/backend.h"
#include "ember/config.h"
#include "model/weights.h"

namespace ember {

struct KvLayer {
  Tensor k;  // [num_blocks * block_size, Hk, D]
  Tensor v;
};

class DecoderStage {
 public:
  // Allocates the stage's workspace (for up to max_tokens tokens and max_logits sampled rows)
  // and KV pool (num_blocks pages per layer) from `backend`.
  DecoderStage(const ModelConfig& cfg, StageWeights weights, Backend& backend, int64_t max_tokens,
               int64_t max_logits, int64_t num_blocks, int32_t block_size, bool first, bool last);

  bool is_first() const { return first_; }
  bool is_last() const { return last_; }
  DType activation_dtype() const { return act_dtype_; }
  int64_t num_layers() const { return weights_.layer_end - weights_.layer_begin; }
  size_t weight_bytes() const { return weights_.bytes; }

  // x: [T, H] residual stream. The first stage fills it from the token ids.
  void forward(const DeviceStep& step, Tensor x);
  // Last stage: final norm and LM head on the rows at logits_indices -> [num_logits, V].
  Tensor compute_logits(const DeviceStep& step, const Tensor& x);

 private:
  Tensor ws(int i, std::vector<int64_t> shape) const;

  ModelConfig cfg_;
  StageWeights weights_;
  Backend& backend_;
  DType act_dtype_;
  bool first_ = false;
  bool last_ = false;
  int64_t max_tokens_;
  int64_t max_logits_;
  std::vector<Buffer> workspace_;
  std::vector<Buffer> kv_storage_;
  std::vector<KvLayer> kv_;
};

}  // namespace ember
