// `ember._C.measure_ceilings` for `ember bench` and bench/scaling.py: the hardware ceilings of a
// device, measured now, as a plain dict. Header-only so that module.cc's include is all the build
// needs; a CPU-only build answers for "cpu" and says plainly that a GPU needs the CUDA backend.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "ember/ceilings.h"
#include "ember/error.h"
#ifdef EMBER_HAVE_CUDA
#include "ember/cuda_backend.h"
#endif

namespace ember {
namespace bench_py {
namespace nb = nanobind;
using namespace nb::literals;

inline bool names_cuda_device(const std::string& d) {
  if (d == "cuda" || d.rfind("cuda:", 0) == 0) return true;
  return !d.empty() && d.find_first_not_of("0123456789") == std::string::npos;
}

inline Ceilings measure(const std::string& device) {
  if (device == "cpu") return measure_cpu_ceilings();
  if (!names_cuda_device(device))
    throw InvalidArgument("measure_ceilings: device '" + device + "' is not \"cpu\", \"cuda:N\" or \"N\"");
#ifdef EMBER_HAVE_CUDA
  return measure_cuda_ceilings(parse_cuda_device(device));
#else
  throw InvalidArgument("measure_ceilings: device '" + device + "' needs the CUDA backend, which this build lacks");
#endif
}

inline nb::dict to_dict(const Ceilings& c) {
  nb::dict d;
  d["device"] = c.device;
  d["device_name"] = c.device_name;
  d["repetitions"] = c.repetitions;
  d["copy_buffer_bytes"] = c.copy_buffer_bytes;
  d["copy_bytes_per_s"] = c.copy_bytes_per_s;
  if (c.device == "cpu") {
    d["threads"] = c.threads;
    return d;
  }
  d["device_count"] = c.device_count;
  d["total_memory_bytes"] = c.total_memory_bytes;
  d["matmul_size"] = c.matmul_size;
  d["matmul_flops_per_s"] = c.matmul_flops_per_s;
  d["host_copy_bytes"] = c.host_copy_bytes;
  d["h2d_bytes_per_s"] = c.h2d_bytes_per_s;
  d["d2h_bytes_per_s"] = c.d2h_bytes_per_s;
  nb::list peers;
  for (const auto& p : c.peer) {
    nb::dict e;
    e["src"] = p.src;
    e["dst"] = p.dst;
    e["can_access_peer"] = p.can_access_peer;
    e["bytes_per_s_without_access"] = p.bytes_per_s_without_access;
    e["bytes_per_s_with_access"] = p.bytes_per_s_with_access;
    peers.append(e);
  }
  d["peer"] = peers;
  return d;
}

}  // namespace bench_py

inline void bind_bench(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  m.def(
      "measure_ceilings",
      [](const std::string& device) {
        Ceilings c;
        {
          nb::gil_scoped_release release;
          c = bench_py::measure(device);
        }
        return bench_py::to_dict(c);
      },
      "device"_a,
      "Measures the device's ceilings now: copy bandwidth (bytes read + written per second) and, on a GPU, "
      "the bf16 matmul rate, pinned host <-> device and peer copy bandwidth. Run it before an engine "
      "reserves the card.");
}

}  // namespace ember
