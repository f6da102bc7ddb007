// Collectives over a process group, behind one interface: the trainer
// reduces gradients and metrics through it without knowing how many
// processes there are or what moves the bytes (MPI for host memory, NCCL
// for device memory; the distribution work adds those). SelfComm is the
// group of one process, the whole world of a single-process run.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace deco {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  virtual std::string name() const = 0;
  // In place: x = sum over the group of x (same shape on every rank).
  virtual void all_reduce_sum(const Tensor& x) = 0;
  // Host scalars, in place (metrics: losses, counts).
  virtual void all_reduce_sum(std::vector<double>& values) = 0;
  virtual void all_reduce_sum(std::vector<int64_t>& values) = 0;
  virtual void all_reduce_max(std::vector<double>& values) = 0;
  // x on every rank = x of `root`.
  virtual void broadcast(const Tensor& x, int64_t root) = 0;
  virtual void barrier() = 0;
};

class SelfComm final : public Communicator {
 public:
  explicit SelfComm(std::string name) : name_(std::move(name)) {}
  int64_t rank() const override { return 0; }
  int64_t size() const override { return 1; }
  std::string name() const override { return name_; }
  // A group of one already holds the sum, the max and the root's data.
  void all_reduce_sum(const Tensor&) override {}
  void all_reduce_sum(std::vector<double>&) override {}
  void all_reduce_sum(std::vector<int64_t>&) override {}
  void all_reduce_max(std::vector<double>&) override {}
  void broadcast(const Tensor&, int64_t) override {}
  void barrier() override {}

 private:
  std::string name_;
};

}  // namespace deco
