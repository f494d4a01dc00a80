// The CPU backend: host memory plus shape/dtype checks in front of the fp32 kernels of this folder.
// It is the oracle other backends are compared against and the engine where there is no GPU.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "backend/cpu/cpu_kernels.h"
#include "ember/backend.h"
#include "ember/random_fill.h"
#include "ember/error.h"

namespace ember {
namespace {

std::string dims(const Tensor& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw EngineError(std::string("cpu ") + op + ": " + what);
}

void require_f32(const Tensor& t, const char* op, const char* name) {
  require(t.dtype == DType::F32, op,
          std::string(name) + " must be F32, got " + dtype_name(t.dtype) + " " + dims(t));
}

// Rows of a tensor whose last dimension is `width`.
int64_t rows_of(const Tensor& t, int64_t width, const char* op, const char* name) {
  require(width > 0 && t.ndim() >= 1 && t.dim(-1) == width, op,
          std::string(name) + " " + dims(t) + " must have last dimension " + std::to_string(width));
  return t.numel() / width;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads)
      : threads_(num_threads > 0 ? num_threads : std::max(1, omp_get_max_threads())),
        isa_(cpu::detect_isa()) {}

  std::string name() const override { return "cpu"; }

  Buffer allocate(size_t bytes, const std::string& what) override {
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, rounded);
    if (!p) {
      throw EngineError("cpu allocate: out of host memory allocating " + std::to_string(bytes) +
                        " bytes for " + what);
    }
    return Buffer(p, bytes, [](void* q) { std::free(q); });
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}
  DType activation_dtype(DType) const override { return DType::F32; }
  // F16 stays F16: the AVX2 path widens it with F16C as fast as BF16, at half the bytes of F32;
  // Q4_0 / Q4_1 / Q8_0 stay blocks, which the quantized matmul reads directly.
  DType weight_storage_dtype(DType src) const override { return src; }

  DeviceStep upload_step(const StepMeta& meta) override {
    meta_ = meta;
    DeviceStep d;
    d.token_ids = meta_.token_ids.data();
    d.positions = meta_.positions.data();
    d.slot_mapping = meta_.slot_mapping.data();
    d.query_start = meta_.query_start.data();
    d.seq_lens = meta_.seq_lens.data();
    d.block_tables = meta_.block_tables.data();
    d.logits_indices = meta_.logits_indices.data();
    d.num_tokens = static_cast<int32_t>(
        meta_.token_ids.empty() ? meta_.positions.size() : meta_.token_ids.size());
    d.num_seqs = static_cast<int32_t>(meta_.seq_lens.size());
    d.num_logits = static_cast<int32_t>(meta_.logits_indices.size());
    d.max_blocks_per_seq = meta_.max_blocks_per_seq;
    d.block_size = meta_.block_size;
    for (size_t s = 0; s + 1 < meta_.query_start.size(); ++s) {
      d.max_query_len = std::max(d.max_query_len, meta_.query_start[s + 1] - meta_.query_start[s]);
    }
    for (int32_t len : meta_.seq_lens) d.max_seq_len = std::max(d.max_seq_len, len);
    return d;
  }

  void embed(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    require(table.ndim() == 2, "embed", "table must be 2-D, got " + dims(table));
    const int64_t vocab = table.dim(0), h = table.dim(1);
    require_f32(out, "embed", "out");
    require(rows_of(out, h, "embed", "out") == n, "embed",
            "out " + dims(out) + " must hold " + std::to_string(n) + " rows");
    for (int64_t t = 0; t < n; ++t) {
      if (ids[t] < 0 || ids[t] >= vocab) {
        throw InvalidArgument("cpu embed: token id " + std::to_string(ids[t]) + " at position " +
                              std::to_string(t) + " is outside the vocabulary [0, " +
                              std::to_string(vocab) + ")");
      }
    }
    const size_t row_bytes = dtype_nbytes(table.dtype, h);
    for (int64_t t = 0; t < n; ++t) {
      cpu::to_f32(static_cast<const char*>(table.data) + ids[t] * row_bytes, table.dtype,
                  out.as<float>() + t * h, h);
    }
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    const int64_t d = w.numel();
    require_f32(x, "rms_norm", "x");
    require_f32(w, "rms_norm", "weight");
    require_f32(out, "rms_norm", "out");
    const int64_t rows = rows_of(x, d, "rms_norm", "x");
    require(out.numel() == x.numel(), "rms_norm", "out " + dims(out) + " must match x " + dims(x));
    cpu::rms_norm(isa_, x.as<float>(), w.as<float>(), eps, rows, d, out.as<float>(), threads_);
  }

