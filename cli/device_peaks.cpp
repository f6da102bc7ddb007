#include "cli/device_peaks.h"

#include <algorithm>
#include <chrono>

#include "core/rng.h"
#include "kernels/ops.h"
#include "kernels/runtime.h"

namespace deco::cli {
namespace {

// The best of at least 4 rounds, and of as many more as fit in about a
// quarter second (at most 400): the first round warms up (cuBLASLt's
// heuristic, page faults), and a GPU found idle needs some hundred
// milliseconds of work before its clocks are up, far more than a few rounds
// of a millisecond each (a low peak would inflate every "of floor" figure).
template <typename F> double best_seconds(F&& run) {
  double best = 1e300, spent = 0.0;
  for (int round = 0; round < 400 && (round < 4 || spent < 0.25); ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spent += s;
    if (round > 0) best = std::min(best, s);
  }
  return best;
}

}  // namespace

Device bench_device(const Config& config, const LaunchInfo& launch) {
  select_local_device(launch);
  set_cpu_threads(config.training.threads);
  const Device device = config.training.device == "cuda" ? Device::CUDA : Device::CPU;
  if (device == Device::CUDA && cuda_device_count() == 0)
    fail(config.source, ": training.device is cuda, but no GPU is visible to this process; check nvidia-smi, "
         "or --set training.device=cpu.");
  return device;
}

std::string bench_device_label(Device device) {
  return device == Device::CUDA ? cuda_device_description() : "cpu, " + std::to_string(cpu_threads()) + " threads";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

void fill_normal(const Tensor& t, uint64_t seed) {
  Buffer host(DType::F32, Device::CPU, t.shape()), typed(t.dtype(), Device::CPU, t.shape());
  Rng rng(seed);
  for (int64_t i = 0; i < host.numel(); ++i) host.data<float>()[i] = static_cast<float>(rng.normal());
  ops::copy(typed, host);  // the dtype, on the host
  ops::copy(t, typed);     // then to t's device
}

double measured_peak_flops(Device device, int64_t n, DType dtype) {
  Buffer a(dtype, device, {n, n}), b(dtype, device, {n, n}), c(dtype, device, {n, n});
  fill_normal(a, 7);
  fill_normal(b, 7);
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
