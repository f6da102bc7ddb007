// Warp and block reductions shared by the CUDA kernels. Fixed trees: a
// result depends only on the inputs and the block size, never on how the
// threads were scheduled, which keeps every GPU reduction deterministic.
#pragma once

namespace deco::cuda {

// Sum over a full warp. Every lane ends with the same bits: in each xor step
// both partners add the same two values, and addition is commutative.
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int mask = 16; mask > 0; mask /= 2) v += __shfl_xor_sync(0xffffffffu, v, mask);
  return v;
}

// Sum (Max = false) or maximum (Max = true) over the block in a fixed tree
// through `scratch` (blockDim.x entries; blockDim.x a power of two). Every
// thread gets the result; scratch is free again on return.
template <bool Max, typename T> __device__ T block_reduce(T v, T* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const T other = scratch[threadIdx.x + stride];
      scratch[threadIdx.x] = Max ? (other > scratch[threadIdx.x] ? other : scratch[threadIdx.x])
                                 : scratch[threadIdx.x] + other;
    }
    __syncthreads();
  }
  const T total = scratch[0];
  __syncthreads();
  return total;
}

template <typename T> __device__ T block_sum(T v, T* scratch) { return block_reduce<false>(v, scratch); }
template <typename T> __device__ T block_max(T v, T* scratch) { return block_reduce<true>(v, scratch); }

}  // namespace deco::cuda
