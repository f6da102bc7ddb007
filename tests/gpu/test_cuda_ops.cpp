// CUDA kernels of the model's basics against the CPU reference: GEMM, RMSNorm,
// SwiGLU, embedding, axpy, the cuBLASLt GEMMs, the caching allocator on
// the device, and the side stream (core/stream.h). Registered with the harness of tests/gpu/gpu_test.h.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "core/caching_allocator.h"
#include "core/stream.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_test.h"

using namespace deco;
using namespace deco::gpu_test;

// GEMM via cuBLAS: y = x w^T
DECO_GPU_TEST(gemm) {
  const int64_t N = 96, H = 256, F = 320;
  Buffer x = random_host({N, H}, 1), w = random_host({F, H}, 2), y(DType::F32, Device::CPU, {N, F});
  Buffer dx = to_device(x), dw = to_device(w), dy(DType::F32, Device::CUDA, {N, F});
  ops::linear_forward(y, x, w);
  ops::linear_forward(dy, dx, dw);
  expect_close("linear_forward", y, to_host(dy));
}

// RMSNorm forward and backward
DECO_GPU_TEST(rmsnorm) {
  const int64_t N = 96, H = 256;
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

// The residual add fused with RMSNorm: the CPU's fused op, and the GPU's
// own unfused ops (the same per-column threads and reduction: exact).
DECO_GPU_TEST(residual_rmsnorm) {
  const int64_t N = 96, H = 333;
  Buffer a = random_host({N, H}, 31), b = random_host({N, H}, 32), w = random_host({H}, 33);
  Buffer sum(DType::F32, Device::CPU, {N, H}), out(DType::F32, Device::CPU, {N, H}), rstd(DType::F32, Device::CPU, {N});
  ops::residual_rmsnorm_forward(sum, out, rstd, a, b, w, 1e-5);
  Buffer a_d = to_device(a), b_d = to_device(b), w_d = to_device(w);
  Buffer sum_d(DType::F32, Device::CUDA, {N, H}), out_d(DType::F32, Device::CUDA, {N, H}),
      rstd_d(DType::F32, Device::CUDA, {N});
  ops::residual_rmsnorm_forward(sum_d, out_d, rstd_d, a_d, b_d, w_d, 1e-5);
  expect_close("residual_rmsnorm_forward sum", sum, to_host(sum_d), 0.0);
  expect_close("residual_rmsnorm_forward out", out, to_host(out_d));
  expect_close("residual_rmsnorm_forward rstd", rstd, to_host(rstd_d));
  Buffer unfused_out(DType::F32, Device::CUDA, {N, H}), unfused_rstd(DType::F32, Device::CUDA, {N});
  ops::rmsnorm_forward(unfused_out, unfused_rstd, sum_d, w_d, 1e-5);
  expect_close("fused vs unfused on the GPU", to_host(unfused_out), to_host(out_d), 0.0);
  ops::residual_rmsnorm_forward(a_d, out_d, rstd_d, a_d, b_d, w_d, 1e-5);  // sum aliasing residual
  expect_close("residual_rmsnorm_forward in place", sum, to_host(a_d), 0.0);
}

// SwiGLU forward and backward
DECO_GPU_TEST(swiglu) {
  const int64_t N = 96, F = 320;
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

// embedding lookup and axpy
DECO_GPU_TEST(embedding_axpy) {
  const int64_t N = 96, H = 256;
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
  expect_close("axpy", y, to_host(y_d), 1e-6);  // FMA on the GPU; on the host only where the build has it
}

// cuBLASLt GEMMs (gemm_lt.cu) against the CPU's float32 GEMM on the same
// (bf16-representable) inputs, every transposition, an expert's column block
// (an offset pointer: 128-byte alignment), bf16 and fp32 outputs, beta != 0.
// Tolerances: fp32 output 1e-5 (float32 accumulation in another order);
// bf16 output 4e-3 (one bf16 rounding of the result, 2^-8 relative).
DECO_GPU_TEST(gemm_lt) {
  const int64_t M = 257, K = 320, N = 192;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      Buffer a32 = random_host(ta ? Shape{K, M} : Shape{M, K}, 21 + ta);
      // B is a column block [.., 64 : 64 + cols) of a wider matrix, as one expert's weights are.
      const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N, wide = b_cols + 128;
      Buffer bwide32 = random_host({b_rows, wide}, 31 + tb);
      Buffer a_vals = bf16_values(to_bf16(a32)), bw_vals = bf16_values(to_bf16(bwide32));
      Buffer c0 = random_host({M, N}, 41);
      for (DType out : {DType::F32, DType::BF16}) {
        for (DType in : {DType::F32, DType::BF16}) {
          if (in == DType::F32 && out == DType::BF16) continue;  // not a combination the model uses
          const double beta = out == DType::BF16 ? 0.0 : 0.5;
          Buffer ref(DType::F32, Device::CPU, {M, N});  // zero-filled
          if (beta != 0.0) ops::copy(ref, c0);
          ops::gemm(ref.tensor().matrix(), a_vals.tensor().matrix(), ta, bw_vals.tensor().matrix().col_block(64, 64 + b_cols),
                    tb, 1.0, beta);
          Buffer a_d = in == DType::BF16 ? to_device(to_bf16(a32)) : to_device(a_vals);
          Buffer b_d = in == DType::BF16 ? to_device(to_bf16(bwide32)) : to_device(bw_vals);
          Buffer c_d = out == DType::BF16 ? to_device(to_bf16(c0)) : to_device(c0);
          ops::gemm(c_d.tensor().matrix(), a_d.tensor().matrix(), ta, b_d.tensor().matrix().col_block(64, 64 + b_cols), tb,
                    1.0, beta);
          Buffer got = out == DType::BF16 ? bf16_values(to_host(c_d)) : to_host(c_d);
          char name[64];
          std::snprintf(name, sizeof(name), "gemm_lt %s->%s ta%d tb%d", in == DType::BF16 ? "bf16" : "f32",
                        out == DType::BF16 ? "bf16" : "f32", ta, tb);
          expect_close(name, ref, got, out == DType::BF16 ? 4e-3 : 1e-5);
        }
      }
    }
  std::printf("%-28s %zu cached plans\n", "gemm_lt plans", cuda::gemm_lt_cached_plans());
}

// The caching allocator on the device: reserved is what cudaMalloc really took, and a
// training step's allocation pattern repeated reaches cudaMalloc only the first time.
DECO_GPU_TEST(caching_allocator) {
  CachingAllocator& a = *cuda_caching_allocator();
  cudaDeviceSynchronize();
  a.release_cached();
  size_t free0 = 0, total = 0, free1 = 0, free2 = 0;
  cudaMemGetInfo(&free0, &total);
  const AllocatorStats s0 = a.stats();
  const int64_t sizes[] = {1000, 300000, 5 << 20, 64 << 20, 7, 123456789};
  int64_t raw_after_first = 0;
  for (int step = 0; step < 4; ++step) {
    MemoryCategoryScope scope(MemoryCategory::Activations);
    std::vector<Buffer> live;
    for (int64_t n : sizes) live.emplace_back(DType::F32, Device::CUDA, Shape{n});
    if (step == 0) {
      cudaMemGetInfo(&free1, &total);
      const AllocatorStats s = a.stats();
      const double taken = static_cast<double>(free0) - static_cast<double>(free1);
      const double reserved = static_cast<double>(s.reserved - s0.reserved);
      const bool ok = std::abs(taken - reserved) <= 4.0 * (1 << 20) &&
                      s.by_category[size_t(MemoryCategory::Activations)] >= 4 * 123456789ull;
      std::printf("%-28s device %.1f MiB, reserved %.1f MiB %s\n", "allocator reserved", taken / (1 << 20),
                  reserved / (1 << 20), ok ? "ok" : "FAIL");
      if (!ok) count_failure();
      raw_after_first = s.raw_allocations;
    }
  }
  // Without caching (DECO_CUDA_NO_MEMORY_CACHING=1, for memory checkers)
  // every block of the three later steps is a cudaMalloc of its own.
  const int64_t later = a.stats().raw_allocations - raw_after_first;
  const int64_t expected = a.caching() ? 0 : 3 * static_cast<int64_t>(std::size(sizes));
  std::printf("%-28s %lld device mallocs after the first step (%s) %s\n", "allocator reuse",
              static_cast<long long>(later), a.caching() ? "cached" : "caching off: one per block",
              later == expected ? "ok" : "FAIL");
  if (later != expected) count_failure();
  a.release_cached();
  cudaMemGetInfo(&free2, &total);
  const bool returned = free2 + (4u << 20) >= free0;
  std::printf("%-28s %s\n", "allocator release_cached", returned ? "ok" : "FAIL");
  if (!returned) count_failure();
  std::printf("%s", memory_report(a.stats(), total).c_str());
}

// core/stream.h: work forked onto the side stream runs there (cuBLASLt with
// the side stream's own workspace), join() orders the current stream after
// it, and frees between fork and join are held: a block the legacy stream
// freed is not handed to the side stream while the legacy stream's queued
// work may still use it.
DECO_GPU_TEST(side_stream) {
  const int64_t M = 2048, K = 2048, N = 2048;
  Buffer a0 = to_device(to_bf16(random_host({M, K}, 51))), b = to_device(to_bf16(random_host({N, K}, 52)));
  Buffer a(DType::BF16, Device::CUDA, {M, K});
  Buffer inline_out(DType::BF16, Device::CUDA, {M, N}), side_out(DType::BF16, Device::CUDA, {M, N});
  Buffer other_out(DType::BF16, Device::CUDA, {M, N});
  ops::copy(a, a0);
  ops::linear_forward(inline_out, a, b);
  cudaDeviceSynchronize();
  // The side stream's input comes from the legacy stream's last work before
  // the fork, queued behind long GEMMs: without the fork's wait the side
  // stream would read it before it is written.
  ops::zero(a);
  for (int i = 0; i < 8; ++i) ops::linear_forward(other_out, b, a0);
  ops::copy(a, a0);
  SideStream& side = thread_side_stream();
  CachingAllocator& alloc = *cuda_caching_allocator();
  side.fork();
  void* freed_by_main = nullptr;
  {
    Buffer temp(DType::F32, Device::CUDA, {1 << 20});  // allocated and freed on the legacy stream, inside the fork
    freed_by_main = temp.tensor().raw();
  }
  bool reused = false;
  {
    CudaStreamScope on_side(side.stream());
    for (int i = 0; i < 8; ++i) ops::linear_forward(side_out, a, b);  // long enough to overlap what follows
    Buffer temp(DType::F32, Device::CUDA, {1 << 20});
    reused = temp.tensor().raw() == freed_by_main;
  }
  ops::linear_forward(other_out, b, a);  // beside the side stream's GEMMs, on the legacy one
  const bool held = alloc.stats().held >= 2 * (size_t{4} << 20);  // the two 4 MiB temporaries
  side.join();
  const bool released = alloc.stats().held == 0 && !side.forked();
  Buffer want = to_host(inline_out), got = to_host(side_out);  // legacy-stream copies, after the join
  const bool same = std::memcmp(want.tensor().raw(), got.tensor().raw(), want.tensor().nbytes()) == 0;
  std::printf("%-28s side stream GEMM %s, freed block %s, held %s, released %s\n", "side_stream",
              same ? "bit-identical" : "DIFFERS", reused ? "REUSED" : "not reused", held ? "yes" : "NO",
              released ? "yes" : "NO");
  if (!same || reused || !held || !released) count_failure();
  Buffer other_cpu(DType::F32, Device::CPU, {M, N});
  ops::linear_forward(other_cpu, bf16_values(to_host(b)), bf16_values(to_host(a)));
  // 4e-3: one bf16 rounding of the output (2^-8 relative), as in gemm_lt above.
  expect_close("side_stream legacy GEMM", other_cpu, bf16_values(to_host(other_out)), 4e-3);
}
