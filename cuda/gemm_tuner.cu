// The measured GEMM choice of the CUDA backend: cuBLASLt candidates timed once per shape bucket on
// the real operands, so that prefill chunks do not pay for cuBLAS's wave-quantised default.
#include "gemm_tuner.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cuda_check.h"

namespace ember::cuda {
namespace {

// A batch of timed launches should last at least this long so that event resolution and launch
// jitter do not decide; and a candidate must beat heuristic #0 by kMinGain to replace it.
constexpr float kMinBatchMs = 0.2f;
constexpr int kMaxReps = 16;
constexpr int kRounds = 3;
constexpr float kMinGain = 0.01f;
constexpr int kMaxAlign = 256;

std::string shape_text(int64_t m, int64_t n, int64_t k, int dtype) {
  const char* dt = dtype == CUDA_R_16BF ? "bf16" : dtype == CUDA_R_16F ? "f16" : "f32";
  return "[" + std::to_string(m) + " x " + std::to_string(k) + "] @ [" + std::to_string(n) + " x " +
         std::to_string(k) + "]^T " + dt;
}

[[noreturn]] void lt_failed(cublasStatus_t st, const std::string& what, const char* file, int line) {
  throw_cublas_error(st, what.c_str(), file, line);
}

// Checks a cuBLASLt call, naming the GEMM shape in the message.
#define EMBER_LT_CHECK(call, shape)                                                \
  do {                                                                             \
    cublasStatus_t ember_st_ = (call);                                             \
    if (ember_st_ != CUBLAS_STATUS_SUCCESS)                                        \
      lt_failed(ember_st_, std::string(#call) + " for " + (shape), __FILE__, __LINE__); \
  } while (0)

int pointer_align(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  if (v == 0) return kMaxAlign;
  return static_cast<int>(std::min<uintptr_t>(v & (~v + 1), kMaxAlign));
}

bool tuning_from_env() {
  const char* v = std::getenv("EMBER_GEMM_TUNE");
  return !(v && std::strcmp(v, "0") == 0);
}

}  // namespace

size_t LtGemm::KeyHash::operator()(const Key& k) const {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
  mix(static_cast<uint64_t>(k.m));
  mix(static_cast<uint64_t>(k.n));
  mix(static_cast<uint64_t>(k.k));
  mix(static_cast<uint64_t>(k.dtype));
  mix(static_cast<uint64_t>(k.align));
  return static_cast<size_t>(h);
}

int64_t LtGemm::bucket_of(int64_t M) {
  if (M <= 128) return M;
  int64_t p = 1;
  while (p < M) p *= 2;
  const int64_t g = p / 8;
  return (M + g - 1) / g * g;
}

LtGemm::LtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes)
    : LtGemm(stream, workspace, workspace_bytes, Options{tuning_from_env(), 8}) {}

LtGemm::LtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes, Options opts)
    : stream_(stream), workspace_(workspace), workspace_bytes_(workspace_bytes), opts_(opts) {
  opts_.max_candidates = std::clamp(opts_.max_candidates, 1, 32);
  try {
    EMBER_CUBLAS_CHECK(cublasLtCreate(&handle_));
    EMBER_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    EMBER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    EMBER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    EMBER_CUDA_CHECK(cudaEventCreate(&start_));
    EMBER_CUDA_CHECK(cudaEventCreate(&stop_));
  } catch (...) {
    release();  // the destructor does not run for a constructor that throws
    throw;
  }
}

LtGemm::~LtGemm() { release(); }

void LtGemm::release() {
  if (stop_) cudaEventDestroy(stop_);
  if (start_) cudaEventDestroy(start_);
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (handle_) cublasLtDestroy(handle_);
  stop_ = start_ = nullptr;
  desc_ = nullptr;
  handle_ = nullptr;
}

bool LtGemm::run(const void* x, const void* w, void* out, int64_t T, int64_t N, int64_t K, cudaDataType_t dtype) {
  if (dtype != CUDA_R_16F && dtype != CUDA_R_16BF) return false;
  if (T <= 0 || N <= 0 || K <= 0) return false;
  constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
  if (T > kMaxDim || N > kMaxDim || K > kMaxDim) return false;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  EMBER_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  const int align = std::min({pointer_align(x), pointer_align(w), pointer_align(out)});
  const Key key{T, N, K, static_cast<int>(dtype), align};
  Plan& plan = plan_for(key, x, w, out, capture != cudaStreamCaptureStatusNone);
  if (!plan.ok) return false;
  EMBER_LT_CHECK(launch(plan, plan.algo, x, w, out), shape_text(T, N, K, dtype));
  ++stats_.calls;
  return true;
}

int LtGemm::chosen_candidate(int64_t T, int64_t N, int64_t K, cudaDataType_t dtype) const {
  auto it = choices_.find(Key{bucket_of(T), N, K, static_cast<int>(dtype), kMaxAlign});
  return it == choices_.end() ? -1 : it->second.index;
}

LtGemm::Plan& LtGemm::plan_for(const Key& exact, const void* x, const void* w, void* out, bool capturing) {
  const bool may_time = opts_.tune && !capturing;
  auto it = plans_.find(exact);
  if (it != plans_.end() && (it->second.tuned || !it->second.ok || !may_time)) return it->second;

  if (it == plans_.end()) {
    Plan fresh;
    const auto dt = static_cast<cudaDataType_t>(exact.dtype);
    const std::string shape = shape_text(exact.m, exact.n, exact.k, exact.dtype);
    EMBER_LT_CHECK(cublasLtMatrixLayoutInit(&fresh.a, dt, exact.k, exact.n, exact.k), shape);  // w, read transposed
    EMBER_LT_CHECK(cublasLtMatrixLayoutInit(&fresh.b, dt, exact.k, exact.m, exact.k), shape);  // x
    EMBER_LT_CHECK(cublasLtMatrixLayoutInit(&fresh.c, dt, exact.n, exact.m, exact.n), shape);  // out
    it = plans_.emplace(exact, fresh).first;
    ++stats_.plans;
  }
  Plan& plan = it->second;

  Key bucket = exact;
  bucket.m = bucket_of(exact.m);
  if (auto c = choices_.find(bucket); c != choices_.end()) {
    // Another M of the bucket was timed: its algorithm, where cuBLASLt accepts it for this M.
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t st = cublasLtMatmulAlgoCheck(handle_, desc_, &plan.a, &plan.b, &plan.c, &plan.c,
                                                      &c->second.algo, &check);
    if (st == CUBLAS_STATUS_SUCCESS && check.workspaceSize <= workspace_bytes_) {
      plan.algo = c->second.algo;
      plan.ok = true;
      plan.tuned = true;
      return plan;
    }
    choose(plan, exact, x, w, out, false);
    plan.tuned = true;  // the bucket's choice does not fit this M; heuristic #0 from now on
    if (plan.ok) ++stats_.heuristic_only;
    else ++stats_.unsupported;
    return plan;
  }

  const int index = choose(plan, exact, x, w, out, may_time);
  if (!plan.ok) {
    ++stats_.unsupported;
    plan.tuned = true;  // nothing to retry
  } else if (may_time) {
    choices_[bucket] = Choice{plan.algo, index};
    plan.tuned = true;
    ++stats_.tunings;
  } else {
    plan.tuned = false;
    ++stats_.heuristic_only;
  }
  return plan;
}

int LtGemm::choose(Plan& plan, const Key& exact, const void* x, const void* w, void* out, bool timed) {
  const std::string shape = shape_text(exact.m, exact.n, exact.k, exact.dtype);
  cublasLtMatmulPreference_t pref = nullptr;
  EMBER_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref), shape);
  struct PrefGuard {
    cublasLtMatmulPreference_t p;
    ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
  } pref_guard{pref};
  const uint64_t ws = workspace_bytes_;
  const uint32_t align = static_cast<uint32_t>(exact.align);
  EMBER_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
                 shape);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    EMBER_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align)), shape);

  std::vector<cublasLtMatmulHeuristicResult_t> found(static_cast<size_t>(opts_.max_candidates));
  int n_found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, desc_, &plan.a, &plan.b, &plan.c, &plan.c, pref,
                                                           opts_.max_candidates, found.data(), &n_found);
  if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
    lt_failed(st, "cublasLtMatmulAlgoGetHeuristic for " + shape, __FILE__, __LINE__);
  std::vector<cublasLtMatmulAlgo_t> cands;
  if (st == CUBLAS_STATUS_SUCCESS)
    for (int i = 0; i < n_found; ++i)
      if (found[i].state == CUBLAS_STATUS_SUCCESS && found[i].workspaceSize <= workspace_bytes_)
        cands.push_back(found[i].algo);
  plan.ok = !cands.empty();
  if (!plan.ok) return -1;
  plan.algo = cands[0];
  if (!timed || cands.size() == 1) return 0;

  // Warm-up, once each; a candidate cuBLASLt refuses to launch is dropped.
  std::vector<bool> usable(cands.size(), true);
  cublasStatus_t first_failure = CUBLAS_STATUS_SUCCESS;
  size_t n_usable = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    const cublasStatus_t s = launch(plan, cands[i], x, w, out);
    if (s != CUBLAS_STATUS_SUCCESS) {
      usable[i] = false;
      if (first_failure == CUBLAS_STATUS_SUCCESS) first_failure = s;
      cudaGetLastError();  // a refused launch must not look like the next op's error
    } else {
      ++n_usable;
    }
  }
  if (n_usable == 0) lt_failed(first_failure, "cublasLtMatmul (every heuristic candidate) for " + shape, __FILE__, __LINE__);

  auto time_batch = [&](size_t i, int reps) {
    EMBER_CUDA_CHECK(cudaEventRecord(start_, stream_));
    for (int r = 0; r < reps; ++r) EMBER_LT_CHECK(launch(plan, cands[i], x, w, out), shape);
    EMBER_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    EMBER_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    EMBER_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms / static_cast<float>(reps);
  };
  const size_t probe = usable[0] ? 0 : static_cast<size_t>(std::find(usable.begin(), usable.end(), true) - usable.begin());
  const float estimate = std::max(time_batch(probe, 1), 1e-4f);
  const int reps = std::clamp(static_cast<int>(kMinBatchMs / estimate) + 1, 1, kMaxReps);

  std::vector<float> best(cands.size(), std::numeric_limits<float>::infinity());
  for (int round = 0; round < kRounds; ++round)  // interleaved, so that clock drift hits every candidate
    for (size_t i = 0; i < cands.size(); ++i)
      if (usable[i]) best[i] = std::min(best[i], time_batch(i, reps));
  size_t win = static_cast<size_t>(std::min_element(best.begin(), best.end()) - best.begin());
  if (win != 0 && usable[0] && best[win] > best[0] * (1.0f - kMinGain)) win = 0;
  plan.algo = cands[win];
  return static_cast<int>(win);
}

cublasStatus_t LtGemm::launch(Plan& plan, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w,
                              void* out) {
  const float alpha = 1.0f, beta = 0.0f;
  return cublasLtMatmul(handle_, desc_, &alpha, w, &plan.a, x, &plan.b, &beta, out, &plan.c, out, &plan.c, &algo,
                        workspace_, workspace_bytes_, stream_);
}

}  // namespace ember::cuda
