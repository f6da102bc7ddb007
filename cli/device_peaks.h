// The device's peaks, measured in the same run as the benchmark that
// divides by them (no table of devices to go stale).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace deco::cli {

// FLOP/s of the best of three n x n x n GEMMs on `device` in `dtype`
// (float32, or bfloat16 with float32 accumulation): what the hardware and
// its BLAS reach on the op that dominates training.
double measured_peak_flops(Device device, int64_t n, DType dtype = DType::F32);
// Bytes/s of the best of three device-to-device copies of `bytes` (counted
// as read + write): the memory bandwidth a streaming kernel can reach.
double measured_bandwidth(Device device, int64_t bytes);

}  // namespace deco::cli
