// GGUF -> ModelConfig + HF-named WeightSource: names, HF shapes, dequantized data, the undone
// Q/K permutation of llama files, and clear errors for files that are valid GGUF but not a model.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ember/dtype.h"
#include "ember/error.h"
#include "ember/gguf.h"
#include "gguf_test_builder.h"

namespace ember {
namespace {
using gguf_test::Builder;
using gguf_test::write_file;

constexpr int kHidden = 32, kHeads = 2, kKvHeads = 1, kHeadDim = 16, kFfn = 32, kVocab = 8;

// Row g of a converter-permuted head holds HF row s * D/2 + t, where g = 2t + s.
int64_t hf_row_of(int64_t g) {
  const int64_t h = g / kHeadDim, w = g % kHeadDim;
  return h * kHeadDim + (w % 2) * (kHeadDim / 2) + w / 2;
}

std::vector<float> filled(int64_t n, float base) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[k] = base + 0.001f * static_cast<float>(k);
  return v;
}

struct Options {
  std::string arch = "llama";
  bool permuted = true;
  bool with_output = false;
  bool with_bias = false;
  std::function<void(Builder&)> extra;
  uint32_t rope_dims = kHeadDim;
};

Builder model_file(const Options& o) {
  Builder b;
  const std::string a = o.arch + ".";
  b.kv_str("general.architecture", o.arch);
  b.kv_u32(a + "context_length", 256);
  b.kv_u32(a + "embedding_length", kHidden);
  b.kv_u32(a + "block_count", 1);
  b.kv_u32(a + "feed_forward_length", kFfn);
  b.kv_u32(a + "attention.head_count", kHeads);
  b.kv_u32(a + "attention.head_count_kv", kKvHeads);
  b.kv_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
  b.kv_f32(a + "rope.freq_base", 500000.0f);
  b.kv_u32(a + "rope.dimension_count", o.rope_dims);
  b.kv_u32("tokenizer.ggml.eos_token_id", 2);
  b.kv_u32("tokenizer.ggml.bos_token_id", 1);
  std::vector<uint8_t> toks;  // vocab size comes from the token list
  Builder::put32(toks, 8);
  Builder::put64(toks, kVocab);
  for (int k = 0; k < kVocab; ++k) Builder::put_str(toks, "t" + std::to_string(k));
  b.kv_raw("tokenizer.ggml.tokens", 9, toks);
  if (o.extra) o.extra(b);

  b.tensor_f32("token_embd.weight", {kHidden, kVocab}, filled(kHidden * kVocab, 0.5f));
  b.tensor_f32("blk.0.attn_norm.weight", {kHidden}, filled(kHidden, 1.0f));
  // attn_q, F32: HF row r holds r * 100 + column.
  std::vector<float> q(kHidden * kHidden);
  for (int64_t g = 0; g < kHidden; ++g) {
    for (int64_t c = 0; c < kHidden; ++c) {
      q[g * kHidden + c] = static_cast<float>((o.permuted ? hf_row_of(g) : g) * 100 + c);
    }
  }
  b.tensor_f32("blk.0.attn_q.weight", {kHidden, kHidden}, q);
  // attn_k, Q8_0 (one block per row): HF row r holds r everywhere.
  std::vector<uint8_t> k8;
  for (int64_t g = 0; g < kKvHeads * kHeadDim; ++g) {
    k8.push_back(0x00);
    k8.push_back(0x3c);  // d = 1.0
    for (int c = 0; c < 32; ++c) k8.push_back(static_cast<uint8_t>(o.permuted ? hf_row_of(g) : g));
  }
  b.tensor("blk.0.attn_k.weight", {kHidden, kKvHeads * kHeadDim}, 8, k8);
  // attn_v, F16.
  std::vector<uint8_t> v16;
  for (int64_t k = 0; k < kHidden * kKvHeads * kHeadDim; ++k) {
    uint16_t h = f32_to_f16(static_cast<float>(k % 7));
    Builder::put(v16, &h, 2);
  }
  b.tensor("blk.0.attn_v.weight", {kHidden, kKvHeads * kHeadDim}, 1, v16);
  if (o.with_bias) {
    std::vector<float> qb(kHidden);
    for (int64_t g = 0; g < kHidden; ++g) qb[g] = static_cast<float>(o.permuted ? hf_row_of(g) : g);
    b.tensor_f32("blk.0.attn_q.bias", {kHidden}, qb);
    b.tensor_f32("blk.0.attn_k.bias", {kKvHeads * kHeadDim}, filled(kKvHeads * kHeadDim, 0));
    b.tensor_f32("blk.0.attn_v.bias", {kKvHeads * kHeadDim}, filled(kKvHeads * kHeadDim, 0));
  }
  if (o.arch == "qwen3") {
    b.tensor_f32("blk.0.attn_q_norm.weight", {kHeadDim}, filled(kHeadDim, 1));
    b.tensor_f32("blk.0.attn_k_norm.weight", {kHeadDim}, filled(kHeadDim, 1));
  }
  b.tensor_f32("blk.0.attn_output.weight", {kHidden, kHidden}, filled(kHidden * kHidden, 0));
  b.tensor_f32("blk.0.ffn_norm.weight", {kHidden}, filled(kHidden, 1));
  b.tensor_f32("blk.0.ffn_gate.weight", {kHidden, kFfn}, filled(kHidden * kFfn, 0));
  b.tensor_f32("blk.0.ffn_up.weight", {kHidden, kFfn}, filled(kHidden * kFfn, 0));
  b.tensor_f32("blk.0.ffn_down.weight", {kFfn, kHidden}, filled(kHidden * kFfn, 0));
  b.tensor_f32("output_norm.weight", {kHidden}, filled(kHidden, 1));
  if (o.with_output) b.tensor_f32("output.weight", {kHidden, kVocab}, filled(kHidden * kVocab, 2));
  return b;
}

void check_rows(const WeightSource& w, bool bias) {
  const WeightInfo* q = w.find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::F32);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{kHidden, kHidden}));
  const float* qd = static_cast<const float*>(q->data);
  for (int64_t r = 0; r < kHidden; ++r) {
    for (int64_t c = 0; c < kHidden; ++c) ASSERT_EQ(qd[r * kHidden + c], r * 100 + c) << r << "," << c;
  }
  const WeightInfo* k = w.find("model.layers.0.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->dtype, DType::F32);  // dequantized from Q8_0
  EXPECT_EQ(k->shape, (std::vector<int64_t>{kKvHeads * kHeadDim, kHidden}));
  const float* kd = static_cast<const float*>(k->data);
  for (int64_t r = 0; r < kKvHeads * kHeadDim; ++r) ASSERT_EQ(kd[r * kHidden + 5], r) << r;
  const WeightInfo* v = w.find("model.layers.0.self_attn.v_proj.weight");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->dtype, DType::F16);  // kept as stored
  EXPECT_EQ(v->nbytes, size_t{2} * kHidden * kKvHeads * kHeadDim);
  if (bias) {
    const WeightInfo* qb = w.find("model.layers.0.self_attn.q_proj.bias");
    ASSERT_NE(qb, nullptr);
    for (int64_t r = 0; r < kHidden; ++r) ASSERT_EQ(static_cast<const float*>(qb->data)[r], r);
  }
}

