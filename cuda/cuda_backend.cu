// The CUDA implementation of ember::Backend: memory from the device's single arena, ops as the
// kernels of cuda/kernels on one stream, GEMMs through cuBLAS with fp32 accumulation, per-step
// metadata copied once into device buffers that only grow during warm-up.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "cuda_check.h"
#include "device_arena.h"
#include "ember/cuda_backend.h"
#include "ember/error.h"
#include "kernels/launchers.h"
#include "paged_attention_args.h"

namespace ember {
namespace cuda {
namespace {

constexpr size_t kMiB = 1024 * 1024;
constexpr size_t kCublasWorkspace = 32 * kMiB;
constexpr size_t kContextHeadroom = 512 * kMiB;  // left outside the reservation for the CUDA context

std::string shape_of(const Tensor& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

[[noreturn]] void bad(const std::string& op, const std::string& what) {
  throw InvalidArgument("cuda " + op + ": " + what);
}

void require_float(const std::string& op, const char* name, const Tensor& t) {
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    bad(op, std::string(name) + " must be F32, F16 or BF16, got " + dtype_name(t.dtype));
}

void require_same(const std::string& op, const char* a, const Tensor& ta, const char* b, const Tensor& tb) {
  if (ta.dtype != tb.dtype)
    bad(op, std::string(a) + " (" + dtype_name(ta.dtype) + ") and " + b + " (" + dtype_name(tb.dtype) +
                ") must have the same dtype");
}

// Makes `device` current for the scope of a call (stage threads may share a host thread pool).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    EMBER_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) EMBER_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int cur = 0;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
};

// Device scratch that grows (only) when a step needs more than any before it. Growing waits for the
// stream, so it cannot happen while the stream is being captured: ensure() then throws, which makes
// the caller abort the capture and run the step eagerly (graph keys include the scratch pointers).
// With `zeroed`, a new buffer is cleared on the stream before anything later on it runs.
class DeviceScratch {
 public:
  const void* get() const { return buf_.get(); }
  void* ensure(DeviceArena& arena, cudaStream_t stream, size_t bytes, const char* what, bool zeroed = false) {
    if (bytes <= buf_.bytes() && buf_.get()) return buf_.get();
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    EMBER_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone)
      throw EngineError(std::string("cuda: cannot grow ") + what + " while a graph is being captured");
    size_t want = std::max(bytes, buf_.bytes() * 3 / 2);
    if (buf_.get()) EMBER_CUDA_CHECK(cudaStreamSynchronize(stream));  // in-flight work may still read it
    buf_.reset();
    buf_ = arena.allocate(want, what);
    if (zeroed) EMBER_CUDA_CHECK(cudaMemsetAsync(buf_.get(), 0, want, stream));
    return buf_.get();
  }

 private:
  Buffer buf_;
};

// Page-locked host memory for staging copies; grows like DeviceScratch.
class PinnedScratch {
 public:
  ~PinnedScratch() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  void* ensure(size_t bytes) {
    if (bytes <= bytes_ && ptr_) return ptr_;
    size_t want = std::max(bytes, bytes_ * 3 / 2);
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    EMBER_CUDA_CHECK(cudaMallocHost(&ptr_, want));
    bytes_ = want;
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: throw InvalidArgument(std::string("cuda matmul: unsupported dtype ") + dtype_name(t));
  }
}

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

class CudaBackendImpl final : public CudaBackend {
 public:
  explicit CudaBackendImpl(const CudaBackendOptions& opts) : opts_(opts), device_(opts.device) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();
      count = 0;
    }
    if (device_ < 0 || device_ >= count)
      throw EngineError("cuda:" + std::to_string(device_) + " does not exist (" + std::to_string(count) +
                        " CUDA device(s) visible)");
    if (!(opts.memory_utilization > 0.0 && opts.memory_utilization <= 1.0))
      throw InvalidArgument("memory_utilization must be in (0, 1], got " + std::to_string(opts.memory_utilization));
    EMBER_CUDA_CHECK(cudaSetDevice(device_));
    EMBER_CUDA_CHECK(cudaGetDeviceProperties(&props_, device_));
    size_t free_b = 0, total_b = 0;
    EMBER_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    size_t budget = static_cast<size_t>(static_cast<double>(total_b) * opts.memory_utilization);
    if (opts.max_memory > 0) budget = std::min(budget, opts.max_memory);
    if (free_b <= kContextHeadroom)
      throw EngineError("cuda:" + std::to_string(device_) + " has only " + std::to_string(free_b / kMiB) +
                        " MiB free; cannot reserve device memory");
    budget = std::min(budget, free_b - kContextHeadroom);
    arena_ = DeviceArena::create(device_, budget);

