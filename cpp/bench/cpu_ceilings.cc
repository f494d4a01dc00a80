// The CPU's copy ceiling for `ember bench`: decode on the CPU streams every weight once per token,
// so the memcpy bandwidth of a buffer far larger than the caches is its bound.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "ember/ceilings.h"
#include "ember/error.h"

namespace ember {
namespace {

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "cpu";
}

// Each thread copies its own contiguous slice, so the pages it touches stay on its NUMA node.
void parallel_copy(uint8_t* dst, const uint8_t* src, int64_t bytes, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t slice = (bytes / n + 63) / 64 * 64;
    const int64_t begin = std::min<int64_t>(bytes, t * slice);
    const int64_t end = std::min<int64_t>(bytes, begin + slice);
    if (end > begin) std::memcpy(dst + begin, src + begin, static_cast<size_t>(end - begin));
  }
}

}  // namespace

Ceilings measure_cpu_ceilings(int64_t buffer_bytes, int threads, int repetitions) {
  if (buffer_bytes < (int64_t{1} << 20))
    throw InvalidArgument("measure_cpu_ceilings: buffer_bytes must be at least 1 MiB, got " + std::to_string(buffer_bytes));
  if (repetitions < 1)
    throw InvalidArgument("measure_cpu_ceilings: repetitions must be >= 1, got " + std::to_string(repetitions));
  if (threads <= 0) threads = omp_get_max_threads();

  std::unique_ptr<uint8_t[]> src(new uint8_t[static_cast<size_t>(buffer_bytes)]);
  std::unique_ptr<uint8_t[]> dst(new uint8_t[static_cast<size_t>(buffer_bytes)]);
  // Non-zero contents written by the threads that will copy them (first touch).
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < buffer_bytes; i += 4096) {
    const int64_t end = std::min<int64_t>(buffer_bytes, i + 4096);
    for (int64_t j = i; j < end; ++j) src[j] = static_cast<uint8_t>((j * 131 + 7) & 0xff);
    std::memset(dst.get() + i, 0x5a, static_cast<size_t>(end - i));
  }

  parallel_copy(dst.get(), src.get(), buffer_bytes, threads);  // warm-up
  std::vector<double> seconds;
  for (int r = 0; r < repetitions; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_copy(dst.get(), src.get(), buffer_bytes, threads);
    const auto t1 = std::chrono::steady_clock::now();
    seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  if (std::memcmp(dst.get(), src.get(), static_cast<size_t>(std::min<int64_t>(buffer_bytes, 1 << 20))) != 0 ||
      dst[buffer_bytes - 1] != src[buffer_bytes - 1])
    throw EngineError("measure_cpu_ceilings: the copied buffer does not match its source");
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];

  Ceilings c;
  c.device = "cpu";
  c.device_name = cpu_model_name();
  c.threads = threads;
  c.repetitions = repetitions;
  c.copy_buffer_bytes = buffer_bytes;
  c.copy_bytes_per_s = 2.0 * static_cast<double>(buffer_bytes) / median;
  return c;
}

}  // namespace ember
