// Every CUDA and cuBLAS call goes through these, so a failure names the
// call, the file and the line, and says what to check.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "core/stream.h"

namespace deco::cuda {
// The stream every launch, copy and library call of the CUDA backend is
// queued on: the legacy default stream unless a CudaStreamScope says
// otherwise (core/stream.h).
inline cudaStream_t current_stream() { return static_cast<cudaStream_t>(cuda_current_stream()); }
// A cuBLAS handle bound to the current stream: one per thread and stream,
// each with its own workspace, created on first use and kept for the
// process lifetime (creating one costs milliseconds). basic.cu.
cublasHandle_t blas_handle();
}  // namespace deco::cuda

#define DECO_CUDA_CHECK(call)                                                                  \
  do {                                                                                        \
    cudaError_t status_ = (call);                                                             \
    if (status_ != cudaSuccess)                                                               \
      ::deco::fail("CUDA error at ", __FILE__, ":", __LINE__, ": ", #call, " returned ",      \
                   cudaGetErrorString(status_),                                               \
                   ". Check nvidia-smi for the GPU's state and that the driver supports this " \
                   "CUDA version.");                                                          \
  } while (0)

#define DECO_CUBLAS_CHECK(call)                                                                \
  do {                                                                                        \
    cublasStatus_t status_ = (call);                                                          \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::deco::fail("cuBLAS error at ", __FILE__, ":", __LINE__, ": ", #call, " returned ",    \
                   cublasGetStatusString(status_), ". Check the matrix shapes and GPU memory."); \
  } while (0)

namespace deco::cuda {
// A kernel's dynamic shared memory: past 48 KB it must be asked for, once
// per kernel and size (the most asked so far is remembered, not asked again
// on every launch; one GPU per process).
inline void allow_dynamic_smem(const void* kernel, int bytes) {
  if (bytes <= 48 * 1024) return;
  static std::mutex mutex;
  static std::unordered_map<const void*, int> allowed;
  std::lock_guard<std::mutex> lock(mutex);
  int& most = allowed[kernel];
  if (bytes <= most) return;
  DECO_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  most = bytes;
}
template <typename Kernel> void allow_dynamic_smem(Kernel* kernel, int bytes) {
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}
// The most dynamic shared memory a block may ask for on the current GPU
// (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KB on sm_90, 99 KB on
// sm_86/89), read once.
inline int smem_optin_bytes() {
  static const int bytes = [] {
    int device = 0, limit = 0;
    DECO_CUDA_CHECK(cudaGetDevice(&device));
    DECO_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return limit;
  }();
  return bytes;
}
}  // namespace deco::cuda
