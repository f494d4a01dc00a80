// Device strings to backends; builds without CUDA say so plainly instead of failing later.
#include "backend/backend_factory.h"

#include <cctype>

#include "ember/error.h"

#if defined(EMBER_HAVE_CUDA) && __has_include("ember/cuda_backend.h")
#include "ember/cuda_backend.h"
#define EMBER_CUDA_FACTORY 1
#endif

namespace ember {

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

std::unique_ptr<Backend> make_backend(const DeviceSpec& dev, const EngineOptions& opts) {
  if (dev.kind == DeviceSpec::Kind::Cpu) return make_cpu_backend(opts.num_threads);
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

size_t backend_free_bytes(Backend& backend) {
#ifdef EMBER_CUDA_FACTORY
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) return cuda->reserve_remaining();
#endif
  (void)backend;
  return 0;
}

}  // namespace ember
