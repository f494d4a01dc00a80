// config.json parsing for every supported family, the errors for unsupported or inconsistent
// configs, generation_config overrides, RoPE frequencies (plain, linear, Llama-3) and parameter counts.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "ember/config.h"
#include "ember/error.h"
#include "model_file_writer.h"

namespace ember {
namespace {

using nlohmann::json;
using test::expect_format_error;

const std::string kWhere = "/models/x/config.json";

json llama_json() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", 128256},
          {"hidden_size", 4096},
          {"intermediate_size", 14336},
          {"num_hidden_layers", 32},
          {"num_attention_heads", 32},
          {"num_key_value_heads", 8},
          {"max_position_embeddings", 131072},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"rope_scaling",
           {{"factor", 8.0},
            {"low_freq_factor", 1.0},
            {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", 8192},
            {"rope_type", "llama3"}}},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"},
          {"bos_token_id", 128000},
          {"eos_token_id", {128001, 128008, 128009}},
          {"hidden_act", "silu"}};
}

ModelConfig parse(const json& j) { return parse_hf_config(j.dump(), kWhere); }

TEST(HfConfig, Llama) {
  ModelConfig c = parse(llama_json());
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.rope_neox);
  EXPECT_EQ(c.dtype, DType::BF16);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.q_size(), 4096);
  EXPECT_EQ(c.kv_size(), 1024);
  // Llama-3.1-8B has 8,030,261,248 parameters.
  EXPECT_EQ(c.num_parameters(), 8030261248);
}

TEST(HfConfig, MistralMapsToLlamaWithDefaults) {
  json j = {{"architectures", {"MistralForCausalLM"}}, {"vocab_size", 32000}, {"hidden_size", 4096},
            {"intermediate_size", 14336}, {"num_hidden_layers", 32}, {"num_attention_heads", 32},
            {"max_position_embeddings", 32768}, {"sliding_window", 4096}, {"head_dim", nullptr},
            {"eos_token_id", 2}, {"rope_scaling", nullptr}, {"dtype", "float16"}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.num_kv_heads, 32);  // defaults to num_attention_heads
  EXPECT_EQ(c.head_dim, 128);     // defaults to hidden / heads
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::None);
  EXPECT_EQ(c.dtype, DType::F16);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c.bos_token_id, -1);
}

TEST(HfConfig, Qwen2HasAttentionBias) {
  json j = {{"architectures", {"Qwen2ForCausalLM"}}, {"vocab_size", 151936}, {"hidden_size", 896},
            {"intermediate_size", 4864}, {"num_hidden_layers", 24}, {"num_attention_heads", 14},
            {"num_key_value_heads", 2}, {"rope_theta", 1000000.0}, {"tie_word_embeddings", true},
            {"torch_dtype", "bfloat16"}, {"max_position_embeddings", 32768}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  // Qwen2.5-0.5B: 494,032,768 parameters.
  EXPECT_EQ(c.num_parameters(), 494032768);
}

TEST(HfConfig, Qwen3HasQkNormAndExplicitHeadDim) {
  json j = {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 151936}, {"hidden_size", 1024},
            {"intermediate_size", 3072}, {"num_hidden_layers", 28}, {"num_attention_heads", 16},
            {"num_key_value_heads", 8}, {"head_dim", 128}, {"attention_bias", false},
            {"tie_word_embeddings", true}, {"rope_theta", 1000000}, {"torch_dtype", "bfloat16"}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.architecture, "qwen3");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_size(), 2048);
  // Qwen3-0.6B: 596,049,920 parameters.
  EXPECT_EQ(c.num_parameters(), 596049920);
  j["attention_bias"] = true;
  EXPECT_TRUE(parse(j).attention_bias);
}

TEST(HfConfig, ModelTypeFallback) {
  json j = llama_json();
  j.erase("architectures");
  j["model_type"] = "qwen3";
  EXPECT_EQ(parse(j).architecture, "qwen3");
  j["model_type"] = "gpt2";
  expect_format_error([&] { parse(j); }, {"unsupported architecture", "gpt2", kWhere});
}

TEST(HfConfig, UnsupportedArchitecture) {
  json j = llama_json();
  j["architectures"] = {"GPT2LMHeadModel"};
  try {
    parse(j);
    FAIL() << "expected ModelFormatError";
  } catch (const ModelFormatError& e) {
    EXPECT_EQ(std::string(e.what()),
              "unsupported architecture 'GPT2LMHeadModel' in " + kWhere +
                  "; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM");
  }
}

