#include "model/expert_exchange.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace deco {
namespace {

template <typename T>
void check_host(const Tensor& t, const char* what) {
  DECO_ASSERT(t.device() == Device::CPU && t.dtype() == dtype_of<T>::value, "expert exchange: ", what,
              " must be host ", dtype_name(dtype_of<T>::value));
}

}  // namespace

void ExpertExchange::plan(const Tensor& z, Communicator& comm) {
  DECO_ASSERT(z.ndim() == 2 && z.device() == Device::CPU, "expert exchange: z must be a host [N, E] tensor");
  comm_ = &comm;
  const int64_t M = comm.size();
  tokens_ = z.size(0);
  experts_ = z.size(1);
  DECO_ASSERT(experts_ % M == 0, "expert exchange: ", experts_, " experts over ", M, " ranks");
  per_rank_ = experts_ / M;
  send_rows_.assign(static_cast<size_t>(M), 0);
  send_token_.clear();
  // Peer-major order: all of peer 0's tokens, then peer 1's, ...
  auto active_on = [&](auto* zp, int64_t t, int64_t p) {
    const auto* row = zp + t * experts_ + p * per_rank_;
    for (int64_t e = 0; e < per_rank_; ++e)
      if (row[e] > 0) return true;
    return false;
  };
  for (int64_t p = 0; p < M; ++p)
    for (int64_t t = 0; t < tokens_; ++t) {
      const bool active = z.dtype() == DType::F32 ? active_on(z.data<float>(), t, p)
                                                  : active_on(z.data<double>(), t, p);
      if (active) {
        send_token_.push_back(static_cast<int32_t>(t));
        ++send_rows_[static_cast<size_t>(p)];
      }
    }
  sent_total_ = static_cast<int64_t>(send_token_.size());
  recv_rows_ = comm.all_to_all_counts(send_rows_);
  received_ = 0;
  for (int64_t r : recv_rows_) received_ += r;
}

void ExpertExchange::exchange(int64_t width, DType dtype, bool back) {
  // Forward: send_buf_ holds sent_total_ rows, recv_buf_ receives received_.
  // Back: recv_buf_ (received_ rows) goes out, send_buf_ receives sent_total_.
  std::vector<int64_t> out_counts = back ? recv_rows_ : send_rows_;
  std::vector<int64_t> in_counts = back ? send_rows_ : recv_rows_;
  for (int64_t& c : out_counts) c *= width;
  for (int64_t& c : in_counts) c *= width;
  const Buffer& from = back ? recv_buf_ : send_buf_;
  Buffer& to = back ? send_buf_ : recv_buf_;
  to.ensure(dtype, Device::CPU, Shape{(back ? sent_total_ : received_) * width});
  comm_->all_to_all(to.tensor(), in_counts, from.tensor(), out_counts);
}

void ExpertExchange::dispatch(const Tensor& out, const Tensor& src) {
  const int64_t w = src.size(1);
  DECO_ASSERT(src.size(0) == tokens_ && out.size(0) == received_ && out.size(1) == w,
              "expert exchange: dispatch shapes");
  const size_t row_bytes = static_cast<size_t>(w) * dtype_size(src.dtype());
  send_buf_.ensure(src.dtype(), Device::CPU, Shape{sent_total_ * w});
  auto* dst = static_cast<char*>(send_buf_.tensor().raw());
  const auto* from = static_cast<const char*>(src.raw());
  for (int64_t i = 0; i < sent_total_; ++i)
    std::memcpy(dst + static_cast<size_t>(i) * row_bytes, from + static_cast<size_t>(send_token_[i]) * row_bytes,
                row_bytes);
  exchange(w, src.dtype(), false);
  std::memcpy(out.raw(), recv_buf_.tensor().raw(), static_cast<size_t>(received_) * row_bytes);
}

void ExpertExchange::dispatch_blocks(const Tensor& out, const Tensor& src) {
  DECO_ASSERT(src.size(0) == tokens_ && src.size(1) == experts_ && out.size(0) == received_ &&
                  out.size(1) == per_rank_, "expert exchange: dispatch_blocks shapes");
  const size_t es = dtype_size(src.dtype()), block_bytes = static_cast<size_t>(per_rank_) * es;
  send_buf_.ensure(src.dtype(), Device::CPU, Shape{sent_total_ * per_rank_});
  auto* dst = static_cast<char*>(send_buf_.tensor().raw());
  const auto* from = static_cast<const char*>(src.raw());
  int64_t i = 0;
  for (size_t p = 0; p < send_rows_.size(); ++p)
    for (int64_t k = 0; k < send_rows_[p]; ++k, ++i) {
      const size_t at = (static_cast<size_t>(send_token_[i]) * static_cast<size_t>(experts_) +
                         p * static_cast<size_t>(per_rank_)) * es;
      std::memcpy(dst + static_cast<size_t>(i) * block_bytes, from + at, block_bytes);
    }
  exchange(per_rank_, src.dtype(), false);
  std::memcpy(out.raw(), recv_buf_.tensor().raw(), static_cast<size_t>(received_) * block_bytes);
}

void ExpertExchange::combine_add(const Tensor& dst, const Tensor& src) {
  const int64_t w = src.size(1);
  DECO_ASSERT(src.size(0) == received_ && dst.size(0) == tokens_ && dst.size(1) == w,
              "expert exchange: combine_add shapes");
  recv_buf_.ensure(src.dtype(), Device::CPU, Shape{received_ * w});
  std::memcpy(recv_buf_.tensor().raw(), src.raw(), static_cast<size_t>(received_ * w) * dtype_size(src.dtype()));
  exchange(w, src.dtype(), true);
  auto add = [&](auto* d, const auto* s) {
    for (int64_t i = 0; i < sent_total_; ++i) {
      auto* row = d + static_cast<int64_t>(send_token_[i]) * w;
      const auto* in = s + i * w;
      for (int64_t j = 0; j < w; ++j) row[j] += in[j];
    }
  };
  if (dst.dtype() == DType::F32) {
    check_host<float>(src, "combine_add source");
    add(dst.data<float>(), send_buf_.data<float>());
  } else {
    check_host<double>(src, "combine_add source");
    add(dst.data<double>(), send_buf_.data<double>());
  }
}

void ExpertExchange::combine_blocks(const Tensor& dst, const Tensor& src) {
  DECO_ASSERT(src.size(0) == received_ && src.size(1) == per_rank_ && dst.size(0) == tokens_ &&
                  dst.size(1) == experts_, "expert exchange: combine_blocks shapes");
  const size_t es = dtype_size(src.dtype()), block_bytes = static_cast<size_t>(per_rank_) * es;
  recv_buf_.ensure(src.dtype(), Device::CPU, Shape{received_ * per_rank_});
  std::memcpy(recv_buf_.tensor().raw(), src.raw(), static_cast<size_t>(received_) * block_bytes);
  exchange(per_rank_, src.dtype(), true);
  std::memset(dst.raw(), 0, static_cast<size_t>(tokens_ * experts_) * es);
  auto* to = static_cast<char*>(dst.raw());
  const auto* from = static_cast<const char*>(send_buf_.tensor().raw());
  int64_t i = 0;
  for (size_t p = 0; p < send_rows_.size(); ++p)
    for (int64_t k = 0; k < send_rows_[p]; ++k, ++i) {
      const size_t at = (static_cast<size_t>(send_token_[i]) * static_cast<size_t>(experts_) +
                         p * static_cast<size_t>(per_rank_)) * es;
      std::memcpy(to + at, from + static_cast<size_t>(i) * block_bytes, block_bytes);
    }
}

}  // namespace deco
