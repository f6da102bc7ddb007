// PTX wrappers for the tensor-core kernels (attention_tc.cu,
// sparse_experts.cu): mma.sync m16n8k16 with bfloat16 operands and float32
// accumulation, ldmatrix, cp.async. Fragment layout of the mma, lane =
// 4 g + c (g = lane / 4, c = lane % 4), pairs packed low index in the low half:
//   A (16 x 16, row-major) a[0] = A[g][2c, 2c+1]     a[1] = A[g+8][2c, 2c+1]
//                          a[2] = A[g][2c+8, +9]     a[3] = A[g+8][2c+8, +9]
//   B (16 x 8, k x n)      b[0] = B[2c, 2c+1][g]     b[1] = B[2c+8, +9][g]
//   C (16 x 8, float)      c[0..1] = C[g][2c, 2c+1]  c[2..3] = C[g+8][2c, 2c+1]
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#if defined(DECO_CUDA_EMULATION)
#include "tests/cuda_emu/mma_emu.h"
#endif

namespace deco::cuda {

using bf16 = __nv_bfloat16;

#if defined(DECO_CUDA_EMULATION)
// The CPU emulator of tests/cuda_emu runs these as warp collectives.
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  deco_emu::MmaArgs args{c, a, b0, b1};
  deco_emu::warp_collective(0xffffffffu, "mma.sync", &args, deco_emu::mma_op);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* row) {
  deco_emu::LdmatrixArgs args{r, row};
  deco_emu::warp_collective(0xffffffffu, "ldmatrix", &args, deco_emu::ldmatrix_x4_trans_op);
}
__device__ __forceinline__ void cp_async16(bf16* dst, const bf16* src, bool valid) {
  deco_emu::cp_async(dst, src, 16, valid ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { deco_emu::cp_async_commit(); }
template <int N> __device__ __forceinline__ void cp_async_wait() { deco_emu::cp_async_wait(N); }
#else
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four transposed 8 x 8 bf16 blocks; lane l gives the address of row l % 8
// of block l / 8.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");  // reads shared memory the compiler cannot see: no reordering across it
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid
// (rows past the end of the sequence), reading nothing from src then.
__device__ __forceinline__ void cp_async16(bf16* dst, const bf16* src, bool valid) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are pending.
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif

__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The A fragment of rows [row0, row0 + 16) x columns [col0, col0 + 16) of a
// row-major bf16 tile with rows of `ld` elements.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* tile, int ld, int row0, int col0) {
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const bf16* p = tile + (row0 + g) * ld + col0 + 2 * c;
  a[0] = ld32(p);
  a[1] = ld32(p + 8 * ld);
  a[2] = ld32(p + 8);
  a[3] = ld32(p + 8 * ld + 8);
}

}  // namespace deco::cuda
