#include "parallel/comm.h"

#include "core/error.h"

namespace deco {
namespace {

void copy_elements(const Tensor& out, int64_t out_offset, const Tensor& in, int64_t in_offset, int64_t n) {
  DECO_ASSERT(out.dtype() == in.dtype(), "collective: dtypes differ");
  DECO_ASSERT(out_offset + n <= out.numel() && in_offset + n <= in.numel(), "collective: counts exceed the tensors");
  const size_t es = dtype_size(in.dtype());
  device_copy(out.device(), static_cast<char*>(out.raw()) + out_offset * es, in.device(),
              static_cast<const char*>(in.raw()) + in_offset * es, static_cast<size_t>(n) * es);
}

}  // namespace

namespace {
class Completed final : public PendingCollective {
 public:
  void wait() override {}
  bool test() override { return true; }
};
}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_reduce_async(const Tensor& x, ReduceOp op) {
  all_reduce(x, op);
  return std::make_unique<Completed>();
}

std::unique_ptr<PendingCollective> Communicator::reduce_async(const Tensor& x, int64_t root) {
  DECO_ASSERT(root >= 0 && root < size(), "reduce_async: root ", root, " of a group of ", size());
  return all_reduce_async(x, ReduceOp::Sum);
}

ByDeviceComm::ByDeviceComm(std::unique_ptr<Communicator> host, std::unique_ptr<Communicator> device)
    : host_(std::move(host)), device_(std::move(device)) {
  DECO_ASSERT(host_->size() == device_->size() && host_->rank() == device_->rank(),
              "ByDeviceComm: the host and device communicators of ", host_->name(), " differ in rank or size");
}

void Communicator::all_reduce_sum(std::vector<double>& values) {
  if (values.empty() || size() == 1) return;
  all_reduce(Tensor(values.data(), DType::F64, Device::CPU, Shape{static_cast<int64_t>(values.size())}),
             ReduceOp::Sum);
}

void Communicator::all_reduce_sum(std::vector<int64_t>& values) {
  if (values.empty() || size() == 1) return;
  all_reduce(Tensor(values.data(), DType::I64, Device::CPU, Shape{static_cast<int64_t>(values.size())}),
             ReduceOp::Sum);
}

void Communicator::all_reduce_max(std::vector<double>& values) {
  if (values.empty() || size() == 1) return;
  all_reduce(Tensor(values.data(), DType::F64, Device::CPU, Shape{static_cast<int64_t>(values.size())}),
             ReduceOp::Max);
}

std::vector<int64_t> Communicator::all_to_all_counts(const std::vector<int64_t>& send) {
  DECO_ASSERT(static_cast<int64_t>(send.size()) == size(), "all_to_all_counts: one count per rank");
  std::vector<int64_t> recv(send.size(), 0);
  std::vector<int64_t> send_copy = send;
  const std::vector<int64_t> ones(send.size(), 1);
  all_to_all(Tensor(recv.data(), DType::I64, Device::CPU, Shape{size()}), ones,
             Tensor(send_copy.data(), DType::I64, Device::CPU, Shape{size()}), ones);
  return recv;
}

void SelfComm::reduce_scatter(const Tensor& out, const Tensor& in) {
  DECO_ASSERT(in.numel() == out.numel(), "reduce_scatter: in must hold size() * out elements");
  copy_elements(out, 0, in, 0, out.numel());
}

void SelfComm::all_gather(const Tensor& out, const Tensor& in) {
  DECO_ASSERT(in.numel() == out.numel(), "all_gather: out must hold size() * in elements");
  copy_elements(out, 0, in, 0, in.numel());
}

void SelfComm::all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                          const std::vector<int64_t>& send_counts) {
  DECO_ASSERT(recv_counts.size() == 1 && send_counts.size() == 1 && recv_counts[0] == send_counts[0],
              "all_to_all: a group of one sends itself what it receives");
  copy_elements(out, 0, in, 0, send_counts[0]);
}

}  // namespace deco
