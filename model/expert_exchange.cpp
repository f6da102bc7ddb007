#include "model/expert_exchange.h"

#include <vector>

#include "core/error.h"
#include "kernels/ops.h"

namespace deco {

void ExpertExchange::plan(const Tensor& z, Communicator& comm) {
  DECO_ASSERT(z.ndim() == 2, "expert exchange: z must be [N, E]");
  comm_ = &comm;
  const int64_t M = comm.size();
  tokens_ = z.size(0);
  experts_ = z.size(1);
  DECO_ASSERT(experts_ % M == 0, "expert exchange: ", experts_, " experts over ", M, " ranks");
  per_rank_ = experts_ / M;
  const Tensor* zh = &z;
  if (z.device() != Device::CPU) {  // the plan is host logic: one copy of z per layer
    z_host_.ensure(z.dtype(), Device::CPU, z.shape());
    ops::copy(z_host_, z);
    zh = &z_host_.tensor();
  }
  send_rows_.assign(static_cast<size_t>(M), 0);
  std::vector<int32_t> tokens, blocks;
  // Peer-major order: all of peer 0's tokens, then peer 1's, ...
  auto active_on = [&](auto* zp, int64_t t, int64_t p) {
    const auto* row = zp + t * experts_ + p * per_rank_;
    for (int64_t e = 0; e < per_rank_; ++e)
      if (row[e] > 0) return true;
    return false;
  };
  for (int64_t p = 0; p < M; ++p)
    for (int64_t t = 0; t < tokens_; ++t) {
      const bool active = zh->dtype() == DType::F32 ? active_on(zh->data<float>(), t, p)
                                                    : active_on(zh->data<double>(), t, p);
      if (active) {
        tokens.push_back(static_cast<int32_t>(t));
        blocks.push_back(static_cast<int32_t>(t * M + p));
        ++send_rows_[static_cast<size_t>(p)];
      }
    }
  sent_total_ = static_cast<int64_t>(tokens.size());
  send_token_.ensure(DType::I32, z.device(), Shape{sent_total_});
  send_block_.ensure(DType::I32, z.device(), Shape{sent_total_});
  if (sent_total_ > 0) {
    device_copy(z.device(), send_token_.tensor().raw(), Device::CPU, tokens.data(), tokens.size() * sizeof(int32_t));
    device_copy(z.device(), send_block_.tensor().raw(), Device::CPU, blocks.data(), blocks.size() * sizeof(int32_t));
  }
  recv_rows_ = comm.all_to_all_counts(send_rows_);
  received_ = 0;
  for (int64_t r : recv_rows_) received_ += r;
}

void ExpertExchange::exchange(const Tensor& sent, const Tensor& received, int64_t width, bool back) {
  std::vector<int64_t> sent_counts = send_rows_, received_counts = recv_rows_;
  for (int64_t& c : sent_counts) c *= width;
  for (int64_t& c : received_counts) c *= width;
  const Tensor s = sent.view(Shape{sent_total_ * width}), r = received.view(Shape{received_ * width});
  if (back)
    comm_->all_to_all(s, sent_counts, r, received_counts);
  else
    comm_->all_to_all(r, received_counts, s, sent_counts);
}

void ExpertExchange::dispatch(const Tensor& out, const Tensor& src) {
  const int64_t w = src.size(1);
  DECO_ASSERT(src.size(0) == tokens_ && out.size(0) == received_ && out.size(1) == w,
              "expert exchange: dispatch shapes");
  send_buf_.ensure(src.dtype(), src.device(), Shape{sent_total_, w});
  ops::gather_rows(send_buf_, src, send_token_);
  exchange(send_buf_, out, w, false);
}

void ExpertExchange::dispatch_blocks(const Tensor& out, const Tensor& src) {
  DECO_ASSERT(src.size(0) == tokens_ && src.size(1) == experts_ && out.size(0) == received_ &&
                  out.size(1) == per_rank_, "expert exchange: dispatch_blocks shapes");
  send_buf_.ensure(src.dtype(), src.device(), Shape{sent_total_, per_rank_});
  ops::gather_rows(send_buf_, src.view(Shape{tokens_ * comm_->size(), per_rank_}), send_block_);
  exchange(send_buf_, out, per_rank_, false);
}

void ExpertExchange::combine_add(const Tensor& dst, const Tensor& src) {
  const int64_t w = src.size(1);
  DECO_ASSERT(src.size(0) == received_ && dst.size(0) == tokens_ && dst.size(1) == w,
              "expert exchange: combine_add shapes");
  send_buf_.ensure(src.dtype(), src.device(), Shape{sent_total_, w});
  exchange(send_buf_, src, w, true);
  // A token's rows from several peers add in send order (peer order): deterministic.
  ops::scatter_add_rows(dst, send_buf_, send_token_);
}

void ExpertExchange::combine_blocks(const Tensor& dst, const Tensor& src) {
  DECO_ASSERT(src.size(0) == received_ && src.size(1) == per_rank_ && dst.size(0) == tokens_ &&
                  dst.size(1) == experts_, "expert exchange: combine_blocks shapes");
  send_buf_.ensure(src.dtype(), src.device(), Shape{sent_total_, per_rank_});
  exchange(send_buf_, src, per_rank_, true);
  ops::zero(dst);
  // Each (token, peer) block comes back once: adding into zeros places it.
  ops::scatter_add_rows(dst.view(Shape{tokens_ * comm_->size(), per_rank_}), send_buf_, send_block_);
}

}  // namespace deco
