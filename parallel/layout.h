// The parallel layout and its process groups, built from one rank-ordering
// rule (Megatron's, with tensor and pipeline parallel sizes of 1):
//
//   rank = expert_dp_rank * ep_size + ep_rank
//
// Expert-parallel groups are runs of ep_size consecutive ranks (so they sit
// on one node when ep_size divides the GPUs per node); the expert-data-
// parallel group of a rank holds the ranks with its ep_rank. Dense
// parameters are data-parallel over the whole world; routed-expert
// parameters over the expert-data-parallel group (world / ep_size ranks).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/comm.h"
#include "parallel/launch.h"

namespace deco {

struct ParallelLayout {
  int64_t world_size = 1, rank = 0;
  int64_t ep_size = 1, ep_rank = 0;
  int64_t dp_size = 1, dp_rank = 0;                // dense parameters: the world
  int64_t expert_dp_size = 1, expert_dp_rank = 0;  // expert parameters

  std::string describe() const;  // one line for the start-up banner

  // The world ranks of every group of a kind, in group-rank order, from the
  // rule alone (no communication): expert-parallel groups are
  // [g*ep_size, (g+1)*ep_size), expert-data-parallel group e is
  // {e, e + ep_size, e + 2*ep_size, ...}.
  std::vector<std::vector<int64_t>> expert_parallel_groups() const;
  std::vector<std::vector<int64_t>> expert_data_parallel_groups() const;
};

// The layout of rank launch.rank of launch.world_size. Refuses layouts that
// cannot work (world not divisible by ep_size, experts not divisible by
// ep_size) with a message; every rank raises the same one, and no MPI call
// has been made yet.
ParallelLayout make_parallel_layout(const LaunchInfo& launch, int64_t ep_size, int64_t num_experts);

struct ProcessGroups {
  ParallelLayout layout;
  std::unique_ptr<Communicator> world, data_parallel, expert_parallel, expert_data_parallel;
  // After enable_device_collectives: the NCCL version, the communicators and
  // how their kernels are ordered, for the banner; empty without NCCL.
  std::string device_collectives;

  // For rank 0 to print at start: the members of each group kind, e.g.
  // "data-parallel group: [0 1 2 3]; expert-parallel groups: [0 1] [2 3];
  // expert-data-parallel groups: [0 2] [1 3]" (long lists are elided).
  std::string describe_groups() const;
};

// Builds the groups for this process: the layout's checks first, then, for
// more than one process, MPI (parallel/mpi_runtime.h) and one MpiComm per
// group; a single process gets SelfComm groups and never touches MPI.
ProcessGroups make_process_groups(const LaunchInfo& launch, int64_t ep_size, int64_t num_experts);

// GPU training over several processes: each group becomes a ByDeviceComm,
// device tensors through a NcclComm over the group's ranks on this
// process's current GPU (its unique id broadcast over the group's MpiComm),
// host values still through MPI. Collective over the world, in the same
// group order on every rank; a single process keeps its SelfComm groups.
// Fails in a build without NCCL.
void enable_device_collectives(ProcessGroups& groups);

}  // namespace deco
