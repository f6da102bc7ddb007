// The argument checks MpiComm and NcclComm make before moving any bytes.
// A mismatch is a bug in the caller, so they assert; every rank of a group
// fails the same check before any of them enters the collective.
#pragma once

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "parallel/comm.h"

namespace deco {

// reduce_scatter and all_gather: `whole` holds size() chunks of `chunk`'s length.
inline void check_chunked_args(const Communicator& comm, const char* collective, const Tensor& whole,
                               const Tensor& chunk) {
  DECO_ASSERT(whole.dtype() == chunk.dtype(), collective, ": dtypes differ");
  DECO_ASSERT(whole.numel() == comm.size() * chunk.numel(), collective, ": the whole tensor must hold size() = ",
              comm.size(), " chunks of ", chunk.numel(), " elements, got ", whole.numel());
}

// all_to_all: one count per rank, and the counts fit the tensors.
inline void check_all_to_all_args(const Communicator& comm, const Tensor& out, const std::vector<int64_t>& recv_counts,
                                  const Tensor& in, const std::vector<int64_t>& send_counts) {
  DECO_ASSERT(in.dtype() == out.dtype(), "all_to_all: dtypes differ");
  DECO_ASSERT(static_cast<int64_t>(send_counts.size()) == comm.size() &&
                  static_cast<int64_t>(recv_counts.size()) == comm.size(),
              "all_to_all: one send and one receive count per rank of the ", comm.name(), " group");
  int64_t send_total = 0, recv_total = 0;
  for (size_t p = 0; p < send_counts.size(); ++p) {
    DECO_ASSERT(send_counts[p] >= 0 && recv_counts[p] >= 0, "all_to_all: negative count for rank ", p);
    send_total += send_counts[p];
    recv_total += recv_counts[p];
  }
  DECO_ASSERT(send_total <= in.numel() && recv_total <= out.numel(), "all_to_all: counts (", send_total,
              " sent, ", recv_total, " received) exceed the tensors (", in.numel(), ", ", out.numel(), ")");
}

inline void check_root_arg(const Communicator& comm, int64_t root) {
  DECO_ASSERT(root >= 0 && root < comm.size(), "broadcast: root ", root, " is not a rank of the ", comm.name(),
              " group");
}

}  // namespace deco
