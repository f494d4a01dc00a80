// Random-weight models of real shapes ("random:llama3-8b@bf16"), built directly in each stage's
// memory: benchmarks of 8B-32B models need no download and no host copy.
#pragma once

#include <string>

#include "ember/backend.h"
#include "ember/config.h"
#include "model/weights.h"

namespace ember {

bool is_random_model(const std::string& path);

// "random:<shape>[@f32|f16|bf16]"; shapes: smollm2-135m, llama3-8b, qwen3-8b, qwen3-14b,
// qwen3-32b, or custom:vocab=V,hidden=H,layers=L,heads=N,kv_heads=K,ffn=F[,head_dim=D][,qk_norm=1][,tied=1].
ModelConfig random_model_config(const std::string& path);

StageWeights random_stage_weights(const ModelConfig& cfg, Backend& backend, int64_t begin, int64_t end, bool first,
                                  bool last, uint64_t seed);

}  // namespace ember
