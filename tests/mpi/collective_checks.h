// Checks of every Communicator collective against values each rank computes
// on its own, shared by the MPI tests (host memory, any group) and the NCCL
// test (device memory). Every rank fills its inputs from its rank, runs the
// collective, and compares the result with what the formula says the other
// ranks sent. Values are small integers, exact in every dtype (bf16
// included) and in any summation order, so the comparisons are exact.
//
// Each check runs its collectives unconditionally and returns one line per
// mismatch (empty: passed), so a failure on one rank never leaves the others
// waiting in a collective.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/comm.h"

namespace deco::test {

// The dtypes a communicator on `device` moves: MPI has no bf16.
std::vector<DType> collective_dtypes(Device device);

// `n` is the per-rank chunk length.
std::vector<std::string> check_all_reduce(Communicator& comm, Device device, DType dtype, ReduceOp op, int64_t n);
// Three all_reduce_async sums in flight at once (the sizes n, 2n + 1 and
// 3), waited for in start order, and a test() loop on the last.
std::vector<std::string> check_all_reduce_async(Communicator& comm, Device device, DType dtype, int64_t n);
std::vector<std::string> check_reduce_scatter(Communicator& comm, Device device, DType dtype, int64_t n);
std::vector<std::string> check_all_gather(Communicator& comm, Device device, DType dtype, int64_t n);
// Uneven counts, zeros among them (rank r sends (r + 2p + scale) % 4 * scale
// elements to rank p, so with scale 0 nothing moves at all).
std::vector<std::string> check_all_to_all(Communicator& comm, Device device, DType dtype, int64_t scale);
// From the last rank, which is not rank 0 in any group of two or more.
std::vector<std::string> check_broadcast(Communicator& comm, Device device, DType dtype, int64_t n);
// Two communicators at once, as a training step uses them: an all-reduce
// of n elements in flight on `buckets` (a gradient bucket) while `exchange`
// runs a blocking all-to-all and then an all-reduce (the expert exchange),
// then the first waited for; every result checked.
std::vector<std::string> check_interleaved(Communicator& buckets, Communicator& exchange, Device device, DType dtype,
                                           int64_t n);
// The host conveniences: all_reduce_sum/max of vectors, all_to_all_counts, barrier.
std::vector<std::string> check_host_conveniences(Communicator& comm);

// "a; b; c" for test messages.
std::string join(const std::vector<std::string>& lines);

}  // namespace deco::test
