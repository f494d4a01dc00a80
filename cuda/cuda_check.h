// Every CUDA runtime / cuBLAS call and kernel launch goes through these checks, so that a failure
// becomes an ember::EngineError naming the op or call and the source line, never a silent result.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "ember/error.h"

namespace ember::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw EngineError(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                    "): " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t st, const char* what, const char* file, int line) {
  throw EngineError(std::string("cuBLAS error in ") + what + " (" + file + ":" + std::to_string(line) +
                    "): " + cublasGetStatusName(st) + ": " + cublasGetStatusString(st));
}

}  // namespace ember::cuda

// Checks a runtime call; `call` is stringified so the message names it.
#define EMBER_CUDA_CHECK(call)                                                       \
  do {                                                                               \
    cudaError_t ember_err_ = (call);                                                 \
    if (ember_err_ != cudaSuccess)                                                   \
      ::ember::cuda::throw_cuda_error(ember_err_, #call, __FILE__, __LINE__);        \
  } while (0)

#define EMBER_CUBLAS_CHECK(call)                                                     \
  do {                                                                               \
    cublasStatus_t ember_st_ = (call);                                               \
    if (ember_st_ != CUBLAS_STATUS_SUCCESS)                                          \
      ::ember::cuda::throw_cublas_error(ember_st_, #call, __FILE__, __LINE__);       \
  } while (0)

// After a kernel launch: `op` names the op ("rms_norm", "attention", ...).
#define EMBER_CUDA_CHECK_LAUNCH(op)                                                  \
  do {                                                                               \
    cudaError_t ember_err_ = cudaGetLastError();                                     \
    if (ember_err_ != cudaSuccess)                                                   \
      ::ember::cuda::throw_cuda_error(ember_err_, "launch of " op, __FILE__, __LINE__); \
  } while (0)

// For launchers that return cudaError_t: names the op rather than the whole call text.
#define EMBER_CUDA_CHECK_OP(op, call)                                                \
  do {                                                                               \
    cudaError_t ember_err_ = (call);                                                 \
    if (ember_err_ != cudaSuccess)                                                   \
      ::ember::cuda::throw_cuda_error(ember_err_, op, __FILE__, __LINE__);           \
  } while (0)
