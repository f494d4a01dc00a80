// Paged causal attention on the CPU, one (token, head) per work item: keys in position order, an
// exact two-pass softmax, and canonical dot products, so a query's output never depends on its batch.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_simd.h"
#include "ember/error.h"

namespace ember::cpu {
namespace {

// Where the key/value of position p of a sequence lives in the paged cache.
struct Pages {
  const int32_t* table;
  int64_t block_size, row;  // row = hk * d elements per slot
  int64_t offset(int64_t p) const {
    return (int64_t{table[p / block_size]} * block_size + p % block_size) * row;
  }
};

// Pass 1: probs[p] = scale * q.k[p] for p <= pos; returns the max. Pass 2: acc += exp(probs[p] - m)
// * v[p] in position order; returns the sum of the weights. The AVX2 and portable variants perform
// the same roundings (fma per lane, canonical dot), so they agree bitwise.
#if EMBER_X86
template <DType CT>
EMBER_AVX2 float scores_avx2(const float* q, const char* kc, const Pages& pg, int64_t pos, int64_t d,
                             float scale, float* probs) {
  const size_t es = dtype_size(CT);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p <= pos; ++p) {
    probs[p] = dot_avx2<CT>(q, kc + pg.offset(p) * es, d) * scale;
    m = std::max(m, probs[p]);
  }
  return m;
}

template <DType CT>
EMBER_AVX2 float weigh_avx2(const float* probs, float m, const char* vc, const Pages& pg,
                            int64_t pos, int64_t d, float* acc) {
  const size_t es = dtype_size(CT);
  const int64_t d8 = d & ~int64_t{7};
  float sum = 0.0f;
  for (int64_t p = 0; p <= pos; ++p) {
    const float e = std::exp(probs[p] - m);
    sum += e;
    const char* v = vc + pg.offset(p) * es;
    const __m256 ev = _mm256_set1_ps(e);
    for (int64_t i = 0; i < d8; i += 8) {
      _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(ev, load8<CT>(v, i), _mm256_loadu_ps(acc + i)));
    }
    for (int64_t i = d8; i < d; ++i) acc[i] = std::fma(e, load_scalar<CT>(v, i), acc[i]);
  }
  return sum;
}
#endif

template <DType CT>
float scores_portable(const float* q, const char* kc, const Pages& pg, int64_t pos, int64_t d,
                      float scale, float* probs) {
  const size_t es = dtype_size(CT);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p <= pos; ++p) {
    probs[p] = dot_portable<CT>(q, kc + pg.offset(p) * es, d) * scale;
    m = std::max(m, probs[p]);
  }
  return m;
}

template <DType CT>
float weigh_portable(const float* probs, float m, const char* vc, const Pages& pg, int64_t pos,
                     int64_t d, float* acc) {
  const size_t es = dtype_size(CT);
  float sum = 0.0f;
  for (int64_t p = 0; p <= pos; ++p) {
    const float e = std::exp(probs[p] - m);
    sum += e;
    const char* v = vc + pg.offset(p) * es;
    for (int64_t i = 0; i < d; ++i) acc[i] = std::fma(e, load_scalar<CT>(v, i), acc[i]);
  }
  return sum;
}

