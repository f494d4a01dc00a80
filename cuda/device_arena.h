// One cudaMalloc reservation per device, taken at start-up and sub-allocated for weights, workspace
// and the KV pool, so that nothing calls cudaMalloc/cudaFree after warm-up and OOM is a clear error.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ember/tensor.h"

namespace ember::cuda {

class DeviceArena : public std::enable_shared_from_this<DeviceArena> {
 public:
  static constexpr size_t kAlignment = 256;

  // Reserves `bytes` on `device` (the caller has chosen the size). Throws EngineError on failure.
  static std::shared_ptr<DeviceArena> create(int device, size_t bytes);
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  // An aligned block; the Buffer's deleter hands it back (the arena outlives its buffers).
  // Throws EngineError "needed X MiB for <what>, Y MiB free of the Z MiB reservation on cuda:N".
  Buffer allocate(size_t bytes, const std::string& what);

  size_t capacity() const { return capacity_; }
  size_t free_bytes() const;
  size_t largest_free_block() const;
  int device() const { return device_; }

 private:
  DeviceArena(int device, void* base, size_t bytes);
  void release(void* ptr);
  size_t largest_free_locked() const;

  int device_;
  char* base_;
  size_t capacity_;
  mutable std::mutex mu_;
  std::map<size_t, size_t> free_;  // offset -> size, coalesced
  std::map<size_t, size_t> used_;  // offset -> size
  size_t free_total_;
};

}  // namespace ember::cuda
