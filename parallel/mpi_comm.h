// A Communicator over an MPI communicator, for host memory: the CPU
// backend's gradient reductions and token exchanges, metrics, and the
// bootstrap of NCCL. Device memory goes through NcclComm.
//
// dtypes: F32, F64, I32, I64; bfloat16 for the collectives that only move
// data (all-gather, all-to-all, broadcast: its 16 bits travel as they are),
// not for reductions (MPI has no bfloat16 arithmetic). Every call blocks until this rank's part is done, runs under
// the collective watchdog (parallel/mpi_runtime.h), and ends the job with
// file, line and MPI's message should MPI report an error (the group cannot
// go on after a collective failed on one rank).
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/comm.h"

namespace deco {

class MpiComm final : public Communicator {
 public:
  // Takes ownership of `comm` (freed at destruction; MPI_COMM_WORLD itself
  // must not be passed: duplicate it). MPI must be initialized (mpi_init).
  MpiComm(MPI_Comm comm, std::string name);
  ~MpiComm() override;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  // A duplicate of MPI_COMM_WORLD named `name`.
  static std::unique_ptr<MpiComm> world(const std::string& name);
  // MPI_Comm_split of this group: ranks with the same `color` form a group,
  // ordered by `key`. Collective over this group.
  std::unique_ptr<MpiComm> split(int color, int key, const std::string& name) const;

  int64_t rank() const override { return rank_; }
  int64_t size() const override { return size_; }
  std::string name() const override { return name_; }
  MPI_Comm handle() const { return comm_; }

  void all_reduce(const Tensor& x, ReduceOp op) override;
  void reduce_scatter(const Tensor& out, const Tensor& in) override;
  void all_gather(const Tensor& out, const Tensor& in) override;
  void all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                  const std::vector<int64_t>& send_counts) override;
  void broadcast(const Tensor& x, int64_t root) override;
  void barrier() override;
  // MPI_Iallreduce (in chunks below MPI's count limit); wait() runs under the watchdog.
  std::unique_ptr<PendingCollective> all_reduce_async(const Tensor& x, ReduceOp op) override;
  std::unique_ptr<PendingCollective> reduce_async(const Tensor& x, int64_t root) override;

 private:
  MPI_Comm comm_;
  std::string name_;
  const char* watchdog_name_;  // name_, interned for the watchdog thread
  int64_t rank_ = 0, size_ = 1;
};

}  // namespace deco
