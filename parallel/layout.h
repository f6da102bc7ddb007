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

#include <memory>
#include <string>

#include "parallel/comm.h"
#include "parallel/launch.h"

namespace deco {

struct ParallelLayout {
  int64_t world_size = 1, rank = 0;
  int64_t ep_size = 1, ep_rank = 0;
  int64_t dp_size = 1, dp_rank = 0;                // dense parameters: the world
  int64_t expert_dp_size = 1, expert_dp_rank = 0;  // expert parameters

  std::string describe() const;  // one line for the start-up banner
};

struct ProcessGroups {
  ParallelLayout layout;
  std::unique_ptr<Communicator> world, data_parallel, expert_parallel, expert_data_parallel;
};

// Builds the groups for this process. Refuses layouts that cannot work
// (world not divisible by ep_size, experts not divisible by ep_size) with a
// message, before any work is done.
ProcessGroups make_process_groups(const LaunchInfo& launch, int64_t ep_size, int64_t num_experts);

}  // namespace deco
