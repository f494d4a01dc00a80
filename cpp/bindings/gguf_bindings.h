// Python access to GGUF files for tests and tools, registered into ember._C by the module:
// gguf_metadata(path), gguf_tensor_infos(path) and gguf_dequantize(path, name) (no renaming, no
// permutation). Header-only so that module.cc's include is all the build needs. Strings from the
// file are untrusted bytes: they are decoded as UTF-8 with replacement, never rejected.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <string>
#include <vector>

#include "ember/error.h"
#include "ember/gguf.h"

namespace ember {
namespace gguf_py {
namespace nb = nanobind;

inline nanobind::object py_str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw nb::python_error();
  return nb::steal(o);
}

inline nanobind::object py_value(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::U8: case GgufValueType::U16: case GgufValueType::U32:
    case GgufValueType::U64:
      return nb::int_(v.u);
    case GgufValueType::I8: case GgufValueType::I16: case GgufValueType::I32:
    case GgufValueType::I64:
      return nb::int_(v.i);
    case GgufValueType::F32: case GgufValueType::F64:
      return nb::float_(v.f);
    case GgufValueType::BOOL:
      return nb::bool_(v.u != 0);
    case GgufValueType::STRING:
      return py_str(v.s);
    case GgufValueType::ARRAY:
      break;
  }
  nb::list out;
  if (v.elem_type == GgufValueType::STRING) {
    for (const std::string& s : v.strings) out.append(py_str(s));
  } else if (v.elem_type == GgufValueType::ARRAY) {
    for (const GgufValue& item : v.items) out.append(py_value(item));
  } else {
    for (uint64_t k = 0; k < v.count; ++k) {
      switch (v.elem_type) {
        case GgufValueType::F32: case GgufValueType::F64:
          out.append(nb::float_(v.array_float(k)));
          break;
        case GgufValueType::BOOL:
          out.append(nb::bool_(v.array_int(k) != 0));
          break;
        case GgufValueType::U64:
          out.append(nb::int_(v.array_uint(k)));
          break;
        default:
          out.append(nb::int_(v.array_int(k)));
      }
    }
  }
  return out;
}

}  // namespace gguf_py

inline void bind_gguf(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  using gguf_py::py_str;
  using gguf_py::py_value;
  m.def(
      "gguf_metadata",
      [](const std::string& path) {
        std::unique_ptr<GgufFile> f;
        {
          nb::gil_scoped_release release;
          f = std::make_unique<GgufFile>(path);
        }
        nb::dict d;
        for (const auto& [key, value] : f->metadata()) d[py_str(key)] = py_value(value);
        return d;
      },
      "path"_a, "Every metadata key of a GGUF file (arrays as lists, strings decoded as UTF-8).");

  m.def(
      "gguf_tensor_infos",
      [](const std::string& path) {
        std::unique_ptr<GgufFile> f;
        {
          nb::gil_scoped_release release;
          f = std::make_unique<GgufFile>(path);
        }
        nb::list out;
        for (const GgufTensorInfo& t : f->tensors()) {
          nb::dict d;
          d["name"] = py_str(t.name);
          d["type"] = std::string(ggml_type_info(t.type)->name);
          nb::list shape;
          for (int64_t x : t.ne) shape.append(x);
          d["shape"] = shape;
          d["offset"] = t.offset;
          out.append(d);
        }
        return out;
      },
      "path"_a, "name, type (ggml name), shape (ggml order: ne[0] first) and data offset of each tensor.");

  m.def(
      "gguf_dequantize",
      [](const std::string& path, const std::string& name) {
        auto values = std::make_unique<std::vector<float>>();
        std::vector<size_t> shape;
        {
          nb::gil_scoped_release release;
          GgufFile f(path);
          const GgufTensorInfo* t = f.find_tensor(name);
          if (!t) throw ModelFormatError(path + ": no tensor named '" + name + "'");
          *values = gguf_dequantize_tensor(f, *t);
          for (int64_t d : t->shape()) shape.push_back(static_cast<size_t>(d));
        }
        float* data = values->data();
        nb::capsule owner(values.release(),
                          [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
        return nb::ndarray<nb::numpy, float>(data, shape.size(), shape.data(), owner);
      },
      "path"_a, "name"_a,
      "The tensor converted to float32 in GGUF's natural row-major shape (ne reversed).");
}

}  // namespace ember