template <bool Avx, DType CT>
void run(const AttentionArgs& a, const std::vector<int32_t>& token_seq, int num_threads) {
  const int64_t num_tokens = static_cast<int64_t>(token_seq.size());
  const int64_t items = num_tokens * a.hq;
  const int64_t group = a.hq / a.hk;
  const char* kc = static_cast<const char*>(a.k_cache);
  const char* vc = static_cast<const char*>(a.v_cache);
  int32_t max_len = 0;
  for (int32_t s = 0; s < a.num_seqs; ++s) max_len = std::max(max_len, a.seq_lens[s]);

#pragma omp parallel num_threads(num_threads) if (num_threads > 1 && items > 1)
  {
    std::vector<float> probs(static_cast<size_t>(max_len));
    std::vector<float> acc(static_cast<size_t>(a.d));
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t t = it / a.hq, h = it % a.hq;
      const int32_t s = token_seq[t];
      const int32_t qlen = a.query_start[s + 1] - a.query_start[s];
      const int64_t pos = int64_t{a.seq_lens[s]} - qlen + (t - a.query_start[s]);
      const Pages pg{a.block_tables + int64_t{s} * a.max_blocks_per_seq, a.block_size, a.hk * a.d};
      const int64_t kv_off = (h / group) * a.d * int64_t(dtype_size(CT));
      const float* q = a.q + (t * a.hq + h) * a.d;
      std::fill(acc.begin(), acc.end(), 0.0f);
      float sum;
#if EMBER_X86
      if constexpr (Avx) {
        const float m = scores_avx2<CT>(q, kc + kv_off, pg, pos, a.d, a.scale, probs.data());
        sum = weigh_avx2<CT>(probs.data(), m, vc + kv_off, pg, pos, a.d, acc.data());
      } else
#endif
      {
        const float m = scores_portable<CT>(q, kc + kv_off, pg, pos, a.d, a.scale, probs.data());
        sum = weigh_portable<CT>(probs.data(), m, vc + kv_off, pg, pos, a.d, acc.data());
      }
      float* o = a.out + (t * a.hq + h) * a.d;
      const float inv = 1.0f / sum;
      for (int64_t i = 0; i < a.d; ++i) o[i] = acc[i] * inv;
    }
  }
}

template <bool Avx>
void run_dtype(const AttentionArgs& a, const std::vector<int32_t>& token_seq, int num_threads) {
  switch (a.cache_type) {
    case DType::F32: run<Avx, DType::F32>(a, token_seq, num_threads); return;
    case DType::BF16: run<Avx, DType::BF16>(a, token_seq, num_threads); return;
    case DType::F16: run<Avx, DType::F16>(a, token_seq, num_threads); return;
    default: break;
  }
  throw EngineError(std::string("cpu attention: unsupported KV cache dtype ") +
                    dtype_name(a.cache_type));
}

std::string seq_where(int32_t s) { return "cpu attention: sequence " + std::to_string(s) + ": "; }

}  // namespace

void attention(Isa isa, const AttentionArgs& a, int num_threads) {
  if (a.hk <= 0 || a.hq % a.hk != 0) {
    throw EngineError("cpu attention: query heads (" + std::to_string(a.hq) +
                      ") must be a multiple of KV heads (" + std::to_string(a.hk) + ")");
  }
  if (a.block_size <= 0) throw EngineError("cpu attention: block_size must be > 0");
  // Check every page a query will touch before going parallel (no exceptions inside OpenMP).
  std::vector<int32_t> token_seq;
  const int64_t num_pages = a.num_slots / a.block_size;
  for (int32_t s = 0; s < a.num_seqs; ++s) {
    const int32_t q0 = a.query_start[s], q1 = a.query_start[s + 1];
    const int32_t len = a.seq_lens[s];
    if (q1 < q0 || q0 != static_cast<int32_t>(token_seq.size())) {
      throw EngineError(seq_where(s) + "query_start must be non-decreasing from 0");
    }
    if (q1 - q0 > len) {
      throw EngineError(seq_where(s) + "chunk of " + std::to_string(q1 - q0) +
                        " tokens is longer than its context length " + std::to_string(len));
    }
    const int64_t pages = (int64_t{len} + a.block_size - 1) / a.block_size;
    if (pages > a.max_blocks_per_seq) {
      throw EngineError(seq_where(s) + "context length " + std::to_string(len) + " needs " +
                        std::to_string(pages) + " pages but block tables hold " +
                        std::to_string(a.max_blocks_per_seq));
    }
    for (int64_t b = 0; b < pages; ++b) {
      const int32_t page = a.block_tables[int64_t{s} * a.max_blocks_per_seq + b];
      if (page < 0 || page >= num_pages) {
        throw EngineError(seq_where(s) + "block table entry " + std::to_string(b) + " = " +
                          std::to_string(page) + " is outside the KV pool of " +
                          std::to_string(num_pages) + " pages");
      }
    }
    token_seq.insert(token_seq.end(), static_cast<size_t>(q1 - q0), s);
  }
  if (isa == Isa::kAvx2 && EMBER_X86) {
    run_dtype<true>(a, token_seq, num_threads);
  } else {
    run_dtype<false>(a, token_seq, num_threads);
  }
}

}  // namespace ember::cpu
