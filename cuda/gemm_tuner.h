// cuBLAS's default GEMM choice wastes waves on prefill-chunk shapes (M = 256..1024 tokens), so the
// backend runs its fp16/bf16 matmuls through cuBLASLt with an algorithm timed once per shape.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>

namespace ember::cuda {

// out[T, N] = x[T, K] w[N, K]^T (row-major, fp32 accumulation) through cuBLASLt, which cuBLAS sees
// column-major as out^T = w^T x^T. The first call of a shape asks the heuristic for a few candidate
// algorithms, times each on the call's own operands (writing only `out`), keeps the fastest and
// leaves that algorithm's result in `out`; later calls of the shape reuse the choice.
//
// Shapes are grouped by M (the token count) into buckets of about 1/8 of an octave (exact below
// 128), so that the odd token counts of mixed prefill/decode steps do not each pay for a tuning;
// a bucket's choice is verified (cublasLtMatmulAlgoCheck) for each exact M it is used for.
//
// Nothing is timed while `stream` is being captured into a graph: a shape first seen during a
// capture gets the heuristic's first algorithm and is tuned at its next eager call.
// EMBER_GEMM_TUNE=0 in the environment turns timing off (heuristic #0 for every shape).
class LtGemm {
 public:
  struct Options {
    bool tune = true;       // false: heuristic #0 only
    int max_candidates = 8; // algorithms asked of the heuristic and timed
  };

  // What the tuner did so far (for tests and benchmarks).
  struct Stats {
    int tunings = 0;          // buckets whose candidates were timed
    int plans = 0;            // exact shapes prepared (layouts + algorithm)
    int heuristic_only = 0;   // of those, planned with heuristic #0 (tuning off, capturing, or check failed)
    int unsupported = 0;      // exact shapes cuBLASLt had no algorithm for (the caller falls back)
    int64_t calls = 0;        // run() calls that ran a GEMM through cuBLASLt
  };

  // `workspace` (device memory of `workspace_bytes`) may be shared with a cuBLAS handle on the
  // same stream. Options come from the environment (EMBER_GEMM_TUNE).
  LtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes);
  LtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes, Options opts);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Runs the GEMM on the stream and returns true, or returns false without touching anything when
  // cuBLASLt is not used for it (F32, which stays on cublasGemmEx without TF32, or a shape the
  // heuristic has no algorithm for); the caller then runs cublasGemmEx. Throws EngineError on a
  // cuBLASLt or CUDA failure.
  bool run(const void* x, const void* w, void* out, int64_t T, int64_t N, int64_t K, cudaDataType_t dtype);

  bool tuning_enabled() const { return opts_.tune; }
  const Stats& stats() const { return stats_; }

  // Candidate index (0 = the heuristic's first) the bucket of this shape settled on, -1 when none
  // was timed yet. Alignment as run() would see 256-byte aligned operands.
  int chosen_candidate(int64_t T, int64_t N, int64_t K, cudaDataType_t dtype) const;

  // The bucket M is grouped into (exposed for tests).
  static int64_t bucket_of(int64_t M);

 private:
  struct Key {
    int64_t m, n, k;
    int dtype;
    int align;  // the smallest alignment of the three operand pointers, in bytes, capped at 256
    bool operator==(const Key& o) const {
      return m == o.m && n == o.n && k == o.k && dtype == o.dtype && align == o.align;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  // An exact shape ready to launch.
  struct Plan {
    cublasLtMatrixLayoutOpaque_t a{}, b{}, c{};
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;     // false: cuBLASLt has no algorithm; the caller falls back
    bool tuned = false;  // false: heuristic #0 stood in because timing was not allowed
  };
  // A bucket's timed choice.
  struct Choice {
    cublasLtMatmulAlgo_t algo{};
    int index = 0;
  };

  void release();
  Plan& plan_for(const Key& exact, const void* x, const void* w, void* out, bool capturing);
  // Fills plan.algo with heuristic #0 and, when `timed`, times the candidates; returns the winner's index.
  int choose(Plan& plan, const Key& exact, const void* x, const void* w, void* out, bool timed);
  cublasStatus_t launch(Plan& plan, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* out);

  cudaStream_t stream_;
  void* workspace_;
  size_t workspace_bytes_;
  Options opts_;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;  // fp32 compute and scale, w transposed: the same for every shape
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::unordered_map<Key, Plan, KeyHash> plans_;      // by exact M
  std::unordered_map<Key, Choice, KeyHash> choices_;  // by bucket of M
  Stats stats_;
};

}  // namespace ember::cuda
