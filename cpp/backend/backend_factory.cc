// Device strings to backends; builds without CUDA say so plainly instead of failing later.
#include "backend/backend_factory.h"

#include <algorithm>
#include <cctype>
#include <thread>

#include "ember/error.h"

#if defined(EMBER_HAVE_CUDA) && __has_include("ember/cuda_backend.h")
#include "ember/cuda_backend.h"
#include "cuda_transport.h"
#define EMBER_CUDA_FACTORY 1
#endif

namespace ember {

void Backend::throw_no_graphs() const {
  throw EngineError("backend " + name() + " cannot capture or replay op graphs");
}

DeviceSpec parse_device(const std::string& text) {
  DeviceSpec d;
  d.text = text;
  if (text == "cpu") return d;
  std::string num = text;
  if (text.rfind("cuda:", 0) == 0) num = text.substr(5);
  else if (text == "cuda") num = "0";
  bool digits = !num.empty();
  for (char c : num) digits = digits && std::isdigit(static_cast<unsigned char>(c));
  if (!digits || num.size() > 4)
    throw InvalidArgument("devices: '" + text + "' is not a device; use \"cpu\", \"cuda:N\" or a GPU index N");
  d.kind = DeviceSpec::Kind::Cuda;
  d.index = std::stoi(num);
  return d;
}

std::unique_ptr<Backend> make_backend(const DeviceSpec& dev, const EngineOptions& opts, int cpu_stages) {
  if (dev.kind == DeviceSpec::Kind::Cpu) {
    // CPU stages share the cores: each gets its part unless the user chose a thread count.
    int threads = opts.num_threads;
    if (threads <= 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(cpu_stages, 1));
    return make_cpu_backend(threads);
  }
#ifdef EMBER_CUDA_FACTORY
  CudaBackendOptions c;
  c.device = dev.index;
  if (opts.max_memory > 0) c.max_memory = static_cast<size_t>(opts.max_memory);
  if (opts.gpu_memory_utilization > 0) c.memory_utilization = opts.gpu_memory_utilization;
  c.use_graphs = opts.use_cuda_graphs;
  return make_cuda_backend(c);
#else
  throw InvalidArgument("devices: '" + dev.text + "' needs the CUDA backend, but this build of Ember has none "
                        "(reinstall on a machine with the CUDA toolkit, -Ccmake.define.EMBER_CUDA=ON)");
#endif
}

std::unique_ptr<Transport> make_stage_transport(Backend& from, Backend& to, const std::string& mode, size_t max_bytes,
                                                int num_slots) {
#ifdef EMBER_CUDA_FACTORY
  auto* a = dynamic_cast<CudaBackend*>(&from);
  auto* b = dynamic_cast<CudaBackend*>(&to);
  if (a && b) return make_cuda_transport(*a, *b, mode, max_bytes, num_slots);
#endif
  (void)num_slots;
  return make_host_staged_transport(from, to, max_bytes);
}

bool stage_link_is_peer(Backend& from, Backend& to, const std::string& mode) {
#ifdef EMBER_CUDA_FACTORY
  auto* a = dynamic_cast<CudaBackend*>(&from);
  auto* b = dynamic_cast<CudaBackend*>(&to);
  if (a && b) return cuda_transport_is_peer(*a, *b, mode);
#endif
  (void)from, (void)to, (void)mode;
  return false;
}

std::unique_ptr<SlotFence> make_slot_fence(Backend& first, Backend& last, int num_slots) {
#ifdef EMBER_CUDA_FACTORY
  auto* a = dynamic_cast<CudaBackend*>(&first);
  auto* b = dynamic_cast<CudaBackend*>(&last);
  if (a && b) return make_cuda_slot_fence(*a, *b, num_slots);
#endif
  (void)first, (void)last, (void)num_slots;
  return nullptr;
}

size_t backend_free_bytes(Backend& backend) {
#ifdef EMBER_CUDA_FACTORY
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) return cuda->reserve_remaining();
#endif
  (void)backend;
  return 0;
}

}  // namespace ember
