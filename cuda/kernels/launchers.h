// Host-side entry points of the CUDA kernels: raw device pointers, sizes and a stream, no framework
// types; each returns the launch's cudaError_t so that the backend can name the failing op.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ember/dtype.h"

namespace ember::cuda {

// out[t] = table[ids[t]] for rows of `hidden` elements; ids outside [0, vocab) give a zero row.
cudaError_t launch_embedding(const void* table, const int32_t* ids, int64_t n, int64_t hidden, int64_t vocab,
                             void* out, DType dtype, cudaStream_t stream);

// out = x * rsqrt(mean(x^2) + eps) * w, row-wise; w is F32 [dim].
cudaError_t launch_rms_norm(const void* x, const float* w, void* out, int64_t rows, int64_t dim, float eps,
                            DType dtype, cudaStream_t stream);
// residual += delta (stored in the activation dtype); out = rms_norm(residual) * w.
cudaError_t launch_add_rms_norm(void* residual, const void* delta, const float* w, void* out, int64_t rows,
                                int64_t dim, float eps, DType dtype, cudaStream_t stream);

// In place on q [T, Hq, D] and k [T, Hk, D]; inv_freq F32 [D/2]; neox = rotate-half pairs (i, i+D/2),
// else interleaved pairs (2i, 2i+1).
cudaError_t launch_rope(void* q, void* k, const int32_t* positions, const float* inv_freq, int64_t T, int64_t Hq,
                        int64_t Hk, int64_t D, bool neox, DType dtype, cudaStream_t stream);

// out[T, F] = silu(x[:, :F]) * x[:, F:].
cudaError_t launch_silu_mul(const void* x, void* out, int64_t T, int64_t F, DType dtype, cudaStream_t stream);

// cache[slot_mapping[t]] = k[t], v[t] (rows of Hk*D); negative slots are skipped.
cudaError_t launch_kv_write(const void* k, const void* v, const int32_t* slot_mapping, void* k_cache, void* v_cache,
                            int64_t T, int64_t row_elems, DType dtype, cudaStream_t stream);

// Fused slice + rope + kv_write for qkv [T, (Hq + 2 Hk) D]: q [T, Hq, D] = rope(q columns);
// cache[slot_mapping[t]] = rope(k columns), v columns (rows of Hk*D); negative slots are skipped.
cudaError_t launch_qkv_rope_kv_write(const void* qkv, const int32_t* positions, const float* inv_freq,
                                     const int32_t* slot_mapping, void* q, void* k_cache, void* v_cache, int64_t T,
                                     int64_t Hq, int64_t Hk, int64_t D, bool neox, DType dtype, cudaStream_t stream);

// x[i] = random_fill_value(seed, i, scale, offset) in x's dtype.
cudaError_t launch_fill_random(void* x, int64_t n, uint64_t seed, float scale, float offset, DType dtype,
                               cudaStream_t stream);

// out[t, 0:W] = x[t, begin:begin+W] for x [T, C].
cudaError_t launch_slice_columns(const void* x, int64_t T, int64_t C, int64_t begin, int64_t W, void* out,
                                 DType dtype, cudaStream_t stream);

// a[i] += b[i]
cudaError_t launch_add(void* a, const void* b, int64_t n, DType dtype, cudaStream_t stream);
// out[i] = x[idx[i]] for rows of row_elems.
cudaError_t launch_gather_rows(const void* x, const int32_t* idx, int64_t n, int64_t row_elems, void* out,
                               DType dtype, cudaStream_t stream);
// out[r, c] += bias[c] (bias F32).
cudaError_t launch_add_bias(void* out, const float* bias, int64_t rows, int64_t cols, DType dtype,
                            cudaStream_t stream);

// ---- small-T matmul (decode) ----
// out[T, N] = x[T, K] w[N, K]^T (+ bias[N], F32), fp32 accumulation, for the few-token case where
// streaming the weights at memory bandwidth is all that matters. F16/BF16, 1 <= T <= kGemvMaxTokens,
// K % 8 == 0, x and w 16-byte aligned: gemv_supports says whether a call fits; launch_gemv returns
// cudaErrorInvalidValue for one that does not. No allocation or sync: safe inside graph capture.
// The backend uses it up to kGemvCutoffTokens, where it beats cuBLAS on every Llama-3-8B shape.
constexpr int64_t kGemvMaxTokens = 16;
constexpr int64_t kGemvCutoffTokens = 8;
struct GemvShape {  // all zero = pick from N and the SM count
  int row_groups = 0;  // 8-row groups per block (1 or 2)
  int warps = 0;       // warps per block splitting K (1..16 with one row group, 1..8 with two)
  int unroll = 0;      // 32-k steps per warp with loads in flight together (2, 4; 8 with one row group)
};
bool gemv_supports(const void* x, const void* w, int64_t T, int64_t N, int64_t K, DType dtype);
cudaError_t launch_gemv(const void* x, const void* w, const float* bias, void* out, int64_t T, int64_t N, int64_t K,
                        DType dtype, cudaStream_t stream, GemvShape shape = {});

struct DecodeAttentionArgs {
  const void* q;        // [T, Hq, D], one token per sequence at query_start[s]
  const void* k_cache;  // [num_slots, Hk, D]
  const void* v_cache;
  void* out;            // [T, Hq, D]
  const int32_t* query_start;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  // With num_splits > 1: each split block leaves a partial softmax state here (part_acc 16-byte
  // aligned), and the last of a (sequence, head group)'s split blocks to finish merges them into out.
  float* part_acc;      // [num_seqs, Hq, num_splits, D]
  float* part_ml;       // [num_seqs, Hq, num_splits, 2]
  // Arrival counters, at least num_seqs * Hq; all zero before a launch, and each launch leaves them
  // zero, so a workspace zeroed once serves every later launch and graph replay on its stream.
  // Launches that share them must not overlap (stream order or a chained launch does that).
  uint32_t* arrivals;
  int num_seqs, num_heads, num_kv_heads, head_dim, max_blocks_per_seq, block_size, num_splits;
  float scale;
};
cudaError_t launch_paged_attention_decode(const DecodeAttentionArgs& args, DType dtype, cudaStream_t stream);

// One work item = (sequence, first row) of a 16-row tile of the (query, head-in-group) rows.
struct PrefillWorkItem {
  int32_t seq;
  int32_t row0;
};
struct PrefillAttentionArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  void* out;
  const int32_t* query_start;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  const PrefillWorkItem* items;
  int num_items, num_heads, num_kv_heads, head_dim, max_blocks_per_seq, block_size;
  float scale;
};
constexpr int kPrefillRowsPerTile = 16;
cudaError_t launch_prefill_attention(const PrefillAttentionArgs& args, DType dtype, cudaStream_t stream);

