// Out-of-line helpers for the Tensor view; shape_str is what every shape-mismatch error prints,
// so all of them read the same way: [4096, 11008].
#include "ember/tensor.h"

namespace ember {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  s += "]";
  return s;
}

}  // namespace ember
