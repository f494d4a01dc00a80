// The model hyper-parameters every part of the engine reads, parsed once from a Hugging Face
// config.json (or GGUF metadata) and validated so that later code can trust them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ember/dtype.h"

namespace ember {

struct RopeScaling {
  enum class Kind { None, Linear, Llama3 } kind = Kind::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // family: "llama" (also Mistral), "qwen2", "qwen3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool rope_neox = true;         // HF rotate_half layout; false = GPT-J interleaved pairs
  bool tie_word_embeddings = false;
  bool attention_bias = false;   // q/k/v projections carry a bias (Qwen2)
  bool qk_norm = false;          // per-head RMSNorm on q and k before RoPE (Qwen3)
  DType dtype = DType::F32;      // the checkpoint's declared dtype (torch_dtype)
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
  // Parameters of the transformer (embeddings counted once when tied).
  int64_t num_parameters() const;
};

// Parses config.json text; `where` names the file in errors. Throws ModelFormatError for an
// unsupported architecture (naming it) or missing / inconsistent fields.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& where);

// Reads eos ids (an int or a list) from generation_config.json text into cfg.
void apply_generation_config(const std::string& json_text, const std::string& where, ModelConfig* cfg);

// Per-frequency inverse frequencies for RoPE, with linear / Llama-3 scaling applied.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace ember