    EMBER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    EMBER_CUDA_CHECK(cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming));
    EMBER_CUDA_CHECK(cudaEventCreateWithFlags(&items_done_, cudaEventDisableTiming));
    EMBER_CUBLAS_CHECK(cublasCreate(&cublas_));
    EMBER_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    cublas_ws_ = arena_->allocate(kCublasWorkspace, "the cuBLAS workspace");
    EMBER_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_ws_.get(), kCublasWorkspace));
    EMBER_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));  // no TF32 for F32 models
  }

  ~CudaBackendImpl() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (cudaGraphExec_t g : graphs_) cudaGraphExecDestroy(g);
    if (cublas_) cublasDestroy(cublas_);
    if (upload_done_) cudaEventDestroy(upload_done_);
    if (items_done_) cudaEventDestroy(items_done_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }
  int device() const override { return device_; }
  size_t reserved_bytes() const override { return arena_->capacity(); }
  size_t reserve_remaining() const override { return arena_->free_bytes(); }
  bool use_graphs() const override { return opts_.use_graphs; }
  void* native_stream() const override { return stream_; }

  // ---- memory ----
  Buffer allocate(size_t bytes, const std::string& what) override { return arena_->allocate(bytes, what); }

  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    DeviceGuard g(device_);
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
    EMBER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    DeviceGuard g(device_);
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
    EMBER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void synchronize() override {
    DeviceGuard g(device_);
    EMBER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  DType activation_dtype(DType w) const override {
    if (w == DType::F16 || w == DType::BF16 || w == DType::F32) return w;
    throw InvalidArgument(std::string("cuda backend: no activation dtype for weights of dtype ") + dtype_name(w));
  }
  DType weight_storage_dtype(DType src) const override { return dtype_is_quantized(src) ? DType::BF16 : activation_dtype(src); }

  DeviceStep upload_step(const StepMeta& meta) override;

  // ---- ops ----
  void embed(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    DeviceGuard g(device_);
    require_float("embed", "table", table);
    require_same("embed", "table", table, "out", out);
    if (table.ndim() != 2 || out.numel() != n * table.dim(1))
      bad("embed", "table " + shape_of(table) + " and out " + shape_of(out) + " do not fit " + std::to_string(n) +
                       " ids");
    EMBER_CUDA_CHECK_OP("embed", launch_embedding(table.data, ids, n, table.dim(1), table.dim(0), out.data,
                                                  table.dtype, stream_));
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    DeviceGuard g(device_);
    const int64_t dim = check_norm("rms_norm", x, w, out);
    EMBER_CUDA_CHECK_OP("rms_norm", launch_rms_norm(x.data, w.as<float>(), out.data, x.numel() / dim, dim, eps,
                                                    x.dtype, stream_));
  }

  void add_rms_norm(Tensor& residual, const Tensor& delta, const Tensor& w, float eps, Tensor& out) override {
    DeviceGuard g(device_);
    const int64_t dim = check_norm("add_rms_norm", residual, w, out);
    require_same("add_rms_norm", "residual", residual, "delta", delta);
    if (delta.numel() != residual.numel())
      bad("add_rms_norm", "delta " + shape_of(delta) + " does not match residual " + shape_of(residual));
    EMBER_CUDA_CHECK_OP("add_rms_norm",
                        launch_add_rms_norm(residual.data, delta.data, w.as<float>(), out.data,
                                            residual.numel() / dim, dim, eps, residual.dtype, stream_));
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override;

  void rope(Tensor& q, Tensor& k, const int32_t* positions, const float* inv_freq, bool neox) override {
    DeviceGuard g(device_);
    require_float("rope", "q", q);
    require_same("rope", "q", q, "k", k);
    if (q.ndim() != 3 || k.ndim() != 3 || q.dim(0) != k.dim(0) || q.dim(2) != k.dim(2) || q.dim(2) % 2 != 0)
      bad("rope", "q " + shape_of(q) + " and k " + shape_of(k) + " must be [T, H, D] with the same T and even D");
    EMBER_CUDA_CHECK_OP("rope", launch_rope(q.data, k.data, positions, inv_freq, q.dim(0), q.dim(1), k.dim(1),
                                            q.dim(2), neox, q.dtype, stream_));
  }

  void kv_write(const Tensor& k, const Tensor& v, const int32_t* slot_mapping, Tensor& k_cache,
                Tensor& v_cache) override {
    DeviceGuard g(device_);
    require_float("kv_write", "k", k);
    require_same("kv_write", "k", k, "v", v);
    require_same("kv_write", "k", k, "k_cache", k_cache);
    require_same("kv_write", "k", k, "v_cache", v_cache);
    if (k.shape.empty() || k_cache.shape.empty()) bad("kv_write", "k and the caches need a leading dimension");
    const int64_t T = k.dim(0);
    const int64_t row = T ? k.numel() / T : 0;
    const int64_t cache_row = k_cache.dim(0) ? k_cache.numel() / k_cache.dim(0) : 0;
    if (v.numel() != k.numel() || k_cache.numel() != v_cache.numel() || (T && row != cache_row))
      bad("kv_write", "k " + shape_of(k) + ", v " + shape_of(v) + " and caches " + shape_of(k_cache) + ", " +
                          shape_of(v_cache) + " do not match");
    EMBER_CUDA_CHECK_OP("kv_write", launch_kv_write(k.data, v.data, slot_mapping, k_cache.data, v_cache.data, T, row,
                                                    k.dtype, stream_));
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const DeviceStep& step, float scale,
                 Tensor& out) override;

  void silu_mul(const Tensor& x, Tensor& out) override {
    DeviceGuard g(device_);
    require_float("silu_mul", "x", x);
    require_same("silu_mul", "x", x, "out", out);
    if (x.ndim() != 2 || x.dim(1) % 2 != 0 || out.numel() != x.numel() / 2)
      bad("silu_mul", "x " + shape_of(x) + " must be [T, 2F] and out [T, F], got out " + shape_of(out));
    EMBER_CUDA_CHECK_OP("silu_mul", launch_silu_mul(x.data, out.data, x.dim(0), x.dim(1) / 2, x.dtype, stream_));
  }

  void add(Tensor& a, const Tensor& b) override {
    DeviceGuard g(device_);
    require_float("add", "a", a);
    require_same("add", "a", a, "b", b);
    if (a.numel() != b.numel()) bad("add", "a " + shape_of(a) + " and b " + shape_of(b) + " differ in size");
    EMBER_CUDA_CHECK_OP("add", launch_add(a.data, b.data, a.numel(), a.dtype, stream_));
  }

  void fill_random(Tensor& t, uint64_t seed, float scale, float offset) override {
    DeviceGuard g(device_);
    require_float("fill_random", "t", t);
    EMBER_CUDA_CHECK_OP("fill_random", launch_fill_random(t.data, t.numel(), seed, scale, offset, t.dtype, stream_));
  }

  void slice_columns(const Tensor& x, int64_t begin, Tensor& out) override {
    DeviceGuard g(device_);
    require_float("slice_columns", "x", x);
    require_same("slice_columns", "x", x, "out", out);
    const int64_t T = x.shape.empty() ? 0 : x.dim(0);
    const int64_t C = T ? x.numel() / T : 0, W = T ? out.numel() / T : 0;
    if (out.numel() != T * W || begin < 0 || begin + W > C)
      bad("slice_columns", "columns [" + std::to_string(begin) + ", " + std::to_string(begin + W) + ") of " + shape_of(x));
    EMBER_CUDA_CHECK_OP("slice_columns", launch_slice_columns(x.data, T, C, begin, W, out.data, x.dtype, stream_));
  }

  void qkv_rope_kv_write(const Tensor& qkv, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                         const int32_t* positions, const float* inv_freq, bool neox, const int32_t* slot_mapping,
                         Tensor& q, Tensor& k_cache, Tensor& v_cache) override {
    DeviceGuard g(device_);
    const char* op = "qkv_rope_kv_write";
    require_float(op, "qkv", qkv);
    require_same(op, "qkv", qkv, "q", q);
    require_same(op, "qkv", qkv, "k_cache", k_cache);
    require_same(op, "qkv", qkv, "v_cache", v_cache);
    const int64_t Hq = num_heads, Hk = num_kv_heads, D = head_dim;
    if (Hq <= 0 || Hk <= 0 || D <= 0 || D % 2 != 0)
      bad(op, "heads " + std::to_string(Hq) + "/" + std::to_string(Hk) + " and head dim " + std::to_string(D) +
                  " must be positive with an even head dim");
    const int64_t T = qkv.shape.empty() ? 0 : qkv.dim(0);
    if (qkv.ndim() != 2 || qkv.dim(1) != (Hq + 2 * Hk) * D)
      bad(op, "qkv " + shape_of(qkv) + " must be [T, (Hq + 2 Hk) * D] = [T, " + std::to_string((Hq + 2 * Hk) * D) + "]");
    if (q.ndim() != 3 || q.dim(0) != T || q.dim(1) != Hq || q.dim(2) != D)
      bad(op, "q " + shape_of(q) + " must be [T, Hq, D] for qkv " + shape_of(qkv));
    if (k_cache.shape.empty() || k_cache.shape != v_cache.shape || k_cache.numel() != k_cache.dim(0) * Hk * D)
      bad(op, "caches " + shape_of(k_cache) + ", " + shape_of(v_cache) + " must match with Hk * D elements per slot");
    EMBER_CUDA_CHECK_OP(op, launch_qkv_rope_kv_write(qkv.data, positions, inv_freq, slot_mapping, q.data, k_cache.data,
                                                     v_cache.data, T, Hq, Hk, D, neox, qkv.dtype, stream_));
  }

  void gather_rows(const Tensor& x, const int32_t* idx, int64_t n, Tensor& out) override {
    DeviceGuard g(device_);
    require_float("gather_rows", "x", x);
    require_same("gather_rows", "x", x, "out", out);
    if (x.shape.empty()) bad("gather_rows", "x needs a leading dimension");
    const int64_t row = x.dim(0) ? x.numel() / x.dim(0) : 0;
    if (out.numel() != n * row)
      bad("gather_rows", "out " + shape_of(out) + " does not hold " + std::to_string(n) + " rows of x " + shape_of(x));
    EMBER_CUDA_CHECK_OP("gather_rows", launch_gather_rows(x.data, idx, n, row, out.data, x.dtype, stream_));
  }

  void sample(const Tensor& logits, const std::vector<SamplingRow>& rows, std::vector<SampleResult>* out) override;

  // ---- graphs ----
  void capture_begin() override {
    DeviceGuard g(device_);
    EMBER_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
  }
  int capture_end() override {
    DeviceGuard g(device_);
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    EMBER_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    EMBER_CUDA_CHECK_OP("capture_end (cudaGraphInstantiate)", err);
    graphs_.push_back(exec);
    return static_cast<int>(graphs_.size()) - 1;
  }
  bool supports_graphs() const override { return opts_.use_graphs; }
  uint64_t graph_key(const DeviceStep& step) const override {
    uint64_t h = 0xcbf29ce484222325ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
    mix(static_cast<uint64_t>(step.num_tokens));
    mix(static_cast<uint64_t>(step.num_seqs));
    mix(static_cast<uint64_t>(step.num_logits));
    mix(static_cast<uint64_t>(step.max_blocks_per_seq));
    mix(static_cast<uint64_t>(step.block_size));
    mix(static_cast<uint64_t>(step.max_query_len));
    mix(static_cast<uint64_t>(decode_splits(step.num_seqs, step.max_seq_len)));
    mix(reinterpret_cast<uint64_t>(meta_dev_.get()));
    mix(reinterpret_cast<uint64_t>(attn_partials_.get()));
    mix(reinterpret_cast<uint64_t>(attn_arrivals_.get()));
    mix(reinterpret_cast<uint64_t>(step.query_start));
    return h;
  }
  void capture_abort() override {
    DeviceGuard g(device_);
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
  }
  void replay(int id) override {
    DeviceGuard g(device_);
    if (id < 0 || id >= static_cast<int>(graphs_.size()))
      throw InvalidArgument("cuda replay: no graph " + std::to_string(id));
    EMBER_CUDA_CHECK(cudaGraphLaunch(graphs_[id], stream_));
  }

 private:
  const PrefillWorkItem* prefill_items(int group);

  // Split-K factor of decode attention: a block serves one sequence, kv head and up to 8 of its
  // query heads; split the context until there are about two blocks per SM, with at least 64 keys
  // (one 16-key tile per warp) per split, and none below 256 keys, where the merge costs more than
  // it saves. A power of two (at most 64), so that a growing context changes the graph key only a
  // handful of times. Measured on H200 (tests/cuda/test_cuda_decode_attention_bench.cc).
  int decode_splits(int num_seqs, int max_seq_len) const {
    constexpr int kMinSplitKeys = 64;
    if (max_seq_len < 256 || attn_kv_heads_ <= 0) return 1;
    const int group = attn_heads_ / attn_kv_heads_;
    const int base = std::max(1, num_seqs * attn_kv_heads_ * ((group + 7) / 8));
    const int want = std::min((2 * props_.multiProcessorCount + base - 1) / base, max_seq_len / kMinSplitKeys);
    int splits = 1;
    while (splits * 2 <= std::min(want, 64)) splits *= 2;
    return splits;
  }
  int attn_heads_ = 0;
  int attn_kv_heads_ = 0;

  int64_t check_norm(const std::string& op, const Tensor& x, const Tensor& w, const Tensor& out) {
    require_float(op, "x", x);
    require_same(op, "x", x, "out", out);
    if (w.dtype != DType::F32) bad(op, std::string("norm weight must be F32, got ") + dtype_name(w.dtype));
    const int64_t dim = w.numel();
    if (dim <= 0 || x.numel() % dim != 0 || out.numel() != x.numel())
      bad(op, "x " + shape_of(x) + ", w " + shape_of(w) + " and out " + shape_of(out) + " do not match");
    return dim;
  }

  CudaBackendOptions opts_;
  int device_;
  cudaDeviceProp props_{};
  std::shared_ptr<DeviceArena> arena_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t upload_done_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  Buffer cublas_ws_;
  bool capturing_ = false;
  std::vector<cudaGraphExec_t> graphs_;

  // Step metadata: staged in pinned memory, one copy into meta_dev_.
  PinnedScratch meta_host_;
  DeviceScratch meta_dev_;
  bool upload_pending_ = false;
  DeviceStep last_step_;
  std::vector<int32_t> host_query_start_;
  int items_group_ = 0;  // GQA group size the current work items were built for (0 = none)
  int num_prefill_items_ = 0;
  const PrefillWorkItem* items_ptr_ = nullptr;
  PinnedScratch items_host_;
  DeviceScratch items_dev_;
  bool items_pending_ = false;
  cudaEvent_t items_done_ = nullptr;

  DeviceScratch attn_partials_;
  // Decode's split arrival counters: apart from the partials, whose layout the prefill split path
  // reuses differently, so that nothing but the decode kernels (which leave them zero) writes them.
  DeviceScratch attn_arrivals_;
  // Sampling: parameters up, ids/logprobs down.
  PinnedScratch sample_host_;
  DeviceScratch sample_dev_;
  DeviceScratch sample_work_;
};

DeviceStep CudaBackendImpl::upload_step(const StepMeta& meta) {
  DeviceGuard g(device_);
  if (capturing_) throw EngineError("cuda upload_step: cannot be called while a graph is being captured");
  const int64_t T = static_cast<int64_t>(meta.token_ids.size());
  const int64_t N = meta.query_start.empty() ? 0 : static_cast<int64_t>(meta.query_start.size()) - 1;
  if (meta.positions.size() != static_cast<size_t>(T) || meta.slot_mapping.size() != static_cast<size_t>(T))
    bad("upload_step", "positions and slot_mapping must have one entry per token (" + std::to_string(T) + ")");
  if (meta.seq_lens.size() != static_cast<size_t>(N) ||
      meta.block_tables.size() != static_cast<size_t>(N * meta.max_blocks_per_seq))
    bad("upload_step", "seq_lens must have " + std::to_string(N) + " entries and block_tables " +
                           std::to_string(N * meta.max_blocks_per_seq));
  if (meta.block_size <= 0) bad("upload_step", "block_size must be > 0");

  DeviceStep step;
  step.num_tokens = static_cast<int32_t>(T);
  step.num_seqs = static_cast<int32_t>(N);
  step.num_logits = static_cast<int32_t>(meta.logits_indices.size());
  step.max_blocks_per_seq = meta.max_blocks_per_seq;
  step.block_size = meta.block_size;
  for (int64_t s = 0; s < N; ++s) {
    step.max_query_len = std::max(step.max_query_len, meta.query_start[s + 1] - meta.query_start[s]);
    step.max_seq_len = std::max(step.max_seq_len, meta.seq_lens[s]);
  }
  const std::vector<int32_t>* parts[] = {&meta.token_ids,    &meta.positions,    &meta.slot_mapping,
                                         &meta.query_start,  &meta.seq_lens,     &meta.block_tables,
                                         &meta.logits_indices};
  size_t offsets[7];
  size_t total = 0;
  for (int i = 0; i < 7; ++i) {
    offsets[i] = total;
    total += align16(parts[i]->size() * sizeof(int32_t));
  }
  char* host = static_cast<char*>(meta_host_.ensure(total + 16));
  if (upload_pending_) EMBER_CUDA_CHECK(cudaEventSynchronize(upload_done_));  // staging still being read
  for (int i = 0; i < 7; ++i)
    if (!parts[i]->empty()) std::memcpy(host + offsets[i], parts[i]->data(), parts[i]->size() * sizeof(int32_t));
  char* dev = static_cast<char*>(meta_dev_.ensure(*arena_, stream_, total + 16, "step metadata"));
  EMBER_CUDA_CHECK(cudaMemcpyAsync(dev, host, total, cudaMemcpyHostToDevice, stream_));
  EMBER_CUDA_CHECK(cudaEventRecord(upload_done_, stream_));
  upload_pending_ = true;

  auto at = [&](int i) { return reinterpret_cast<const int32_t*>(dev + offsets[i]); };
  step.token_ids = at(0);
  step.positions = at(1);
  step.slot_mapping = at(2);
  step.query_start = at(3);
  step.seq_lens = at(4);
  step.block_tables = at(5);
  step.logits_indices = at(6);
  host_query_start_ = meta.query_start;
  items_group_ = 0;  // prefill work items are built by the first attention call of the step
  last_step_ = step;
  return step;
}

void CudaBackendImpl::matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  DeviceGuard g(device_);
  require_float("matmul", "x", x);
  require_same("matmul", "x", x, "w", w);
  require_same("matmul", "x", x, "out", out);
  if (w.ndim() != 2 || x.shape.empty()) bad("matmul", "w must be [N, K] and x [T, K]; got w " + shape_of(w));
  const int64_t N = w.dim(0), K = w.dim(1);
  const int64_t T = x.numel() / std::max<int64_t>(K, 1);
  if (x.numel() != T * K || out.numel() != T * N)
    bad("matmul", "x " + shape_of(x) + " @ w " + shape_of(w) + "^T does not fit out " + shape_of(out));
  if (bias && (bias->dtype != DType::F32 || bias->numel() != N))
    bad("matmul", "bias must be F32 [" + std::to_string(N) + "], got " + dtype_name(bias->dtype) + " " + shape_of(*bias));
  if (T == 0) return;
  if (T <= kGemvCutoffTokens && gemv_supports(x.data, w.data, T, N, K, x.dtype)) {  // decode: bias fused
    EMBER_CUDA_CHECK_OP("matmul", launch_gemv(x.data, w.data, bias ? bias->as<float>() : nullptr, out.data, T, N,
                                              K, x.dtype, stream_));
    return;
  }
  // Row-major out[T, N] = x[T, K] w[N, K]^T is column-major out^T[N, T] = w^T(op T) x^T.
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t dt = cuda_type(x.dtype);
  EMBER_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T),
                                  static_cast<int>(K), &alpha, w.data, dt, static_cast<int>(K), x.data, dt,
                                  static_cast<int>(K), &beta, out.data, dt, static_cast<int>(N),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (bias)
    EMBER_CUDA_CHECK_OP("matmul bias", launch_add_bias(out.data, bias->as<float>(), T, N, out.dtype, stream_));
}

