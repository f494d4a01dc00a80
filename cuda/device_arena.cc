// First-fit sub-allocation inside the device's single reservation, with neighbours coalesced on
// free; the mutex lets buffers be released from any stage or engine thread.
#include "device_arena.h"

#include <cstdio>
#include <iterator>

#include "cuda_check.h"

namespace ember::cuda {

namespace {
std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}
}  // namespace

std::shared_ptr<DeviceArena> DeviceArena::create(int device, size_t bytes) {
  bytes = (bytes / kAlignment) * kAlignment;
  if (bytes == 0) throw EngineError("device arena on cuda:" + std::to_string(device) + ": reservation size is 0");
  EMBER_CUDA_CHECK(cudaSetDevice(device));
  void* base = nullptr;
  cudaError_t err = cudaMalloc(&base, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw EngineError("could not reserve " + mib(bytes) + " MiB on cuda:" + std::to_string(device) + " (" +
                      mib(free_b) + " MiB free of " + mib(total_b) + " MiB): " + cudaGetErrorString(err));
  }
  return std::shared_ptr<DeviceArena>(new DeviceArena(device, base, bytes));
}

DeviceArena::DeviceArena(int device, void* base, size_t bytes)
    : device_(device), base_(static_cast<char*>(base)), capacity_(bytes), free_total_(bytes) {
  free_[0] = bytes;
}

DeviceArena::~DeviceArena() {
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(device_);
  cudaFree(base_);  // errors at teardown cannot be acted upon
  cudaSetDevice(prev);
}

Buffer DeviceArena::allocate(size_t bytes, const std::string& what) {
  size_t need = ((bytes == 0 ? 1 : bytes) + kAlignment - 1) / kAlignment * kAlignment;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    size_t off = it->first;
    size_t rest = it->second - need;
    free_.erase(it);
    if (rest > 0) free_[off + need] = rest;
    used_[off] = need;
    free_total_ -= need;
    std::shared_ptr<DeviceArena> self = shared_from_this();
    return Buffer(base_ + off, bytes, [self](void* p) { self->release(p); });
  }
  std::string frag;
  if (free_total_ >= need) frag = " (fragmented: largest free block " + mib(largest_free_locked()) + " MiB)";
  throw EngineError("out of device memory: needed " + mib(need) + " MiB for " + what + ", " + mib(free_total_) +
                    " MiB free of the " + mib(capacity_) + " MiB reservation on cuda:" + std::to_string(device_) +
                    frag);
}

void DeviceArena::release(void* ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t off = static_cast<size_t>(static_cast<char*>(ptr) - base_);
  auto u = used_.find(off);
  if (u == used_.end()) return;  // not ours: nothing sane to do inside a deleter
  size_t size = u->second;
  used_.erase(u);
  free_total_ += size;
  auto next = free_.lower_bound(off);
  if (next != free_.end() && off + size == next->first) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      prev->second += size;
      return;
    }
  }
  free_[off] = size;
}

size_t DeviceArena::free_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return free_total_;
}

size_t DeviceArena::largest_free_block() const {
  std::lock_guard<std::mutex> lock(mu_);
  return largest_free_locked();
}

size_t DeviceArena::largest_free_locked() const {
  size_t best = 0;
  for (const auto& [off, size] : free_) best = size > best ? size : best;
  return best;
}

}  // namespace ember::cuda
