// Python access to GGUF files for tests and tools: metadata, tensor infos and dequantized tensors
// (no renaming, no permutation), registered into ember._C by the module.
#pragma once

#include <nanobind/nanobind.h>

namespace ember {

// Defines gguf_metadata(path), gguf_tensor_infos(path) and gguf_dequantize(path, name) on m.
void bind_gguf(nanobind::module_& m);

}  // namespace ember
