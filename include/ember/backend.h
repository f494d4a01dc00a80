// The op interface the model forward is written against. The CPU backend is the fp32 reference
// (the oracle); the CUDA backend must agree with it. Ops take views in the backend's own memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ember/sampling.h"
#include "ember/tensor.h"

namespace ember {

// Per-step metadata on the host, built once per step and shared by every layer.
struct StepMeta {
  std::vector<int32_t> token_ids;      // [T]
  std::vector<int32_t> positions;      // [T]
  std::vector<int32_t> slot_mapping;   // [T] page * block_size + offset in the KV pool
  std::vector<int32_t> query_start;    // [N+1] token offsets of each sequence's chunk
  std::vector<int32_t> seq_lens;       // [N] context length after this step (past + chunk)
  std::vector<int32_t> block_tables;   // [N * max_blocks_per_seq], -1 padded
  std::vector<int32_t> logits_indices; // rows of the final hidden state that get logits
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 16;
};

// The same metadata in backend memory (for the CPU backend these point at the host vectors).
struct DeviceStep {
  const int32_t* token_ids = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* slot_mapping = nullptr;
  const int32_t* query_start = nullptr;
  const int32_t* seq_lens = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* logits_indices = nullptr;
  int32_t num_tokens = 0;
  int32_t num_seqs = 0;
  int32_t num_logits = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 16;
  int32_t max_query_len = 0;
  int32_t max_seq_len = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual Buffer allocate(size_t bytes, const std::string& what) = 0;
  virtual void copy_to_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void synchronize() = 0;
  virtual DType activation_dtype(DType weight_dtype) const = 0;
  // dtype in which a matmul weight of file dtype `src` is stored on this backend.
  virtual DType weight_storage_dtype(DType src) const = 0;

  // Makes `meta` visible to the ops of this step; valid until the next call.
  virtual DeviceStep upload_step(const StepMeta& meta) = 0;

  // ---- ops (x: activations [T, ...]; norm weights, biases and inv_freq are F32) ----
  // out[t] = table[ids[t]]
  virtual void embed(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) = 0;
  // Row-wise RMSNorm over the last dim (= w.numel()): out = x / rms(x) * w.
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // residual += delta; out = rms_norm(residual) * w.
  virtual void add_rms_norm(Tensor& residual, const Tensor& delta, const Tensor& w, float eps,
                            Tensor& out) = 0;
  // out[T, N] = x[T, K] @ w[N, K]^T (+ bias[N]).
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) = 0;
  // In-place rotary embedding of q [T, Hq, D] and k [T, Hk, D] at positions[t];
  // inv_freq has D/2 F32 entries; neox = rotate-half layout, else interleaved pairs.
  virtual void rope(Tensor& q, Tensor& k, const int32_t* positions, const float* inv_freq,
                    bool neox) = 0;
  // cache[slot_mapping[t]] = k[t] / v[t]; caches are [num_slots, Hk, D].
  virtual void kv_write(const Tensor& k, const Tensor& v, const int32_t* slot_mapping,
                        Tensor& k_cache, Tensor& v_cache) = 0;
  // Fused slice + rope + kv_write for qkv [T, (Hq + 2 Hk) * D] (q | k | v columns, no q/k norm):
  // q = rope(q columns) into q [T, Hq, D]; cache[slot_mapping[t]] = rope(k), v; negative slots skipped.
  // Equals slice_columns x3, rope and kv_write exactly, in the same arithmetic and rounding.
  virtual void qkv_rope_kv_write(const Tensor& qkv, int64_t num_heads, int64_t num_kv_heads,
                                 int64_t head_dim, const int32_t* positions, const float* inv_freq,
                                 bool neox, const int32_t* slot_mapping, Tensor& q, Tensor& k_cache,
                                 Tensor& v_cache) = 0;
  // Causal attention of q [T, Hq, D] over each sequence's paged past plus its chunk (GQA).
  virtual void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const DeviceStep& step, float scale, Tensor& out) = 0;
  // out[T, F] = silu(x[:, :F]) * x[:, F:] for x [T, 2F].
  virtual void silu_mul(const Tensor& x, Tensor& out) = 0;
  // a += b
  virtual void add(Tensor& a, const Tensor& b) = 0;
  // out[t, :] = x[t, begin : begin + out.cols] for x [T, C] and out [T, out.cols].
  virtual void slice_columns(const Tensor& x, int64_t begin, Tensor& out) = 0;
  // out[i] = x[idx[i]]
  virtual void gather_rows(const Tensor& x, const int32_t* idx, int64_t n, Tensor& out) = 0;
  // t[i] = random_fill_value(seed, i, scale, offset) (ember/random_fill.h), in t's dtype: builds
  // random-weight models directly in the backend's memory.
  virtual void fill_random(Tensor& t, uint64_t seed, float scale, float offset) = 0;
  // Samples one token per row of logits [N, V]; results land on the host.
  virtual void sample(const Tensor& logits, const std::vector<SamplingRow>& rows,
                      std::vector<SampleResult>* out) = 0;

  // ---- optional: replaying captured op sequences (CUDA graphs of decode steps) ----
  virtual bool supports_graphs() const { return false; }
  // Changes whenever a capture of this step's ops would bake in different sizes or buffers.
  virtual uint64_t graph_key(const DeviceStep& step) const { return 0; }
  virtual void capture_begin() { throw_no_graphs(); }
  virtual int capture_end() { throw_no_graphs(); }
  // Ends a capture that failed midway and discards it.
  virtual void capture_abort() {}
  virtual void replay(int graph_id) { throw_no_graphs(); }

 private:
  [[noreturn]] void throw_no_graphs() const;
};

// The fp32-accumulating reference backend; num_threads 0 = all cores.
std::unique_ptr<Backend> make_cpu_backend(int num_threads);

}  // namespace ember
