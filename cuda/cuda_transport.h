// Transports between two CUDA stages: a peer copy on a dedicated copy stream where the cards see
// each other, or pinned host staging where they do not (as on many consumer PCIe machines).
#pragma once

#include <memory>
#include <string>

#include "ember/cuda_backend.h"
#include "pipeline/transport.h"

namespace ember {

// mode: "auto" (peer where cudaDeviceCanAccessPeer allows, else host), "peer" (an error where it
// does not), "host". `max_bytes` is the largest transfer, `num_slots` the pipeline slots.
std::unique_ptr<Transport> make_cuda_transport(CudaBackend& from, CudaBackend& to, const std::string& mode,
                                               size_t max_bytes, int num_slots);

// Whether make_cuda_transport(from, to, mode, ...) gives a peer transport.
bool cuda_transport_is_peer(CudaBackend& from, CudaBackend& to, const std::string& mode);

// A SlotFence from CUDA events: recorded on the last stage's stream, waited on by the first's.
std::unique_ptr<SlotFence> make_cuda_slot_fence(CudaBackend& first, CudaBackend& last, int num_slots);

}  // namespace ember
