// The PTX of kernels/cuda/mma.cuh as warp collectives of the CUDA emulator:
// mma.sync m16n8k16 (bf16 operands, float32 accumulation), ldmatrix x4.trans
// and cp.async, with the fragment layouts of the table at the top of mma.cuh
// (the PTX ISA's). Products are summed in float64 and rounded once to float32
// before the add to the accumulator, as tests/gpu/mma_emulation.py does: the
// tensor cores' exact summation order is not documented, and both are within
// the float32 rounding of one another.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "core/bf16.h"

namespace deco_emu {

// A packed bf16 pair's low and high elements (core/bf16.h's conversion).
inline float bf16_lo(uint32_t pair) { return deco::bf16_bits_to_float(static_cast<uint16_t>(pair & 0xffffu)); }
inline float bf16_hi(uint32_t pair) { return deco::bf16_bits_to_float(static_cast<uint16_t>(pair >> 16)); }

struct MmaArgs {
  float* c;
  const uint32_t* a;
  uint32_t b0, b1;
};

inline void mma_op(void* const* lanes, unsigned present) {
  if (present != 0xffffffffu) fail_kernel("mma.sync with a partial warp");
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto* m = static_cast<const MmaArgs*>(lanes[l]);
    const int g = l / 4, c = l % 4;
    for (int h = 0; h < 2; ++h) {
      auto half = [h](uint32_t v) { return h == 0 ? bf16_lo(v) : bf16_hi(v); };
      A[g][2 * c + h] = half(m->a[0]);
      A[g + 8][2 * c + h] = half(m->a[1]);
      A[g][2 * c + 8 + h] = half(m->a[2]);
      A[g + 8][2 * c + 8 + h] = half(m->a[3]);
      B[2 * c + h][g] = half(m->b0);
      B[2 * c + 8 + h][g] = half(m->b1);
    }
  }
  for (int l = 0; l < 32; ++l) {
    auto* m = static_cast<MmaArgs*>(lanes[l]);
    const int g = l / 4, c = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * c + (i % 2);
      double s = 0.0;
      for (int k = 0; k < 16; ++k) s += static_cast<double>(A[row][k]) * B[k][col];
      m->c[i] += static_cast<float>(s);
    }
  }
}

struct LdmatrixArgs {
  uint32_t* r;
  const __nv_bfloat16* row;
};

inline void ldmatrix_x4_trans_op(void* const* lanes, unsigned present) {
  if (present != 0xffffffffu) fail_kernel("ldmatrix with a partial warp");
  uint16_t M[4][8][8];  // block, row, column: the bits of the bf16 elements
  for (int l = 0; l < 32; ++l) {
    const auto* p = static_cast<const LdmatrixArgs*>(lanes[l])->row;
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail_kernel("ldmatrix row address not 16-byte aligned");
    std::memcpy(M[l / 8][l % 8], p, 16);
  }
  for (int l = 0; l < 32; ++l) {
    auto* r = static_cast<LdmatrixArgs*>(lanes[l])->r;
    const int g = l / 4, c = l % 4;
    for (int i = 0; i < 4; ++i)  // transposed: lane gets (M[2c][g], M[2c+1][g]), low half first
      r[i] = static_cast<uint32_t>(M[i][2 * c][g]) | static_cast<uint32_t>(M[i][2 * c + 1][g]) << 16;
  }
}

}  // namespace deco_emu
