// The CUDA backend's public face: options, the factory, and what the engine needs to size the KV
// pool from the device reservation and to replay decode steps as CUDA graphs. No CUDA headers here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ember/backend.h"

namespace ember {

struct CudaBackendOptions {
  int device = 0;
  size_t max_memory = 0;            // cap on the reservation in bytes (emulate a smaller card); 0 = none
  double memory_utilization = 0.9;  // fraction of the card's total memory to reserve, (0, 1]
  bool use_graphs = true;           // the engine may capture decode steps (capture_begin/end, replay)
};

class CudaBackend : public Backend {
 public:
  virtual int device() const = 0;
  // The one reservation taken at start-up, and how much of it is not handed out yet.
  virtual size_t reserved_bytes() const = 0;
  virtual size_t reserve_remaining() const = 0;
  virtual bool use_graphs() const = 0;

  // CUDA graphs of the op stream. Everything issued between capture_begin() and capture_end() is
  // recorded, not run; replay(id) runs it again. upload_step() and sample() must stay outside a
  // capture (they copy between host and device); the ops read the step metadata from fixed device
  // buffers, so uploading a step of the same shape and replaying is valid after warm-up.
  virtual void capture_begin() = 0;
  virtual int capture_end() = 0;
  virtual void replay(int graph_id) = 0;
};

// Throws EngineError when the device does not exist or the reservation cannot be made, and
// InvalidArgument for bad options.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& opts);

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws).
int cuda_device_count();

// "cuda:N" or "N" -> N; -1 when `device` does not name a CUDA device (e.g. "cpu").
// Throws InvalidArgument for a malformed CUDA device string ("cuda:x").
int parse_cuda_device(const std::string& device);

}  // namespace ember
