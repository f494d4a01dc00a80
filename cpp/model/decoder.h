// The Llama / Mistral / Qwen2 / Qwen3 decoder forward for one block of layers (a pipeline stage
// runs one or, interleaved, several), written only against Backend ops.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ember/backend.h"
#include "ember/config.h"
#include "model/weights.h"

namespace ember {

struct KvLayer {
  Tensor k;  // [num_blocks * block_size, Hk, D]
  Tensor v;
};

// The scratch tensors of a forward pass (for up to max_tokens tokens and, with `logits`,
// max_logits sampled rows), allocated once per device: the blocks of layers a device runs in
// turn on its one stream share them.
class DecoderWorkspace {
 public:
  DecoderWorkspace(const ModelConfig& cfg, Backend& backend, DType act_dtype, int64_t max_tokens, int64_t max_logits,
                   bool logits);
  DType dtype() const { return dtype_; }
  int64_t max_tokens() const { return max_tokens_; }
  int64_t max_logits() const { return max_logits_; }
  Tensor view(int i, std::vector<int64_t> shape) const { return buffers_.at(i).view(dtype_, std::move(shape)); }

 private:
  DType dtype_;
  int64_t max_tokens_;
  int64_t max_logits_;
  std::vector<Buffer> buffers_;
};

class DecoderStage {
 public:
  // Owns one block of layers (`weights`) and allocates their KV pool (num_blocks pages per layer)
  // from `backend`; runs in `workspace`, which must have been made for this backend and model.
  DecoderStage(const ModelConfig& cfg, StageWeights weights, Backend& backend,
               std::shared_ptr<const DecoderWorkspace> workspace, int64_t num_blocks, int32_t block_size, bool first,
               bool last);
  // The activation dtype a backend computes in for these weights.
  static DType activation_dtype_for(const StageWeights& weights, Backend& backend);

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
  Tensor ws(int i, std::vector<int64_t> shape) const { return workspace_->view(i, std::move(shape)); }

  ModelConfig cfg_;
  StageWeights weights_;
  Backend& backend_;
  std::shared_ptr<const DecoderWorkspace> workspace_;
  DType act_dtype_;
  bool first_ = false;
  bool last_ = false;
  std::vector<Buffer> kv_storage_;
  std::vector<KvLayer> kv_;
};

}  // namespace ember
