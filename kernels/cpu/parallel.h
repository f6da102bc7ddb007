// Deterministic parallel reductions for the CPU reference.
//
// Parameter gradients such as RMSNorm's weight gradient sum a row-wise
// quantity over every token. Summing in parallel with atomics or OpenMP's
// reduction clause would make the result depend on thread timing; here each
// thread sums a fixed, contiguous range of rows into its own partial, and
// the partials are added in thread order. The result depends only on the
// thread count, so a run is bit-for-bit repeatable.
#pragma once

#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deco::cpu {

// Calls row_fn(r, acc) for every row r in [0, rows), where acc points at
// `cols` accumulators of the calling thread, then adds all partials into
// out[cols] (+=). row_fn may also write per-row outputs (rows are disjoint).
template <typename T, typename RowFn>
void for_rows_reduce(int64_t rows, int64_t cols, T* out, RowFn&& row_fn) {
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
#else
  const int threads = 1;
#endif
  std::vector<T> partial(static_cast<size_t>(threads * cols), T(0));
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t tid = 0, nt = 1;
#endif
    T* acc = partial.data() + tid * cols;
    const int64_t r0 = rows * tid / nt, r1 = rows * (tid + 1) / nt;
    for (int64_t r = r0; r < r1; ++r) row_fn(r, acc);
  }
  for (int t = 0; t < threads; ++t)
    for (int64_t c = 0; c < cols; ++c) out[c] += partial[static_cast<size_t>(t * cols + c)];
}

}  // namespace deco::cpu
