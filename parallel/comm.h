// Collectives over a process group, behind one interface: the trainer and
// the model reduce gradients, exchange tokens and combine metrics through it
// without knowing how many processes there are or what moves the bytes.
// Implementations: SelfComm (the group of one process: a single-process run),
// MpiComm (host memory, parallel/mpi_comm.h) and NcclComm (device memory,
// parallel/nccl_comm.h).
//
// Every collective must be called by every rank of the group, in the same
// order, with matching shapes and dtypes. Tensors are contiguous.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace deco {

enum class ReduceOp { Sum, Max };

// A collective started by an *_async call. Its tensor must stay untouched
// (and alive) until wait() has returned. Requests of one communicator
// complete in the order they were started.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  // Blocks until the collective has completed on this rank (under the same
  // timeout and error handling as the blocking calls).
  virtual void wait() = 0;
  // Lets it progress without blocking (MPI advances non-blocking
  // collectives only inside MPI calls); true once it has completed.
  virtual bool test() { return false; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  virtual std::string name() const = 0;  // "world", "data-parallel", ... (for messages)

  // In place: x = op over the group of x.
  virtual void all_reduce(const Tensor& x, ReduceOp op) = 0;
  // in has size() * n elements, out n: out = the sum over the group of
  // in's chunk number rank(). in and out must not overlap.
  virtual void reduce_scatter(const Tensor& out, const Tensor& in) = 0;
  // in has n elements, out size() * n: chunk r of out = in of rank r.
  virtual void all_gather(const Tensor& out, const Tensor& in) = 0;
  // Personalized exchange with per-peer counts (in elements): `in` holds
  // send_counts[0] elements for rank 0, then send_counts[1] for rank 1, ...;
  // `out` receives recv_counts[p] elements from each rank p, in rank order.
  // recv_counts[p] must equal rank p's send_counts[rank()] (exchange counts
  // first, e.g. with all_to_all_counts).
  virtual void all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                          const std::vector<int64_t>& send_counts) = 0;
  // x on every rank = x of `root`.
  virtual void broadcast(const Tensor& x, int64_t root) = 0;
  virtual void barrier() = 0;
  // all_reduce started without waiting for it: on MPI a non-blocking
  // collective, on NCCL one enqueued on a stream of its own after the work
  // queued so far, so it overlaps what the caller launches next. The
  // default completes it before returning.
  virtual std::unique_ptr<PendingCollective> all_reduce_async(const Tensor& x, ReduceOp op);
  // The sum over the group of x into rank `root`'s x, started as
  // all_reduce_async is; the other ranks' x is left unspecified (the
  // distributed optimizer's overlapped buckets: each has one owner). The
  // default is all_reduce_async, which gives every rank the sum.
  virtual std::unique_ptr<PendingCollective> reduce_async(const Tensor& x, int64_t root);

  // Conveniences over the above, for host values.
  void all_reduce_sum(const Tensor& x) { all_reduce(x, ReduceOp::Sum); }
  void all_reduce_sum(std::vector<double>& values);
  void all_reduce_sum(std::vector<int64_t>& values);
  void all_reduce_max(std::vector<double>& values);
  // send[p] = how many elements this rank sends to rank p; returns recv,
  // recv[p] = how many rank p sends to this rank.
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send);
};

// Host tensors to one communicator, device tensors to another, over the
// same ranks: MpiComm and NcclComm of one group, so that the trainer and the
// model call one Communicator for GPU gradients and host metrics alike.
// Collectives on host values (the conveniences above, all_to_all_counts)
// take the host side.
class ByDeviceComm final : public Communicator {
 public:
  ByDeviceComm(std::unique_ptr<Communicator> host, std::unique_ptr<Communicator> device);
  int64_t rank() const override { return host_->rank(); }
  int64_t size() const override { return host_->size(); }
  std::string name() const override { return host_->name(); }
  void all_reduce(const Tensor& x, ReduceOp op) override { pick(x).all_reduce(x, op); }
  void reduce_scatter(const Tensor& out, const Tensor& in) override { pick(in).reduce_scatter(out, in); }
  void all_gather(const Tensor& out, const Tensor& in) override { pick(in).all_gather(out, in); }
  void all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                  const std::vector<int64_t>& send_counts) override {
    pick(in).all_to_all(out, recv_counts, in, send_counts);
  }
  void broadcast(const Tensor& x, int64_t root) override { pick(x).broadcast(x, root); }
  void barrier() override { host_->barrier(); }
  std::unique_ptr<PendingCollective> all_reduce_async(const Tensor& x, ReduceOp op) override {
    return pick(x).all_reduce_async(x, op);
  }
  std::unique_ptr<PendingCollective> reduce_async(const Tensor& x, int64_t root) override {
    return pick(x).reduce_async(x, root);
  }

 private:
  Communicator& pick(const Tensor& t) { return t.device() == Device::CPU ? *host_ : *device_; }
  std::unique_ptr<Communicator> host_, device_;
};

class SelfComm final : public Communicator {
 public:
  explicit SelfComm(std::string name) : name_(std::move(name)) {}
  int64_t rank() const override { return 0; }
  int64_t size() const override { return 1; }
  std::string name() const override { return name_; }
  // A group of one already holds the sum, the max and the root's data.
  void all_reduce(const Tensor&, ReduceOp) override {}
  void reduce_scatter(const Tensor& out, const Tensor& in) override;  // copies
  void all_gather(const Tensor& out, const Tensor& in) override;      // copies
  void all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                  const std::vector<int64_t>& send_counts) override;  // copies
  void broadcast(const Tensor&, int64_t) override {}
  void barrier() override {}

 private:
  std::string name_;
};

}  // namespace deco