  void add_rms_norm(Tensor& residual, const Tensor& delta, const Tensor& w, float eps,
                    Tensor& out) override {
    require_f32(residual, "add_rms_norm", "residual");
    require_f32(delta, "add_rms_norm", "delta");
    require(delta.numel() == residual.numel(), "add_rms_norm",
            "delta " + dims(delta) + " must match residual " + dims(residual));
    cpu::add(residual.as<float>(), delta.as<float>(), residual.numel(), threads_);
    rms_norm(residual, w, eps, out);
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override {
    require(w.ndim() == 2, "matmul", "weight must be 2-D [N, K], got " + dims(w));
    const int64_t n = w.dim(0), k = w.dim(1);
    require_f32(x, "matmul", "x");
    require_f32(out, "matmul", "out");
    const int64_t rows = rows_of(x, k, "matmul", "x");
    require(rows_of(out, n, "matmul", "out") == rows, "matmul",
            "out " + dims(out) + " must be [" + std::to_string(rows) + ", " + std::to_string(n) + "]");
    if (bias) {
      require_f32(*bias, "matmul", "bias");
      require(bias->numel() == n, "matmul", "bias " + dims(*bias) + " must have " + std::to_string(n) + " entries");
    }
    if (dtype_is_quantized(w.dtype)) {
      cpu::matmul_quantized(isa_, x.as<float>(), rows, k, w.data, w.dtype, n,
                            bias ? bias->as<float>() : nullptr, out.as<float>(), &act_scratch_, threads_);
      return;
    }
    cpu::matmul(isa_, x.as<float>(), rows, k, w.data, w.dtype, n, bias ? bias->as<float>() : nullptr,
                out.as<float>(), threads_);
  }

  void rope(Tensor& q, Tensor& k, const int32_t* positions, const float* inv_freq,
            bool neox) override {
    require(q.ndim() == 3 && k.ndim() == 3 && q.dim(0) == k.dim(0) && q.dim(2) == k.dim(2), "rope",
            "q " + dims(q) + " and k " + dims(k) + " must be [T, H, D] with equal T and D");
    require(q.dim(2) % 2 == 0, "rope", "head dim " + std::to_string(q.dim(2)) + " must be even");
    require_f32(q, "rope", "q");
    require_f32(k, "rope", "k");
    cpu::rope(q.as<float>(), q.dim(1), k.as<float>(), k.dim(1), q.dim(0), q.dim(2), positions,
              inv_freq, neox, threads_);
  }

  void kv_write(const Tensor& k, const Tensor& v, const int32_t* slot_mapping, Tensor& k_cache,
                Tensor& v_cache) override {
    require_f32(k, "kv_write", "k");
    require_f32(v, "kv_write", "v");
    require(k_cache.ndim() >= 2 && k_cache.shape == v_cache.shape && k_cache.dtype == v_cache.dtype,
            "kv_write", "caches " + dims(k_cache) + " and " + dims(v_cache) + " must match");
    require(k.ndim() >= 1 && k.numel() == v.numel(), "kv_write", "k " + dims(k) + " and v " + dims(v) + " must match");
    const int64_t slots = k_cache.dim(0);
    const int64_t row = k_cache.numel() / std::max<int64_t>(1, slots);
    const int64_t t_count = k.dim(0);
    require(k.numel() == t_count * row, "kv_write",
            "k " + dims(k) + " rows must have the cache's " + std::to_string(row) + " elements per slot");
    for (int64_t t = 0; t < t_count; ++t) {
      const int32_t slot = slot_mapping[t];
      if (slot < 0) continue;  // padding
      require(slot < slots, "kv_write",
              "slot " + std::to_string(slot) + " of token " + std::to_string(t) +
                  " is outside the cache of " + std::to_string(slots) + " slots");
      const size_t off = static_cast<size_t>(slot) * row * dtype_size(k_cache.dtype);
      cpu::from_f32(k.as<float>() + t * row, static_cast<char*>(k_cache.data) + off, k_cache.dtype, row);
      cpu::from_f32(v.as<float>() + t * row, static_cast<char*>(v_cache.data) + off, v_cache.dtype, row);
    }
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 const DeviceStep& step, float scale, Tensor& out) override {
    require(q.ndim() == 3 && k_cache.ndim() == 3 && k_cache.shape == v_cache.shape &&
                k_cache.dtype == v_cache.dtype && k_cache.dim(2) == q.dim(2),
            "attention", "q " + dims(q) + " must be [T, Hq, D] and caches " + dims(k_cache) +
                             " [slots, Hk, D] of one dtype");
    require_f32(q, "attention", "q");
    require_f32(out, "attention", "out");
    require(out.numel() == q.numel(), "attention", "out " + dims(out) + " must match q " + dims(q));
    require(q.dim(0) == (step.num_seqs ? step.query_start[step.num_seqs] : 0), "attention",
            "q has " + std::to_string(q.dim(0)) + " tokens but the step's chunks cover " +
                std::to_string(step.num_seqs ? step.query_start[step.num_seqs] : 0));
    cpu::AttentionArgs a{};
    a.q = q.as<float>();
    a.k_cache = k_cache.data;
    a.v_cache = v_cache.data;
    a.cache_type = k_cache.dtype;
    a.num_slots = k_cache.dim(0);
    a.hq = q.dim(1);
    a.hk = k_cache.dim(1);
    a.d = q.dim(2);
    a.query_start = step.query_start;
    a.seq_lens = step.seq_lens;
    a.block_tables = step.block_tables;
    a.num_seqs = step.num_seqs;
    a.max_blocks_per_seq = step.max_blocks_per_seq;
    a.block_size = step.block_size;
    a.scale = scale;
    a.out = out.as<float>();
    cpu::attention(isa_, a, threads_);
  }

  void silu_mul(const Tensor& x, Tensor& out) override {
    require_f32(x, "silu_mul", "x");
    require_f32(out, "silu_mul", "out");
    const int64_t f = out.ndim() ? out.dim(-1) : 0;
    const int64_t rows = rows_of(x, 2 * f, "silu_mul", "x");
    require(rows_of(out, f, "silu_mul", "out") == rows, "silu_mul",
            "out " + dims(out) + " must be x " + dims(x) + " with half the last dimension");
    cpu::silu_mul(x.as<float>(), rows, f, out.as<float>(), threads_);
  }

  void add(Tensor& a, const Tensor& b) override {
    require_f32(a, "add", "a");
    require_f32(b, "add", "b");
    require(a.numel() == b.numel(), "add", "a " + dims(a) + " and b " + dims(b) + " must match");
    cpu::add(a.as<float>(), b.as<float>(), a.numel(), threads_);
  }

  void fill_random(Tensor& t, uint64_t seed, float scale, float offset) override {
    const int64_t n = t.numel();
    for (int64_t i = 0; i < n; ++i) {
      const float v = random_fill_value(seed, static_cast<uint64_t>(i), scale, offset);
      switch (t.dtype) {
        case DType::F32: t.as<float>()[i] = v; break;
        case DType::F16: t.as<uint16_t>()[i] = f32_to_f16(v); break;
        case DType::BF16: t.as<uint16_t>()[i] = f32_to_bf16(v); break;
        default: throw InvalidArgument("cpu fill_random: unsupported dtype " + std::string(dtype_name(t.dtype)));
      }
    }
  }

  // Same steps as slice_columns + rope + kv_write (k rotated in a contiguous scratch), so the
  // result is bitwise that of the unfused ops.
  void qkv_rope_kv_write(const Tensor& qkv, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                         const int32_t* positions, const float* inv_freq, bool neox,
                         const int32_t* slot_mapping, Tensor& q, Tensor& k_cache, Tensor& v_cache) override {
    const char* op = "qkv_rope_kv_write";
    const int64_t hq = num_heads, hk = num_kv_heads, d = head_dim;
    require(hq > 0 && hk > 0 && d > 0 && d % 2 == 0, op,
            "heads " + std::to_string(hq) + "/" + std::to_string(hk) + " and head dim " + std::to_string(d) +
                " must be positive with an even head dim");
    require_f32(qkv, op, "qkv");
    require_f32(q, op, "q");
    const int64_t qw = hq * d, kw = hk * d, cols = qw + 2 * kw;
    const int64_t t_count = rows_of(qkv, cols, op, "qkv");
    require(qkv.ndim() == 2 && q.ndim() == 3 && q.dim(0) == t_count && q.dim(1) == hq && q.dim(2) == d, op,
            "qkv " + dims(qkv) + " must be [T, (Hq + 2 Hk) D] and q " + dims(q) + " [T, Hq, D]");
    require(k_cache.ndim() >= 2 && k_cache.shape == v_cache.shape && k_cache.dtype == v_cache.dtype, op,
            "caches " + dims(k_cache) + " and " + dims(v_cache) + " must match");
    const int64_t slots = k_cache.dim(0);
    require(k_cache.numel() == slots * kw, op,
            "caches " + dims(k_cache) + " must hold Hk * D = " + std::to_string(kw) + " elements per slot");
    if (t_count == 0) return;
    const float* src = qkv.as<float>();
    float* qo = q.as<float>();
    if (k_scratch_.size() < static_cast<size_t>(t_count * kw)) k_scratch_.resize(static_cast<size_t>(t_count * kw));
    float* ks = k_scratch_.data();
    for (int64_t t = 0; t < t_count; ++t) {
      std::memcpy(qo + t * qw, src + t * cols, static_cast<size_t>(qw) * sizeof(float));
      std::memcpy(ks + t * kw, src + t * cols + qw, static_cast<size_t>(kw) * sizeof(float));
    }
    cpu::rope(qo, hq, ks, hk, t_count, d, positions, inv_freq, neox, threads_);
    for (int64_t t = 0; t < t_count; ++t) {
      const int32_t slot = slot_mapping[t];
      if (slot < 0) continue;  // padding
      require(slot < slots, op,
              "slot " + std::to_string(slot) + " of token " + std::to_string(t) + " is outside the cache of " +
                  std::to_string(slots) + " slots");
      const size_t off = static_cast<size_t>(slot) * kw * dtype_size(k_cache.dtype);
      cpu::from_f32(ks + t * kw, static_cast<char*>(k_cache.data) + off, k_cache.dtype, kw);
      cpu::from_f32(src + t * cols + qw + kw, static_cast<char*>(v_cache.data) + off, v_cache.dtype, kw);
    }
  }

  void slice_columns(const Tensor& x, int64_t begin, Tensor& out) override {
    const int64_t T = x.shape.empty() ? 0 : x.dim(0);
    const int64_t C = T ? x.numel() / T : 0, W = T ? out.numel() / T : 0;
    if (x.dtype != out.dtype || out.numel() != T * W || begin < 0 || begin + W > C)
      throw EngineError("cpu slice_columns: columns [" + std::to_string(begin) + ", " + std::to_string(begin + W) +
                        ") of a [" + std::to_string(T) + ", " + std::to_string(C) + "] tensor do not fit");
    const size_t e = dtype_size(x.dtype);
    const char* src = static_cast<const char*>(x.data);
    char* dst = static_cast<char*>(out.data);
    for (int64_t t = 0; t < T; ++t) std::memcpy(dst + t * W * e, src + (t * C + begin) * e, W * e);
  }

  void gather_rows(const Tensor& x, const int32_t* idx, int64_t n, Tensor& out) override {
    require(x.ndim() >= 1 && x.dtype == out.dtype, "gather_rows",
            "x " + dims(x) + " and out must share a dtype");
    const int64_t rows = x.dim(0);
    const size_t row_bytes = rows ? x.nbytes() / rows : 0;
    require(out.nbytes() == row_bytes * n, "gather_rows",
            "out " + dims(out) + " must hold " + std::to_string(n) + " rows of x " + dims(x));
    for (int64_t i = 0; i < n; ++i) {
      require(idx[i] >= 0 && idx[i] < rows, "gather_rows",
              "index " + std::to_string(idx[i]) + " is outside [0, " + std::to_string(rows) + ")");
      std::memcpy(static_cast<char*>(out.data) + i * row_bytes,
                  static_cast<const char*>(x.data) + idx[i] * row_bytes, row_bytes);
    }
  }

  void sample(const Tensor& logits, const std::vector<SamplingRow>& rows,
              std::vector<SampleResult>* out) override {
    require(logits.ndim() == 2, "sample", "logits must be [N, V], got " + dims(logits));
    const int64_t n = logits.dim(0), vocab = logits.dim(1);
    require(static_cast<int64_t>(rows.size()) == n, "sample",
            std::to_string(rows.size()) + " sampling rows for " + std::to_string(n) + " logit rows");
    std::vector<float> converted;
    const float* data = logits.as<float>();
    if (logits.dtype != DType::F32) {
      converted.resize(static_cast<size_t>(logits.numel()));
      cpu::to_f32(logits.data, logits.dtype, converted.data(), logits.numel());
      data = converted.data();
    }
    out->assign(static_cast<size_t>(n), SampleResult{});
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_) if (n > 1 && threads_ > 1)
    for (int64_t i = 0; i < n; ++i) {
      try {
        (*out)[i] = sample_row(data + i * vocab, vocab, rows[i]);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
  }

 private:
  int threads_;
  cpu::Isa isa_;
  StepMeta meta_;
  std::vector<cpu::Q16Block> act_scratch_;  // activations quantized for block-format matmuls
  std::vector<float> k_scratch_;  // rotated k rows of qkv_rope_kv_write before they go to the cache
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace ember
