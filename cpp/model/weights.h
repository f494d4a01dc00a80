// The weights one pipeline stage owns, in its backend's memory: only its layers, plus the
// embedding on the first stage and the final norm and LM head on the last.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/backend.h"
#include "ember/config.h"
#include "ember/weights.h"

namespace ember {

struct LayerWeights {
  Tensor attn_norm;   // [H] F32
  Tensor qkv;         // [(Hq + 2 Hk) D, H]: q, k and v projections fused by rows
  Tensor qkv_bias;    // [(Hq + 2 Hk) D] F32, or empty
  Tensor q_norm;      // [D] F32 (Qwen3), or empty
  Tensor k_norm;      // [D] F32 (Qwen3), or empty
  Tensor o_proj;      // [H, Hq D]
  Tensor mlp_norm;    // [H] F32
  Tensor gate_up;     // [2F, H]: gate and up fused by rows
  Tensor down;        // [H, F]
};

struct StageWeights {
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  Tensor embed;       // [V, H] on the first stage
  Tensor final_norm;  // [H] on the last stage
  Tensor lm_head;     // [V, H] on the last stage (the embedding when tied)
  Tensor inv_freq;    // [D/2] F32
  std::vector<LayerWeights> layers;
  std::vector<Buffer> storage;  // owns everything above
  size_t bytes = 0;
};

// Bytes the weights of layers [begin, end) (plus embedding / head where the stage needs them)
// occupy on a backend storing matrices as `matrix_dtype`.
size_t stage_weight_bytes(const ModelConfig& cfg, int64_t begin, int64_t end, bool first, bool last, DType matrix_dtype);

StageWeights load_stage_weights(const ModelConfig& cfg, const WeightSource& src, Backend& backend,
                                int64_t begin, int64_t end, bool first, bool last);

}  // namespace ember
