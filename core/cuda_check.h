// core's own CUDA calls (streams, events, profiling) fail with one message
// shape. Include after <cuda_runtime.h>, in CUDA builds only.
#pragma once

#include "core/error.h"

namespace deco {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    fail("CUDA ", what, " failed: ", cudaGetErrorString(status),
         ". Rerun with CUDA_LAUNCH_BLOCKING=1 to see which kernel failed before it.");
}

}  // namespace deco