const PrefillWorkItem* CudaBackendImpl::prefill_items(int group) {
  if (items_group_ == group) return items_ptr_;
  std::vector<PrefillWorkItem> items;
  const int64_t N = static_cast<int64_t>(host_query_start_.size()) - 1;
  for (int64_t s = 0; s < N; ++s) {
    const int64_t rows = static_cast<int64_t>(host_query_start_[s + 1] - host_query_start_[s]) * group;
    for (int64_t r = 0; r < rows; r += kPrefillRowsPerTile)
      items.push_back({static_cast<int32_t>(s), static_cast<int32_t>(r)});
  }
  const size_t bytes = std::max<size_t>(items.size(), 1) * sizeof(PrefillWorkItem);
  if (items_pending_) EMBER_CUDA_CHECK(cudaEventSynchronize(items_done_));
  void* host = items_host_.ensure(bytes);
  std::memcpy(host, items.data(), items.size() * sizeof(PrefillWorkItem));
  void* dev = items_dev_.ensure(*arena_, stream_, bytes, "attention work items");
  EMBER_CUDA_CHECK(cudaMemcpyAsync(dev, host, items.size() * sizeof(PrefillWorkItem), cudaMemcpyHostToDevice, stream_));
  EMBER_CUDA_CHECK(cudaEventRecord(items_done_, stream_));
  items_pending_ = true;
  items_group_ = group;
  num_prefill_items_ = static_cast<int>(items.size());
  items_ptr_ = static_cast<const PrefillWorkItem*>(dev);
  return items_ptr_;
}

