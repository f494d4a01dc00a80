// The small-batch fusions of ember::Backend composed from its plain ops: what a backend without
// a fused kernel runs, and what a fused kernel must agree with.
#include "ember/backend.h"

namespace ember {

void Backend::norm_matmul(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor* bias,
                          Tensor& out, Tensor& normed_scratch) {
  rms_norm(x, norm_w, eps, normed_scratch);
  matmul(normed_scratch, w, bias, out);
}

void Backend::norm_matmul_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, Tensor& out,
                                 Tensor& normed_scratch, Tensor& gate_up_scratch) {
  rms_norm(x, norm_w, eps, normed_scratch);
  matmul(normed_scratch, w, nullptr, gate_up_scratch);
  silu_mul(gate_up_scratch, out);
}

void Backend::matmul_add(const Tensor& x, const Tensor& w, Tensor& residual, Tensor& product_scratch) {
  matmul(x, w, nullptr, product_scratch);
  add(residual, product_scratch);
}

}  // namespace ember