TEST(HfConfig, MissingOrInvalidFields) {
  json j = llama_json();
  j.erase("hidden_size");
  expect_format_error([&] { parse(j); }, {"'hidden_size'", kWhere, "missing"});
  j = llama_json();
  j["num_hidden_layers"] = 0;
  expect_format_error([&] { parse(j); }, {"'num_hidden_layers'", "positive", "found 0"});
  j = llama_json();
  j["vocab_size"] = "many";
  expect_format_error([&] { parse(j); }, {"'vocab_size'", "integer", "\"many\""});
  j = llama_json();
  j["num_key_value_heads"] = 5;
  expect_format_error([&] { parse(j); }, {"num_attention_heads (32)", "num_key_value_heads (5)", kWhere});
  j = llama_json();
  j["head_dim"] = 127;
  expect_format_error([&] { parse(j); }, {"head_dim", "even", "127"});
  j = llama_json();
  j["torch_dtype"] = "int8";
  expect_format_error([&] { parse(j); }, {"'torch_dtype'", "int8"});
  j = llama_json();
  j["eos_token_id"] = {1, -2};
  expect_format_error([&] { parse(j); }, {"'eos_token_id'", "-2"});
  j = llama_json();
  j["hidden_act"] = "gelu";
  expect_format_error([&] { parse(j); }, {"'hidden_act'", "gelu"});
  expect_format_error([&] { parse_hf_config("{oops", kWhere); }, {kWhere, "not valid JSON"});
  expect_format_error([&] { parse_hf_config("[]", kWhere); }, {kWhere, "JSON object"});
}

TEST(HfConfig, RopeScalingVariants) {
  json j = llama_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Linear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_format_error([&] { parse(j); }, {"unsupported rope_scaling type 'yarn'", kWhere});
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_format_error([&] { parse(j); }, {"llama3", "low_freq_factor"});
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse(j).rope_scaling.kind, RopeScaling::Kind::None);
}

TEST(HfConfig, GenerationConfigOverridesTokens) {
  ModelConfig c = parse(llama_json());
  apply_generation_config(R"({"eos_token_id": 7, "bos_token_id": 3, "temperature": 0.6})", "gen.json", &c);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{7});
  EXPECT_EQ(c.bos_token_id, 3);
  apply_generation_config(R"({"eos_token_id": [9, 10]})", "gen.json", &c);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{9, 10}));
  EXPECT_EQ(c.bos_token_id, 3);
  apply_generation_config(R"({"do_sample": true})", "gen.json", &c);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{9, 10}));
  expect_format_error([&] { apply_generation_config(R"({"eos_token_id": "x"})", "gen.json", &c); },
                      {"gen.json", "'eos_token_id'"});
}

ModelConfig rope_config(double theta, int64_t head_dim) {
  ModelConfig c;
  c.rope_theta = theta;
  c.head_dim = head_dim;
  return c;
}

TEST(RopeInvFreq, Plain) {
  auto f = rope_inv_freq(rope_config(10000.0, 8));
  ASSERT_EQ(f.size(), 4u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[1], 0.1f);
  EXPECT_FLOAT_EQ(f[2], 0.01f);
  EXPECT_FLOAT_EQ(f[3], 0.001f);
}

TEST(RopeInvFreq, Linear) {
  ModelConfig c = rope_config(10000.0, 8);
  c.rope_scaling.kind = RopeScaling::Kind::Linear;
  c.rope_scaling.factor = 4.0;
  auto f = rope_inv_freq(c);
  EXPECT_FLOAT_EQ(f[0], 0.25f);
  EXPECT_FLOAT_EQ(f[3], 0.00025f);
}

TEST(RopeInvFreq, Llama3HandComputed) {
  // theta 10000, head_dim 8: inv_freq 1, 0.1, 0.01, 0.001; wavelengths 2*pi/f = 6.28, 62.8, 628.3,
  // 6283. With old context 1024, low 1, high 4: wavelengths below 1024/4 = 256 are kept, above
  // 1024/1 = 1024 divided by factor 8, and 628.3 is blended with
  // s = (1024/628.3185 - 1) / (4 - 1) = 0.2099155, f = (1 - s) * 0.01 / 8 + s * 0.01 = 0.0030867610.
  ModelConfig c = rope_config(10000.0, 8);
  c.rope_scaling = {RopeScaling::Kind::Llama3, 8.0, 1.0, 4.0, 1024};
  auto f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[1], 0.1f);
  EXPECT_NEAR(f[2], 0.0030867610, 1e-9);
  EXPECT_FLOAT_EQ(f[3], 0.000125f);
}

TEST(RopeInvFreq, Llama31Config) {
  ModelConfig c = parse(llama_json());
  auto f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 64u);
  // Short wavelengths (< 8192/4 = 2048) untouched, long ones (> 8192) divided by 8.
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[10], static_cast<float>(1.0 / std::pow(500000.0, 20.0 / 128)));
  EXPECT_FLOAT_EQ(f[63], static_cast<float>(1.0 / std::pow(500000.0, 126.0 / 128) / 8.0));
  // i = 40: wavelength 2*pi*500000^(80/128) = 22025 > 8192, so divided by 8; i = 30: wavelength
  // 2*pi*500000^(60/128) = 2938, in the blend band.
  EXPECT_FLOAT_EQ(f[40], static_cast<float>(1.0 / std::pow(500000.0, 80.0 / 128) / 8.0));
  const double base30 = 1.0 / std::pow(500000.0, 60.0 / 128);
  const double s = (8192.0 * base30 / (2 * 3.14159265358979323846) - 1.0) / 3.0;
  ASSERT_GT(s, 0.0);
  ASSERT_LT(s, 1.0);
  EXPECT_FLOAT_EQ(f[30], static_cast<float>((1 - s) * base30 / 8 + s * base30));
}

}  // namespace
}  // namespace ember
