// open_model / validate_weights on tiny model directories written by the test: the tensor list
// each family implies, and the errors for missing, misshapen or wrongly typed weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ember/config.h"
#include "ember/error.h"
#include "ember/weights.h"
#include "model_file_writer.h"

namespace ember {
namespace {

using nlohmann::json;
using test::expect_format_error;
using test::make_tensor;
using test::TempDir;
using test::write_bytes;

json tiny_config(const std::string& arch) {
  return {{"architectures", {arch}}, {"vocab_size", 32},        {"hidden_size", 16},
          {"intermediate_size", 24}, {"num_hidden_layers", 2},  {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
          {"eos_token_id", 2},       {"torch_dtype", "float32"}};
}

bool has(const std::vector<ExpectedTensor>& v, const std::string& name) {
  return std::any_of(v.begin(), v.end(), [&](const ExpectedTensor& e) { return e.name == name; });
}

const ExpectedTensor& get(const std::vector<ExpectedTensor>& v, const std::string& name) {
  auto it = std::find_if(v.begin(), v.end(), [&](const ExpectedTensor& e) { return e.name == name; });
  if (it == v.end()) throw std::runtime_error("no expected tensor " + name);
  return *it;
}

// A model directory with config.json and every tensor it needs (optionally tweaked).
void write_model(const TempDir& dir, const json& config, std::vector<test::TestTensor> tensors) {
  write_bytes(dir.file("config.json"), config.dump());
  test::write_safetensors(dir.file("model.safetensors"), tensors);
}

TEST(ExpectedTensors, LlamaNamesAndShapes) {
  ModelConfig c = parse_hf_config(tiny_config("LlamaForCausalLM").dump(), "config.json");
  auto e = expected_tensors(c);
  // embed + 2 * 9 per layer + norm + lm_head
  EXPECT_EQ(e.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(get(e, "model.embed_tokens.weight").shape, (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(get(e, "model.layers.1.self_attn.q_proj.weight").shape, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(get(e, "model.layers.1.self_attn.k_proj.weight").shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(get(e, "model.layers.0.self_attn.v_proj.weight").shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(get(e, "model.layers.0.self_attn.o_proj.weight").shape, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(get(e, "model.layers.0.mlp.gate_proj.weight").shape, (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(get(e, "model.layers.0.mlp.up_proj.weight").shape, (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(get(e, "model.layers.0.mlp.down_proj.weight").shape, (std::vector<int64_t>{16, 24}));
  EXPECT_EQ(get(e, "model.layers.0.input_layernorm.weight").shape, std::vector<int64_t>{16});
  EXPECT_EQ(get(e, "model.layers.0.post_attention_layernorm.weight").shape, std::vector<int64_t>{16});
  EXPECT_EQ(get(e, "model.norm.weight").shape, std::vector<int64_t>{16});
  EXPECT_FALSE(get(e, "lm_head.weight").optional);
  EXPECT_FALSE(has(e, "model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(has(e, "model.layers.0.self_attn.q_norm.weight"));
  int64_t total = 0;
  for (const ExpectedTensor& t : e) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    total += n;
  }
  EXPECT_EQ(total, c.num_parameters());
}

TEST(ExpectedTensors, Qwen2BiasesAndQwen3Norms) {
  auto q2 = expected_tensors(parse_hf_config(tiny_config("Qwen2ForCausalLM").dump(), "c"));
  EXPECT_EQ(get(q2, "model.layers.1.self_attn.q_proj.bias").shape, std::vector<int64_t>{16});
  EXPECT_EQ(get(q2, "model.layers.1.self_attn.k_proj.bias").shape, std::vector<int64_t>{8});
  EXPECT_EQ(get(q2, "model.layers.1.self_attn.v_proj.bias").shape, std::vector<int64_t>{8});
  json j = tiny_config("Qwen3ForCausalLM");
  j["head_dim"] = 6;
  j["tie_word_embeddings"] = true;
  ModelConfig c3 = parse_hf_config(j.dump(), "c");
  auto q3 = expected_tensors(c3);
  EXPECT_EQ(get(q3, "model.layers.0.self_attn.q_norm.weight").shape, std::vector<int64_t>{6});
  EXPECT_EQ(get(q3, "model.layers.0.self_attn.k_norm.weight").shape, std::vector<int64_t>{6});
  EXPECT_EQ(get(q3, "model.layers.0.self_attn.q_proj.weight").shape, (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(get(q3, "model.layers.0.self_attn.o_proj.weight").shape, (std::vector<int64_t>{16, 24}));
  EXPECT_FALSE(has(q3, "model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(get(q3, "lm_head.weight").optional);
}

TEST(OpenModel, ValidLlamaDirectoryWithGenerationConfig) {
  TempDir dir;
  json cfg = tiny_config("LlamaForCausalLM");
  ModelConfig c = parse_hf_config(cfg.dump(), "c");
  write_model(dir, cfg, test::tensors_for(c));
  write_bytes(dir.file("generation_config.json"), R"({"eos_token_id": [2, 5], "bos_token_id": 1})");
  ModelFiles m = open_model(dir.path().string());
  EXPECT_EQ(m.config.architecture, "llama");
  EXPECT_EQ(m.config.eos_token_ids, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(m.config.bos_token_id, 1);
  ASSERT_NE(m.weights, nullptr);
  EXPECT_EQ(m.weights->names().size(), expected_tensors(c).size());
  EXPECT_NE(m.weights->find("lm_head.weight"), nullptr);
}

TEST(OpenModel, TiedEmbeddingsWithAndWithoutLmHead) {
  json cfg = tiny_config("Qwen2ForCausalLM");
  cfg["tie_word_embeddings"] = true;
  ModelConfig c = parse_hf_config(cfg.dump(), "c");
  {
    TempDir dir;
    write_model(dir, cfg, test::tensors_for(c, false));
    EXPECT_EQ(open_model(dir.path().string()).weights->find("lm_head.weight"), nullptr);
  }
  {
    TempDir dir;
    write_model(dir, cfg, test::tensors_for(c, true));
    EXPECT_NE(open_model(dir.path().string()).weights->find("lm_head.weight"), nullptr);
  }
  {  // present but misshapen: still an error
    TempDir dir;
    auto t = test::tensors_for(c, false);
    t.push_back(make_tensor("lm_head.weight", {31, 16}));
    write_model(dir, cfg, t);
    expect_format_error([&] { open_model(dir.path().string()); }, {"lm_head.weight", "[31, 16]", "expected [32, 16]"});
  }
}

TEST(ValidateWeights, MissingTensor) {
  TempDir dir;
  json cfg = tiny_config("Qwen3ForCausalLM");
  ModelConfig c = parse_hf_config(cfg.dump(), "c");
  auto t = test::tensors_for(c);
  t.erase(std::remove_if(t.begin(), t.end(),
                         [](const test::TestTensor& x) { return x.name == "model.layers.1.self_attn.k_norm.weight"; }),
          t.end());
  write_model(dir, cfg, t);
  auto src = open_safetensors_dir(dir.path().string());
  expect_format_error([&] { validate_weights(c, *src); },
                      {"missing tensor 'model.layers.1.self_attn.k_norm.weight'", "[4]", dir.path().string()});
  expect_format_error([&] { open_model(dir.path().string()); }, {"model.layers.1.self_attn.k_norm.weight"});
}

TEST(ValidateWeights, WrongShape) {
  TempDir dir;
  json cfg = tiny_config("LlamaForCausalLM");
  ModelConfig c = parse_hf_config(cfg.dump(), "c");
  auto t = test::tensors_for(c);
  for (auto& x : t)
    if (x.name == "model.layers.0.mlp.down_proj.weight") x = make_tensor(x.name, {24, 16});
  write_model(dir, cfg, t);
  expect_format_error([&] { open_model(dir.path().string()); },
                      {"model.layers.0.mlp.down_proj.weight", dir.file("model.safetensors"), "has shape [24, 16]",
                       "expected [16, 24]"});
}

TEST(ValidateWeights, UnsupportedDtype) {
  TempDir dir;
  json cfg = tiny_config("LlamaForCausalLM");
  ModelConfig c = parse_hf_config(cfg.dump(), "c");
  auto t = test::tensors_for(c);
  for (auto& x : t)
    if (x.name == "model.norm.weight") x = make_tensor(x.name, {16}, "F64");
  write_model(dir, cfg, t);
  expect_format_error([&] { open_model(dir.path().string()); },
                      {"'model.norm.weight'", dir.file("model.safetensors"), "dtype F64", "F32, F16 or BF16"});
}

TEST(ValidateWeights, MixedWeightDtypesAccepted) {
  TempDir dir;
  json cfg = tiny_config("LlamaForCausalLM");
  ModelConfig c = parse_hf_config(cfg.dump(), "c");
  auto t = test::tensors_for(c);
  t[0] = make_tensor(t[0].name, t[0].shape, "BF16");
  t[1] = make_tensor(t[1].name, t[1].shape, "F16");
  write_model(dir, cfg, t);
  ModelFiles m = open_model(dir.path().string());
  EXPECT_EQ(m.weights->find(t[0].name)->dtype, DType::BF16);
  EXPECT_EQ(m.weights->find(t[1].name)->dtype, DType::F16);
}

TEST(OpenModel, PathErrors) {
  expect_format_error([] { open_model("/nonexistent/model/dir"); }, {"/nonexistent/model/dir", "does not exist"});
  TempDir dir;
  expect_format_error([&] { open_model(dir.path().string()); }, {dir.path().string(), "no config.json"});
  write_bytes(dir.file("config.json"), tiny_config("LlamaForCausalLM").dump());
  expect_format_error([&] { open_model(dir.path().string()); }, {"no safetensors weights", dir.path().string()});
  write_bytes(dir.file("weights.bin"), "x");
  expect_format_error([&] { open_model(dir.file("weights.bin")); }, {"weights.bin", "not a .gguf file"});
  write_bytes(dir.file("config.json"), tiny_config("BertModel").dump());
  expect_format_error([&] { open_model(dir.path().string()); },
                      {"unsupported architecture 'BertModel'", dir.file("config.json")});
}

#if !__has_include("ember/gguf.h")
TEST(OpenModel, GgufWithoutGgufSupport) {
  TempDir dir;
  write_bytes(dir.file("m.gguf"), "GGUF");
  expect_format_error([&] { open_model(dir.file("m.gguf")); }, {dir.file("m.gguf"), "GGUF support is not built"});
}
#endif

}  // namespace
}  // namespace ember
