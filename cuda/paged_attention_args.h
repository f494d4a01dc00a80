// The arguments every paged-attention kernel shares, filled from backend tensors and a step: one
// builder for the CUDA backend's three attention paths and for the tests that launch them directly.
#pragma once

#include <cstdint>
#include <vector>

#include "ember/backend.h"
#include "ember/tensor.h"
#include "kernels/launchers.h"

namespace ember::cuda {

// The fields of decode, prefill and tensor-core prefill attention alike; each caller adds its own
// work decomposition.
template <typename Args>
Args paged_attention_args(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, Tensor& out,
                          const DeviceStep& step, int Hq, int Hk, int D, float scale) {
  Args a{};
  a.q = q.data;
  a.k_cache = k_cache.data;
  a.v_cache = v_cache.data;
  a.out = out.data;
  a.query_start = step.query_start;
  a.seq_lens = step.seq_lens;
  a.block_tables = step.block_tables;
  a.num_heads = Hq;
  a.num_kv_heads = Hk;
  a.head_dim = D;
  a.max_blocks_per_seq = step.max_blocks_per_seq;
  a.block_size = step.block_size;
  a.scale = scale;
  return a;
}

// Tiles of the tensor-core prefill kernel: each sequence's (query, head-in-group) rows, group of
// them per query token, in tiles of kPrefillMmaRows. query_start is the host copy of the step's.
inline int64_t prefill_mma_tiles(const std::vector<int32_t>& query_start, int group) {
  int64_t tiles = 0;
  for (size_t s = 0; s + 1 < query_start.size(); ++s)
    tiles += (static_cast<int64_t>(query_start[s + 1] - query_start[s]) * group + kPrefillMmaRows - 1) /
             kPrefillMmaRows;
  return tiles;
}

}  // namespace ember::cuda
