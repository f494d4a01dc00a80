// Where programmatic dependent launch is switched on (see launch_chained in common.cuh): only on
// GPUs and kernel images that have it, and never when EMBER_NO_PDL=1 asks for plain launches.
#include <cstdlib>

#include "kernels/common.cuh"

namespace ember::cuda {

bool chained_launch_enabled(int binary_version) {
  static const bool turned_off = [] {
    const char* v = std::getenv("EMBER_NO_PDL");
    return v != nullptr && v[0] == '1';
  }();
  if (turned_off || binary_version < 90) return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major >= 9;
}

}  // namespace ember::cuda
