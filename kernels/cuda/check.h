// Every CUDA and cuBLAS call goes through these, so a failure names the
// call, the file and the line, and says what to check.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace deco::cuda {
// The calling thread's cuBLAS handle (created on first use, kept for the
// process lifetime: creating one costs milliseconds). basic.cu.
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
