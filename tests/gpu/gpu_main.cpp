// deco_gpu_tests [FILTER]: every DECO_GPU_TEST of tests/gpu/test_cuda_*.cpp,
// or those whose name contains FILTER. See gpu_test.h.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_test.h"

namespace deco::gpu_test {
namespace {

int failures = 0;

std::vector<std::pair<const char*, TestFn>>& registry() {
  static std::vector<std::pair<const char*, TestFn>> tests;
  return tests;
}

double value_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.data<float>()[i];
    case DType::F64: return t.data<double>()[i];
    case DType::I32: return t.data<int32_t>()[i];
    case DType::I64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::BF16: return bf16_bits_to_float(static_cast<const uint16_t*>(t.raw())[i]);
  }
  return 0.0;
}

}  // namespace

int register_test(const char* name, TestFn fn) {
  registry().emplace_back(name, fn);
  return 0;
}

void count_failure() { ++failures; }

Buffer random_host(const Shape& shape, uint64_t seed, double scale) {
  Buffer b(DType::F32, Device::CPU, shape);
  Rng rng(seed);
  for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = static_cast<float>(scale * rng.normal());
  return b;
}

Buffer to_device(const Buffer& host) {
  Buffer d(host.tensor().dtype(), Device::CUDA, host.shape());
  ops::copy(d, host);
  return d;
}

Buffer to_host(const Tensor& device) {
  Buffer h(device.dtype(), Device::CPU, device.shape());
  ops::copy(h, device);
  return h;
}

Buffer to_bf16(const Buffer& f32) {
  Buffer b(DType::BF16, Device::CPU, f32.shape());
  auto* bits = static_cast<uint16_t*>(b.tensor().raw());
  for (int64_t i = 0; i < f32.numel(); ++i) bits[i] = float_to_bf16_bits(f32.data<float>()[i]);
  return b;
}

Buffer bf16_values(const Buffer& bf16) {
  Buffer f(DType::F32, Device::CPU, bf16.shape());
  const auto* bits = static_cast<const uint16_t*>(bf16.tensor().raw());
  for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = bf16_bits_to_float(bits[i]);
  return f;
}

void expect_close(const std::string& what, const Tensor& cpu, const Tensor& gpu, double tol) {
  bool ok = cpu.numel() == gpu.numel();
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; ok && i < cpu.numel(); ++i) {
    const double c = value_at(cpu, i), g = value_at(gpu, i);
    num += (g - c) * (g - c);
    den += c * c;
  }
  const double rel = std::sqrt(num / (den > 0 ? den : 1.0));
  ok = ok && rel <= tol;  // NaN fails
  std::printf("%-40s rel err %.3e (tol %.0e) %s\n", what.c_str(), rel, tol, ok ? "ok" : "FAIL");
  if (!ok) count_failure();
}

void expect_scalar(const std::string& what, double cpu, double gpu, double tol) {
  const double err = std::abs(gpu - cpu) / std::max(1.0, std::abs(cpu));
  const bool ok = err <= tol;
  std::printf("%-40s cpu %.9g gpu %.9g %s\n", what.c_str(), cpu, gpu, ok ? "ok" : "FAIL");
  if (!ok) count_failure();
}

void expect_equal(const std::string& what, const Tensor& cpu, const Tensor& gpu) {
  int64_t differ = cpu.numel() == gpu.numel() ? 0 : -1;
  for (int64_t i = 0; differ >= 0 && i < cpu.numel(); ++i) differ += value_at(cpu, i) != value_at(gpu, i);
  std::printf("%-40s %lld of %lld differ %s\n", what.c_str(), static_cast<long long>(differ),
              static_cast<long long>(cpu.numel()), differ == 0 ? "ok" : "FAIL");
  if (differ != 0) count_failure();
}

}  // namespace deco::gpu_test

namespace {

// A test that hangs (a kernel waiting at a barrier or cp.async it never
// reaches) ends the program after kTestSeconds with its name, instead of
// using the suite's whole time limit and every test after it.
constexpr unsigned kTestSeconds = 90;
const char* volatile running_test = "";

void on_alarm(int) {
  const char head[] = "FAIL the test ", tail[] = " still runs after 90 s: stopping the GPU tests\n";
  ssize_t ignored = write(STDOUT_FILENO, head, sizeof(head) - 1);
  ignored = write(STDOUT_FILENO, running_test, std::strlen(running_test));
  ignored = write(STDOUT_FILENO, tail, sizeof(tail) - 1);
  (void)ignored;
  _exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace deco;
  // Line-buffered: a test that hangs until the suite's timeout kills it, or
  // crashes, still leaves every line before it in the log.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping the GPU tests\n");
    return 77;
  }
  const char* filter = argc > 1 ? argv[1] : "";
  signal(SIGALRM, on_alarm);
  // Process-wide switches a test may leave changed (when it throws between setting and restoring them).
  const bool tensor_cores = ops::attention_tensor_cores();
  const ops::SparseExpertKernels sparse_kernels = ops::sparse_expert_kernels();
  int ran = 0;
  for (const auto& [name, fn] : gpu_test::registry()) {
    if (std::strstr(name, filter) == nullptr) continue;
    ++ran;
    std::printf("---- %s\n", name);
    const auto start = std::chrono::steady_clock::now();
    running_test = name;
    alarm(kTestSeconds);
    try {
      fn();
    } catch (const std::exception& e) {
      std::printf("FAIL %s threw: %s\n", name, e.what());
      gpu_test::count_failure();
    }
    alarm(0);
    ops::set_attention_tensor_cores(tensor_cores);
    ops::set_sparse_expert_kernels(sparse_kernels);
    std::printf("     %s: %.2f s\n", name,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (ran == 0) {
    std::printf("FAIL no GPU test matches '%s'\n", filter);
    return 1;
  }
  std::printf("%s\n", gpu_test::failures ? "GPU tests FAILED" : "all GPU tests passed");
  return gpu_test::failures ? 1 : 0;
}
