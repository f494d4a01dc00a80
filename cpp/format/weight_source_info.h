// What a WeightSource knows beyond the public interface, for error messages: where it came from and
// which tensors it holds in a dtype (F64, I8, ...) that cannot serve as a weight.
#pragma once

#include <string>

#include "ember/weights.h"

namespace ember {

// The file or directory a source was read from ("" when the source cannot tell).
std::string weight_source_origin(const WeightSource& src);

// The on-disk dtype name of a tensor that `src` holds but whose dtype has no ember::DType (so
// find() does not return it); "" when there is no such tensor.
std::string unusable_dtype(const WeightSource& src, const std::string& name);

// Path of the file holding such a tensor ("" when there is none).
std::string unusable_dtype_file(const WeightSource& src, const std::string& name);

}  // namespace ember