TEST(GgufModel, LlamaConfigNamesAndUnpermutedQK) {
  const std::string path = write_file("llama_model", model_file({}).bytes());
  ModelFiles m = open_gguf_model(path);
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.hidden_size, kHidden);
  EXPECT_EQ(c.num_layers, 1);
  EXPECT_EQ(c.num_heads, kHeads);
  EXPECT_EQ(c.num_kv_heads, kKvHeads);
  EXPECT_EQ(c.head_dim, kHeadDim);
  EXPECT_EQ(c.intermediate_size, kFfn);
  EXPECT_EQ(c.vocab_size, kVocab);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);  // float32 in the file, read back as the decimal it was
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.rope_neox);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c.bos_token_id, 1);
  check_rows(*m.weights, false);
  const WeightInfo* emb = m.weights->find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{kVocab, kHidden}));
  EXPECT_EQ(static_cast<const float*>(emb->data)[1], 0.501f);
  EXPECT_EQ(m.weights->find("lm_head.weight"), nullptr);
  EXPECT_NE(m.weights->find("model.norm.weight"), nullptr);
  EXPECT_NE(m.weights->find("model.layers.0.post_attention_layernorm.weight"), nullptr);
  std::remove(path.c_str());
}

// With keep_quantized the Q8_0 k_proj stays blocks: un-permuted by copying whole rows of blocks
// for llama, a view into the file otherwise; F32 / F16 tensors are as before.
TEST(GgufModel, KeepQuantizedKeepsQ8BlocksInHfRowOrder) {
  for (const char* arch : {"llama", "qwen2"}) {
    Options o;
    o.arch = arch;
    o.permuted = o.arch == "llama";
    o.with_bias = o.arch == "qwen2";
    const std::string path = write_file(std::string("quant_") + arch, model_file(o).bytes());
    ModelLoadOptions lo;
    lo.keep_quantized = true;
    ModelFiles m = open_gguf_model(path, lo);
    const WeightInfo* k = m.weights->find("model.layers.0.self_attn.k_proj.weight");
    ASSERT_NE(k, nullptr);
    EXPECT_EQ(k->dtype, DType::Q8_0) << arch;
    EXPECT_EQ(k->shape, (std::vector<int64_t>{kKvHeads * kHeadDim, kHidden}));
    EXPECT_EQ(k->nbytes, size_t{34} * kKvHeads * kHeadDim);
    const uint8_t* kd = static_cast<const uint8_t*>(k->data);
    for (int64_t r = 0; r < kKvHeads * kHeadDim; ++r) {
      EXPECT_EQ(kd[r * 34 + 1], 0x3c) << arch << " row " << r;  // the block's scale moved with it
      ASSERT_EQ(kd[r * 34 + 2 + 5], r) << arch << " row " << r;
    }
    EXPECT_EQ(m.weights->find("model.layers.0.self_attn.q_proj.weight")->dtype, DType::F32);
    EXPECT_EQ(m.weights->find("model.layers.0.self_attn.v_proj.weight")->dtype, DType::F16);
    std::remove(path.c_str());
  }
}

