// A non-owning view of a tensor in some backend's memory: what ops, weights and activations pass
// around. Ownership lives in Buffer (RAII), so a view never frees anything.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ember/dtype.h"

namespace ember {

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return dtype_nbytes(dtype, numel()); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int ndim() const { return static_cast<int>(shape.size()); }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // Rows [begin, end) of the first dimension, same storage (a block-format row is whole blocks).
  Tensor rows(int64_t begin, int64_t end) const {
    Tensor t = *this;
    int64_t row = numel() / (shape.empty() ? 1 : shape[0]);
    t.data = static_cast<char*>(data) + begin * dtype_nbytes(dtype, row);
    t.shape[0] = end - begin;
    return t;
  }
  Tensor reshaped(std::vector<int64_t> new_shape) const {
    Tensor t = *this;
    t.shape = std::move(new_shape);
    return t;
  }
};

std::string shape_str(const std::vector<int64_t>& shape);

// Owning block of backend memory; the deleter returns it to whoever allocated it.
class Buffer {
 public:
  Buffer() = default;
  Buffer(void* ptr, size_t bytes, std::function<void(void*)> deleter)
      : ptr_(ptr), bytes_(bytes), deleter_(std::move(deleter)) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      swap(o);
    }
    return *this;
  }
  ~Buffer() { reset(); }

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  void reset() {
    if (ptr_ && deleter_) deleter_(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  Tensor view(DType dtype, std::vector<int64_t> shape) const { return Tensor{ptr_, dtype, std::move(shape)}; }

 private:
  void swap(Buffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    std::swap(deleter_, o.deleter_);
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  std::function<void(void*)> deleter_;
};

}  // namespace ember
