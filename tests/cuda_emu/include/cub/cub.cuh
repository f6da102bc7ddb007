// The CUDA emulator's stand-in for the three CUB device algorithms deco
// calls (kernels/cuda/basic.cu): the same signatures and the same two-call
// protocol (a first call with no temporary storage asks its size), done on
// the host over the emulator's host-memory "device" buffers. Stable like
// CUB's radix sort, which scatter_add_rows relies on.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

namespace cub {

struct DeviceRadixSort {
  template <typename K, typename V>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n, int begin_bit = 0, int end_bit = sizeof(K) * 8,
                               cudaStream_t = nullptr) {
    if (!temp) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    // Sorts by the bits [begin_bit, end_bit) only, as CUB does.
    const unsigned long long width_mask =
        end_bit - begin_bit >= 64 ? ~0ull : ((1ull << (end_bit - begin_bit)) - 1ull);
    auto bits = [&](K k) { return (static_cast<unsigned long long>(k) >> begin_bit) & width_mask; };
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bits(keys_in[a]) < bits(keys_in[b]); });
    std::vector<K> k(static_cast<size_t>(n));
    std::vector<V> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      k[i] = keys_in[order[i]];
      v[i] = values_in[order[i]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

struct DeviceRunLengthEncode {
  template <typename K, typename C, typename N>
  static cudaError_t Encode(void* temp, size_t& temp_bytes, const K* in, K* unique_out, C* counts_out, N* runs_out,
                            int n, cudaStream_t = nullptr) {
    if (!temp) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    N runs = 0;
    for (int i = 0; i < n; ++i) {
      if (i == 0 || !(in[i] == in[i - 1])) {
        unique_out[runs] = in[i];
        counts_out[runs] = 0;
        ++runs;
      }
      ++counts_out[runs - 1];
    }
    *runs_out = runs;
    return cudaSuccess;
  }
};

struct DeviceScan {
  template <typename In, typename Out>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, const In* in, Out* out, int n,
                                  cudaStream_t = nullptr) {
    if (!temp) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    Out sum = 0;
    for (int i = 0; i < n; ++i) {
      const Out x = static_cast<Out>(in[i]);
      out[i] = sum;
      sum += x;
    }
    return cudaSuccess;
  }
};

}  // namespace cub
