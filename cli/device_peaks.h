// What the bench commands share: the device they run on, random inputs,
// and the device's peaks, measured in the same run as the benchmark that
// divides by them (no table of devices to go stale).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/launch.h"
#include "trainer/config.h"

namespace deco::cli {

// The device of config's training.device for a single-process benchmark:
// selects this process's GPU and sets the CPU threads (training.threads);
// fails with a clear message when the config asks for a GPU and none is visible.
Device bench_device(const Config& config, const LaunchInfo& launch);
// The device as the bench tables' headers name it: the GPU's description,
// or "cpu, N threads".
std::string bench_device_label(Device device);
// The middle value (the upper one of an even count); 0 for none.
double median(std::vector<double> v);
// t (any dtype and device) = seeded N(0, 1) values, drawn in float32 on the host.
void fill_normal(const Tensor& t, uint64_t seed);

// FLOP/s of the best of three n x n x n GEMMs on `device` in `dtype`
// (float32, or bfloat16 with float32 accumulation): what the hardware and
// its BLAS reach on the op that dominates training.
double measured_peak_flops(Device device, int64_t n, DType dtype = DType::F32);
// Bytes/s of the best of three device-to-device copies of `bytes` (counted
// as read + write): the memory bandwidth a streaming kernel can reach.
double measured_bandwidth(Device device, int64_t bytes);

}  // namespace deco::cli
