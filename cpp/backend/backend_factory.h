// Turns a device string ("cpu", "cuda:1", "1") into a backend, so that the engine never needs to
// know which backends a build contains.
#pragma once

#include <memory>
#include <string>

#include "ember/backend.h"
#include "ember/engine.h"
#include "pipeline/transport.h"

namespace ember {

struct DeviceSpec {
  enum class Kind { Cpu, Cuda } kind = Kind::Cpu;
  int index = 0;
  std::string text;
};

DeviceSpec parse_device(const std::string& text);
// `cpu_stages`: how many CPU stages share this machine's cores.
std::unique_ptr<Backend> make_backend(const DeviceSpec& dev, const EngineOptions& opts, int cpu_stages);
// The transport from one stage's backend to the next: CUDA peer copy or pinned host staging
// between GPUs (`mode` auto | peer | host), plain host staging otherwise.
std::unique_ptr<Transport> make_stage_transport(Backend& from, Backend& to, const std::string& mode, size_t max_bytes,
                                                int num_slots);
// Whether make_stage_transport(from, to, mode, ...) gives a peer transport (the cards reach each
// other and `mode` is not "host"); false off CUDA.
bool stage_link_is_peer(Backend& from, Backend& to, const std::string& mode);
// The fence between the last and first stages of a pipeline whose backends run asynchronously
// (CUDA); nullptr where a stage's work is done when its call returns (CPU).
std::unique_ptr<SlotFence> make_slot_fence(Backend& first, Backend& last, int num_slots);
// Bytes of memory the backend can still give out (for sizing the KV pool); 0 = unknown.
size_t backend_free_bytes(Backend& backend);

}  // namespace ember