void CudaBackendImpl::attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const DeviceStep& step,
                                float scale, Tensor& out) {
  DeviceGuard g(device_);
  require_float("attention", "q", q);
  require_same("attention", "q", q, "k_cache", k_cache);
  require_same("attention", "q", q, "v_cache", v_cache);
  require_same("attention", "q", q, "out", out);
  if (q.ndim() != 3 || k_cache.ndim() != 3 || v_cache.shape != k_cache.shape || out.numel() != q.numel() ||
      q.dim(2) != k_cache.dim(2))
    bad("attention", "q " + shape_of(q) + " must be [T, Hq, D], caches " + shape_of(k_cache) +
                         " [slots, Hk, D] and out like q, got out " + shape_of(out));
  const int Hq = static_cast<int>(q.dim(1)), Hk = static_cast<int>(k_cache.dim(1)), D = static_cast<int>(q.dim(2));
  if (Hk <= 0 || Hq % Hk != 0) bad("attention", "query heads " + std::to_string(Hq) + " are not a multiple of kv heads " + std::to_string(Hk));
  if (D > 256) bad("attention", "head_dim " + std::to_string(D) + " > 256 is not supported");
  if (step.query_start != last_step_.query_start)
    bad("attention", "the step metadata was not produced by this backend's latest upload_step");
  if (q.dim(0) != step.num_tokens)
    bad("attention", "q has " + std::to_string(q.dim(0)) + " tokens, the step " + std::to_string(step.num_tokens));
  if (step.num_seqs == 0) return;
  if (step.max_query_len <= 1) {
    attn_heads_ = Hq;
    attn_kv_heads_ = Hk;
    const int splits = decode_splits(step.num_seqs, step.max_seq_len);
    auto a = paged_attention_args<DecodeAttentionArgs>(q, k_cache, v_cache, out, step, Hq, Hk, D, scale);
    if (splits > 1) {
      const size_t per = static_cast<size_t>(step.num_seqs) * Hq * splits;
      char* ws = static_cast<char*>(
          attn_partials_.ensure(*arena_, stream_, per * (D + 2) * sizeof(float), "attention split-K partials"));
      a.part_acc = reinterpret_cast<float*>(ws);
      a.part_ml = reinterpret_cast<float*>(ws + per * D * sizeof(float));
      a.arrivals = static_cast<uint32_t*>(attn_arrivals_.ensure(
          *arena_, stream_, static_cast<size_t>(step.num_seqs) * Hq * sizeof(uint32_t), "attention split arrivals",
          /*zeroed=*/true));
    }
    a.num_seqs = step.num_seqs;
    a.num_splits = splits;
    EMBER_CUDA_CHECK_OP("attention (decode)", launch_paged_attention_decode(a, q.dtype, stream_));
    return;
  }
  if (prefill_attention_mma_supported(q.dtype, D)) {
    auto a = paged_attention_args<PrefillMmaArgs>(q, k_cache, v_cache, out, step, Hq, Hk, D, scale);
    a.num_seqs = step.num_seqs;
    a.num_tiles = static_cast<int>(prefill_mma_tiles(host_query_start_, Hq / Hk));
    // Graphs capture decode steps only; a captured prefill keeps to one split, since growing the
    // workspace waits for the stream. Eagerly, ensure() waits before freeing a smaller workspace.
    a.num_splits = capturing_ ? 1 : prefill_attention_mma_splits(a.num_tiles, Hk, step.max_seq_len);
    if (a.num_splits > 1) {
      const size_t per = static_cast<size_t>(step.num_tokens) * Hq * a.num_splits;
      char* ws = static_cast<char*>(
          attn_partials_.ensure(*arena_, stream_, per * (D + 2) * sizeof(float), "attention split-K partials"));
      a.part_acc = reinterpret_cast<float*>(ws);
      a.part_ml = reinterpret_cast<float*>(ws + per * D * sizeof(float));
    }
    EMBER_CUDA_CHECK_OP("attention (prefill, tensor cores)", launch_prefill_attention_mma(a, q.dtype, stream_));
    return;
  }
  auto a = paged_attention_args<PrefillAttentionArgs>(q, k_cache, v_cache, out, step, Hq, Hk, D, scale);
  a.items = prefill_items(Hq / Hk);
  a.num_items = num_prefill_items_;
  EMBER_CUDA_CHECK_OP("attention (prefill)", launch_prefill_attention(a, q.dtype, stream_));
}