// Tensor-core causal prefill (F16/BF16 with head_dim 64 or 128; others use launch_prefill_attention):
// one block per (tile of kPrefillMmaRows (query, head-in-group) rows of one sequence, kv head, key
// split). The tiles are numbered over the sequences in order, each sequence taking
// ceil(chunk * group / rows). With num_splits > 1 each block walks a share of its tile's keys and
// leaves partial softmax states in part_acc/part_ml; a second kernel merges them into out.
constexpr int kPrefillMmaRows = 128;
constexpr int kPrefillMmaMaxSplits = 64;
bool prefill_attention_mma_supported(DType dtype, int head_dim);
struct PrefillMmaArgs {
  const void* q;        // [T, Hq, D]
  const void* k_cache;  // [num_slots, Hk, D]
  const void* v_cache;
  void* out;            // [T, Hq, D]
  const int32_t* query_start;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  float* part_acc;      // [T, Hq, num_splits, D] when num_splits > 1
  float* part_ml;       // [T, Hq, num_splits, 2]
  int num_seqs, num_tiles, num_heads, num_kv_heads, head_dim, max_blocks_per_seq, block_size;
  int num_splits;       // 1 .. kPrefillMmaMaxSplits; 1 writes out directly
  float scale;
};
// The split count for num_tiles tiles (counted as above) whose longest sequence, past included,
// has max_seq_len keys, on the current device; the partials then take T * Hq * splits * (D + 2) floats.
int prefill_attention_mma_splits(int num_tiles, int num_kv_heads, int max_seq_len);
cudaError_t launch_prefill_attention_mma(const PrefillMmaArgs& args, DType dtype, cudaStream_t stream);
// For the tests and the benchmark: the kernel shapes compiled in; shape -1 is the one
// launch_prefill_attention_mma picks.
int prefill_attention_mma_shapes();
const char* prefill_attention_mma_shape_name(int shape);
cudaError_t launch_prefill_attention_mma_shape(const PrefillMmaArgs& args, DType dtype, int shape, cudaStream_t stream);

// ---- sampling ----
struct SampleRowParams {
  float temperature;     // 0 = greedy
  int32_t top_k;         // <= 0 = off
  float top_p;
  float min_p;
  float repetition_penalty;
  float presence_penalty;
  float frequency_penalty;
  int32_t num_logprobs;  // top logprobs wanted (0 = none)
  int32_t pen_begin;     // penalty entries [pen_begin, pen_end) of the shared list
  int32_t pen_end;
  int32_t ban_begin;     // banned ids (EOS under min_tokens) [ban_begin, ban_end)
  int32_t ban_end;
  double uniform;        // the row's draw, counter_uniform(seed, step), computed on the host
};
struct PenaltyEntry {
  int32_t token;
  int32_t out_count;     // occurrences in the output so far
  int32_t in_prompt;     // 1 when the token occurs in the prompt
};
struct SampleOutput {
  int32_t token;
  float logprob;
};
constexpr int kMaxTopLogprobs = 32;
// logits [N, V] (F32/F16/BF16); work [N, V] F32 scratch; top_ids/top_lps [N, kMaxTopLogprobs].
cudaError_t launch_sampling(const void* logits, DType dtype, int64_t N, int64_t V, const SampleRowParams* rows,
                            const PenaltyEntry* penalties, const int32_t* bans, float* work, SampleOutput* out,
                            int32_t* top_ids, float* top_lps, cudaStream_t stream);
// The same result as launch_sampling for rows that are greedy with no penalties, bans or top
// logprobs, spread over many blocks per row; scratch holds greedy_sampling_scratch_bytes(N, V).
size_t greedy_sampling_scratch_bytes(int64_t N, int64_t V);
cudaError_t launch_greedy_sampling(const void* logits, DType dtype, int64_t N, int64_t V, void* scratch,
                                   SampleOutput* out, cudaStream_t stream);

// A small hand-off between stages (handoff.cu): copies `bytes` from src to dst (another card's
// memory or pinned host memory; 16-byte aligned) with one block, then takes the next number from
// the sender's counter *sent and writes it to *flag.
cudaError_t launch_handoff_send(const void* src, void* dst, size_t bytes, unsigned long long* sent,
                                unsigned long long* flag, cudaStream_t stream);
// One block that takes the next number from the receiver's counter *waited, waits until *flag
// reaches it (traps after 10 minutes) and then, if `staged` is given, copies `bytes` from it
// (pinned host memory) to dst.
cudaError_t launch_handoff_wait(const unsigned long long* flag, unsigned long long* waited, const void* staged,
                                void* dst, size_t bytes, cudaStream_t stream);

}  // namespace ember::cuda