TEST(GgufModel, Qwen2IsNotPermutedAndHasBias) {
  Options o;
  o.arch = "qwen2";
  o.permuted = false;
  o.with_bias = true;
  o.with_output = true;
  const std::string path = write_file("qwen2_model", model_file(o).bytes());
  ModelFiles m = open_gguf_model(path);
  EXPECT_EQ(m.config.architecture, "qwen2");
  EXPECT_TRUE(m.config.attention_bias);
  EXPECT_FALSE(m.config.tie_word_embeddings);
  check_rows(*m.weights, true);
  const WeightInfo* head = m.weights->find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->shape, (std::vector<int64_t>{kVocab, kHidden}));
  std::remove(path.c_str());
}

TEST(GgufModel, LlamaBiasIsUnpermutedToo) {
  Options o;
  o.with_bias = true;
  const std::string path = write_file("llama_bias", model_file(o).bytes());
  ModelFiles m = open_gguf_model(path);
  EXPECT_TRUE(m.config.attention_bias);
  check_rows(*m.weights, true);
  std::remove(path.c_str());
}

TEST(GgufModel, Qwen3HasQkNorm) {
  Options o;
  o.arch = "qwen3";
  o.permuted = false;
  const std::string path = write_file("qwen3_model", model_file(o).bytes());
  ModelFiles m = open_gguf_model(path);
  EXPECT_TRUE(m.config.qk_norm);
  EXPECT_NE(m.weights->find("model.layers.0.self_attn.q_norm.weight"), nullptr);
  check_rows(*m.weights, false);
  std::remove(path.c_str());
}

void expect_model_error(const std::string& name, const Options& o, const std::string& needle) {
  const std::string path = write_file(name, model_file(o).bytes());
  try {
    open_gguf_model(path);
    ADD_FAILURE() << name << ": expected ModelFormatError";
  } catch (const ModelFormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
  }
  std::remove(path.c_str());
}

TEST(GgufModel, UnsupportedArchitecture) {
  Options o;
  o.arch = "gpt2";
  expect_model_error("arch", o, "unsupported GGUF architecture 'gpt2'");
}

TEST(GgufModel, PartialRotary) {
  Options o;
  o.rope_dims = 8;
  expect_model_error("rope_dims", o, "partial rotary");
}

TEST(GgufModel, YarnScalingRejected) {
  Options o;
  o.extra = [](Builder& b) { b.kv_str("llama.rope.scaling.type", "yarn"); };
  expect_model_error("yarn", o, "'yarn'");
}

TEST(GgufModel, TensorOfMissingLayer) {
  Options o;
  o.extra = [](Builder& b) { b.tensor_f32("blk.3.attn_norm.weight", {kHidden}, filled(kHidden, 1)); };
  expect_model_error("layer3", o, "tensor 'blk.3.attn_norm.weight' belongs to layer 3");
}

TEST(GgufModel, EosOutsideVocabulary) {
  Options o;
  o.extra = [](Builder& b) { b.kv_u32("tokenizer.ggml.eot_token_id", 99); };
  expect_model_error("eot", o, "'tokenizer.ggml.eot_token_id' is 99");
}

TEST(GgufModel, WrongShapeNamesTheHfTensor) {
  Options o;
  o.extra = [](Builder& b) { b.tensor_f32("output.weight", {kHidden, 3}, filled(kHidden * 3, 0)); };
  expect_model_error("shape", o, "lm_head.weight");
}

}  // namespace
}  // namespace ember
