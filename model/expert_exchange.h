// Expert parallelism's token exchange for one DECO layer (issue 5, docs/parallelism.md).
//
// The routed experts of a DECO layer are split over the M ranks of the
// expert-parallel group, E / M contiguous experts each; the router is
// replicated, so every rank knows which experts each of its own tokens
// activates. A token is sent to rank p only if at least one of p's experts
// is active for it (z > 0), computed there, and the weighted result comes
// back to be summed; the backward pass sends the output gradient the same
// way and returns the input gradient.
//
// Rows travel in this order: to peer 0 this rank's tokens active on peer 0
// in token order, then peer 1's, ...; each rank receives its rows grouped by
// source rank. Both directions use Communicator::all_to_all with counts
// exchanged once per plan. The rows are gathered and scattered by ops on the
// tensors' device, so the same code moves host rows through MPI and device
// rows through NCCL (ByDeviceComm); the plan itself is made on the host
// from a copy of z.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace deco {

class ExpertExchange {
 public:
  // From the router pre-activation z [N, E] of this rank's tokens: which
  // tokens go to which peer, and (one small all-to-all) how many rows each
  // peer sends here.
  void plan(const Tensor& z, Communicator& comm);

  int64_t received() const { return received_; }  // R: rows this rank computes experts for
  int64_t sent() const { return sent_total_; }    // rows this rank sends, itself included
  // Rows sent to each peer (itself included), in peer order.
  const std::vector<int64_t>& sent_per_peer() const { return send_rows_; }

  // Forward direction: out [R, w] = rows of src [N, w] for each peer's tokens.
  void dispatch(const Tensor& out, const Tensor& src);
  // Forward direction, each peer's column block: out [R, E/M] receives, for
  // every token sent to peer p, src[t, p*E/M : (p+1)*E/M] (src [N, E]).
  void dispatch_blocks(const Tensor& out, const Tensor& src);
  // Reverse direction: dst [N, w] += the rows src [R, w] returned for each
  // token (a token's rows from several peers add up).
  void combine_add(const Tensor& dst, const Tensor& src);
  // Reverse direction into column blocks: dst [N, E] (=) zero, then
  // dst[t, p*E/M : (p+1)*E/M] = the row src [R, E/M] peer p returned for t.
  void combine_blocks(const Tensor& dst, const Tensor& src);

 private:
  // Rows of `width` elements: `sent` [S, width] in send order goes out and
  // `received` [R, width] comes in, or the reverse when `back` is set.
  void exchange(const Tensor& sent, const Tensor& received, int64_t width, bool back);

  Communicator* comm_ = nullptr;
  int64_t tokens_ = 0, experts_ = 0, per_rank_ = 0;
  std::vector<int64_t> send_rows_, recv_rows_;
  int64_t sent_total_ = 0, received_ = 0;
  // On z's device, int32 [S] in send order: each row's token, and its
  // (token, peer) block of z viewed as [N * M, E / M].
  Buffer send_token_, send_block_;
  Buffer send_buf_;  // rows in send order [S, width]
  Buffer z_host_;    // the plan's copy of a device z
};

}  // namespace deco
