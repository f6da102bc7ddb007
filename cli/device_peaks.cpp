#include "cli/device_peaks.h"

#include <algorithm>
#include <chrono>

#include "core/rng.h"
#include "kernels/ops.h"

namespace deco::cli {
namespace {

template <typename F> double best_seconds(F&& run) {
  double best = 1e300;
  for (int round = 0; round < 4; ++round) {  // the first round warms up (cuBLASLt's heuristic, page faults)
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (round > 0) best = std::min(best, s);
  }
  return best;
}

}  // namespace

double measured_peak_flops(Device device, int64_t n, DType dtype) {
  Buffer a(dtype, device, {n, n}), b(dtype, device, {n, n}), c(dtype, device, {n, n});
  {
    Buffer h(DType::F32, Device::CPU, {n, n}), staged(dtype, Device::CPU, {n, n});
    Rng rng(7);
    for (int64_t i = 0; i < n * n; ++i) h.data<float>()[i] = static_cast<float>(rng.normal());
    ops::copy(staged, h);
    ops::copy(a, staged);
    ops::copy(b, staged);
  }
  device_synchronize(device);
  const double s = best_seconds([&] {
    ops::gemm(c.tensor().matrix(), a.tensor().matrix(), false, b.tensor().matrix(), true, 1.0, 0.0);
    device_synchronize(device);
  });
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / s;
}

double measured_bandwidth(Device device, int64_t bytes) {
  const int64_t n = bytes / static_cast<int64_t>(sizeof(float));
  Buffer src(DType::F32, device, {n}), dst(DType::F32, device, {n});  // zero-filled, so every page is mapped
  device_synchronize(device);
  const double s = best_seconds([&] {
    ops::copy(dst, src);
    device_synchronize(device);
  });
  return 2.0 * static_cast<double>(n * static_cast<int64_t>(sizeof(float))) / s;
}

}  // namespace deco::cli