void CudaBackendImpl::sample(const Tensor& logits, const std::vector<SamplingRow>& rows,
                             std::vector<SampleResult>* out) {
  DeviceGuard g(device_);
  if (capturing_) throw EngineError("cuda sample: cannot be called while a graph is being captured");
  require_float("sample", "logits", logits);
  if (logits.ndim() != 2 || logits.dim(0) != static_cast<int64_t>(rows.size()))
    bad("sample", "logits " + shape_of(logits) + " must be [" + std::to_string(rows.size()) + ", V]");
  const int64_t N = logits.dim(0), V = logits.dim(1);
  out->clear();
  out->resize(static_cast<size_t>(N));
  if (N == 0) return;

  std::vector<SampleRowParams> params(static_cast<size_t>(N));
  std::vector<PenaltyEntry> pens;
  std::vector<int32_t> bans;
  std::unordered_map<int32_t, std::pair<int32_t, int32_t>> seen;  // token -> (out count, in prompt)
  auto check = [&](const std::vector<int32_t>* ids, const char* what) {
    if (!ids) return;
    for (int32_t t : *ids)
      if (t < 0 || t >= V)
        throw InvalidArgument(std::string("sample: ") + what + " token id " + std::to_string(t) +
                              " is outside the vocabulary [0, " + std::to_string(V) + ")");
  };
  for (int64_t r = 0; r < N; ++r) {
    const SamplingRow& row = rows[static_cast<size_t>(r)];
    if (!row.opts) throw InvalidArgument("sample: row " + std::to_string(r) + " has no sampling options");
    const SamplingOptions& o = *row.opts;
    check(row.prompt_tokens, "prompt");
    check(row.output_tokens, "output");
    if (row.suppress_eos) check(row.eos_ids, "eos");
    SampleRowParams& p = params[static_cast<size_t>(r)];
    p.temperature = o.temperature;
    p.top_k = o.top_k;
    p.top_p = o.top_p;
    p.min_p = o.min_p;
    p.repetition_penalty = o.repetition_penalty;
    p.presence_penalty = o.presence_penalty;
    p.frequency_penalty = o.frequency_penalty;
    p.num_logprobs = std::min(o.logprobs, kMaxTopLogprobs);
    p.uniform = counter_uniform(row.seed, row.step);
    seen.clear();
    if (o.repetition_penalty != 1.0f && row.prompt_tokens)
      for (int32_t t : *row.prompt_tokens) seen[t].second = 1;
    if (row.output_tokens && (o.repetition_penalty != 1.0f || o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f))
      for (int32_t t : *row.output_tokens) seen[t].first += 1;
    p.pen_begin = static_cast<int32_t>(pens.size());
    for (const auto& [t, c] : seen) pens.push_back({t, c.first, c.second});
    p.pen_end = static_cast<int32_t>(pens.size());
    p.ban_begin = static_cast<int32_t>(bans.size());
    if (row.suppress_eos && row.eos_ids) bans.insert(bans.end(), row.eos_ids->begin(), row.eos_ids->end());
    p.ban_end = static_cast<int32_t>(bans.size());
  }

  // One staging block up (params, penalties, bans) and one down (outputs, top logprobs).
  const size_t n_up[3] = {params.size() * sizeof(SampleRowParams), pens.size() * sizeof(PenaltyEntry),
                          bans.size() * sizeof(int32_t)};
  const size_t off_pen = align16(n_up[0]), off_ban = off_pen + align16(n_up[1]), up = off_ban + align16(n_up[2]);
  const size_t off_ids = align16(static_cast<size_t>(N) * sizeof(SampleOutput));
  const size_t off_lps = off_ids + align16(static_cast<size_t>(N) * kMaxTopLogprobs * sizeof(int32_t));
  const size_t down = off_lps + align16(static_cast<size_t>(N) * kMaxTopLogprobs * sizeof(float));
  char* host = static_cast<char*>(sample_host_.ensure(up + down));
  std::memcpy(host, params.data(), n_up[0]);
  if (n_up[1]) std::memcpy(host + off_pen, pens.data(), n_up[1]);
  if (n_up[2]) std::memcpy(host + off_ban, bans.data(), n_up[2]);
  char* dev = static_cast<char*>(sample_dev_.ensure(*arena_, stream_, up + down, "sampling parameters"));
  float* work = static_cast<float*>(
      sample_work_.ensure(*arena_, stream_, static_cast<size_t>(N * V) * sizeof(float), "sampling scratch"));
  char* dout = dev + up;
  // Greedy rows with nothing to adjust (the usual decode) take the many-blocks-per-row path.
  const bool plain_greedy = std::all_of(params.begin(), params.end(), [](const SampleRowParams& p) {
    return (p.temperature < kGreedyTemperature || p.top_k == 1) && p.pen_begin == p.pen_end &&
           p.ban_begin == p.ban_end && p.num_logprobs <= 0;
  });
  if (plain_greedy && N <= 65535) {
    EMBER_CUDA_CHECK_OP("sample (greedy)", launch_greedy_sampling(logits.data, logits.dtype, N, V, work,
                                                                  reinterpret_cast<SampleOutput*>(dout), stream_));
  } else {
    EMBER_CUDA_CHECK(cudaMemcpyAsync(dev, host, up, cudaMemcpyHostToDevice, stream_));
    EMBER_CUDA_CHECK_OP("sample",
                      launch_sampling(logits.data, logits.dtype, N, V, reinterpret_cast<SampleRowParams*>(dev),
                                      reinterpret_cast<PenaltyEntry*>(dev + off_pen),
                                      reinterpret_cast<int32_t*>(dev + off_ban), work,
                                      reinterpret_cast<SampleOutput*>(dout), reinterpret_cast<int32_t*>(dout + off_ids),
                                      reinterpret_cast<float*>(dout + off_lps), stream_));
  }
  EMBER_CUDA_CHECK(cudaMemcpyAsync(host + up, dout, down, cudaMemcpyDeviceToHost, stream_));
  EMBER_CUDA_CHECK(cudaStreamSynchronize(stream_));

  const char* hout = host + up;
  const auto* res = reinterpret_cast<const SampleOutput*>(hout);
  const auto* ids = reinterpret_cast<const int32_t*>(hout + off_ids);
  const auto* lps = reinterpret_cast<const float*>(hout + off_lps);
  std::vector<float> row_logits;
  for (int64_t r = 0; r < N; ++r) {
    SampleResult& sr = (*out)[static_cast<size_t>(r)];
    sr.token = res[r].token;
    sr.logprob = res[r].logprob;
    for (int j = 0; j < params[static_cast<size_t>(r)].num_logprobs && j < V; ++j)
      sr.top_logprobs.emplace_back(ids[r * kMaxTopLogprobs + j], lps[r * kMaxTopLogprobs + j]);
    if (rows[static_cast<size_t>(r)].opts->return_logits) {
      const size_t es = dtype_size(logits.dtype);
      std::vector<uint16_t> half;
      sr.logits.resize(static_cast<size_t>(V));
      const char* src = static_cast<const char*>(logits.data) + static_cast<size_t>(r * V) * es;
      if (logits.dtype == DType::F32) {
        EMBER_CUDA_CHECK(cudaMemcpy(sr.logits.data(), src, V * es, cudaMemcpyDeviceToHost));
      } else {
        half.resize(static_cast<size_t>(V));
        EMBER_CUDA_CHECK(cudaMemcpy(half.data(), src, V * es, cudaMemcpyDeviceToHost));
        for (int64_t i = 0; i < V; ++i)
          sr.logits[i] = logits.dtype == DType::BF16 ? bf16_to_f32(half[i]) : __half2float(__half(__half_raw{half[i]}));
      }
    }
  }
}

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& opts) {
  return std::make_unique<cuda::CudaBackendImpl>(opts);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int parse_cuda_device(const std::string& device) {
  std::string num = device;
  if (device.rfind("cuda:", 0) == 0) num = device.substr(5);
  else if (device == "cuda") num = "0";
  else if (device.empty() || device.find_first_not_of("0123456789") != std::string::npos) return -1;
  if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos)
    throw InvalidArgument("device '" + device + "' is not a CUDA device; expected \"cuda:N\" or \"N\"");
  return std::stoi(num);
}

}  // namespace ember
