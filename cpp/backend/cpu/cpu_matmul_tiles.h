// How both CPU matmuls (plain and block-quantized weights) split their work over threads: column
// blocks that stream the weights for a few rows, L2-sized ones that reuse them for many.
#pragma once

#include <algorithm>
#include <cstdint>

namespace ember::cpu {

// Weight bytes a thread keeps hot while it sweeps a block of activation rows (about half an L2).
constexpr int64_t kWeightBlockBytes = 256 * 1024;
constexpr int64_t kRowChunk = 64;
constexpr int64_t kBlocksPerThread = 4;
// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelMacs = 1 << 15;

// Calls tile(t0, t1, n0, n1) for every (row chunk, column block) of out[rows, cols], in parallel.
// Column blocks: a few per thread for a handful of rows (nothing to reuse, stream the weights;
// handed out dynamically so a thread slowed by other load does not hold the op back); L2-sized
// for more rows so each weight block is reused by every row of a chunk. Blocks are multiples of
// four columns, which keeps the register tiles whole.
template <typename Tile>
void for_each_matmul_tile(int64_t rows, int64_t cols, int64_t k, int64_t weight_row_bytes, int num_threads,
                          Tile&& tile) {
  const int64_t threads = std::max(1, num_threads);
  int64_t nb = (cols + kBlocksPerThread * threads - 1) / (kBlocksPerThread * threads);
  if (rows > 4) nb = std::min(nb, std::max<int64_t>(8, kWeightBlockBytes / std::max<int64_t>(1, weight_row_bytes)));
  nb = std::max<int64_t>(4, (nb + 3) / 4 * 4);
  const int64_t n_blocks = (cols + nb - 1) / nb;
  const int64_t row_chunk = rows > kRowChunk ? kRowChunk : rows;
  const int64_t r_blocks = (rows + row_chunk - 1) / row_chunk;
  const int64_t work = rows * cols * k;
  const int64_t items = n_blocks * r_blocks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (work >= kParallelMacs && threads > 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t rb = it / n_blocks, cb = it % n_blocks;
    const int64_t t0 = rb * row_chunk, t1 = std::min(rows, t0 + row_chunk);
    const int64_t n0 = cb * nb, n1 = std::min(cols, n0 + nb);
    tile(t0, t1, n0, n1);
  }
}

}  // namespace ember::cpu
