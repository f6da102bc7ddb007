// The CUDA kernels against the CPU reference on random inputs. Exits 77
// (CTest: skipped) when there is no GPU, as on CI machines.
//
// Tolerances: these kernels run in float32 like the reference, differing
// only in summation order, so 1e-5 relative (a few hundred float32 ulps over
// rows of a few hundred elements) is the bound.
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"

using namespace deco;

namespace {

int failures = 0;

Buffer random_host(const Shape& shape, uint64_t seed) {
  Buffer b(DType::F32, Device::CPU, shape);
  Rng rng(seed);
  for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = static_cast<float>(rng.normal());
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

void expect_close(const std::string& what, const Tensor& cpu, const Tensor& gpu_on_host, double tol = 1e-5) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    const double d = static_cast<double>(cpu.data<float>()[i]) - gpu_on_host.data<float>()[i];
    num += d * d;
    den += static_cast<double>(cpu.data<float>()[i]) * cpu.data<float>()[i];
  }
  const double rel = std::sqrt(num / (den > 0 ? den : 1.0));
  std::printf("%-28s rel err %.3e %s\n", what.c_str(), rel, rel <= tol ? "ok" : "FAIL");
  if (!(rel <= tol)) ++failures;
}

}  // namespace

int main() {
  if (cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping the GPU tests\n");
    return 77;
  }
  const int64_t N = 96, H = 256, F = 320;

  {  // GEMM via cuBLAS: y = x w^T
    Buffer x = random_host({N, H}, 1), w = random_host({F, H}, 2), y(DType::F32, Device::CPU, {N, F});
    Buffer dx = to_device(x), dw = to_device(w), dy(DType::F32, Device::CUDA, {N, F});
    ops::linear_forward(y, x, w);
    ops::linear_forward(dy, dx, dw);
    expect_close("linear_forward", y, to_host(dy));
  }
  {  // RMSNorm forward and backward
    Buffer x = random_host({N, H}, 3), w = random_host({H}, 4), g = random_host({N, H}, 5);
    Buffer out(DType::F32, Device::CPU, {N, H}), rstd(DType::F32, Device::CPU, {N});
    Buffer dx(DType::F32, Device::CPU, {N, H}), dw(DType::F32, Device::CPU, {H});
    ops::rmsnorm_forward(out, rstd, x, w, 1e-5);
    ops::rmsnorm_backward(dx, dw, g, x, w, rstd);
    Buffer x_d = to_device(x), w_d = to_device(w), g_d = to_device(g);
    Buffer out_d(DType::F32, Device::CUDA, {N, H}), rstd_d(DType::F32, Device::CUDA, {N});
    Buffer dx_d(DType::F32, Device::CUDA, {N, H}), dw_d(DType::F32, Device::CUDA, {H});
    ops::rmsnorm_forward(out_d, rstd_d, x_d, w_d, 1e-5);
    ops::rmsnorm_backward(dx_d, dw_d, g_d, x_d, w_d, rstd_d);
    expect_close("rmsnorm_forward", out, to_host(out_d));
    expect_close("rmsnorm_backward dx", dx, to_host(dx_d));
    expect_close("rmsnorm_backward dweight", dw, to_host(dw_d));
  }
  {  // SwiGLU forward and backward
    Buffer g = random_host({N, F}, 6), u = random_host({N, F}, 7), d = random_host({N, F}, 8);
    Buffer out(DType::F32, Device::CPU, {N, F}), dg(DType::F32, Device::CPU, {N, F}), du(DType::F32, Device::CPU, {N, F});
    ops::swiglu_forward(out, g, u);
    ops::swiglu_backward(dg, du, d, g, u);
    Buffer g_d = to_device(g), u_d = to_device(u), d_d = to_device(d);
    Buffer out_d(DType::F32, Device::CUDA, {N, F}), dg_d(DType::F32, Device::CUDA, {N, F}),
        du_d(DType::F32, Device::CUDA, {N, F});
    ops::swiglu_forward(out_d, g_d, u_d);
    ops::swiglu_backward(dg_d, du_d, d_d, g_d, u_d);
    expect_close("swiglu_forward", out, to_host(out_d));
    expect_close("swiglu_backward dgate", dg, to_host(dg_d));
    expect_close("swiglu_backward dup", du, to_host(du_d));
  }
  {  // embedding lookup and axpy
    Buffer table = random_host({50, H}, 9), out(DType::F32, Device::CPU, {N, H});
    Buffer ids(DType::I32, Device::CPU, {N});
    for (int64_t i = 0; i < N; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>((i * 7) % 50);
    ops::embedding_forward(out, ids, table);
    Buffer table_d = to_device(table), ids_d = to_device(ids), out_d(DType::F32, Device::CUDA, {N, H});
    ops::embedding_forward(out_d, ids_d, table_d);
    expect_close("embedding_forward", out, to_host(out_d), 0.0);
    Buffer y = random_host({N, H}, 10), y_d = to_device(y);
    ops::axpy(y, out, 0.5);
    ops::axpy(y_d, out_d, 0.5);
    expect_close("axpy", y, to_host(y_d), 0.0);
  }
  std::printf("%s\n", failures ? "GPU tests FAILED" : "all GPU tests passed");
  return failures ? 1 : 0;
}
