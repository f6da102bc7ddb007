#include "parallel/layout.h"

#include "core/error.h"

namespace deco {

std::string ParallelLayout::describe() const {
  return str("world ", world_size, " = expert-parallel ", ep_size, " x expert-data-parallel ",
             expert_dp_size, "; dense parameters data-parallel over ", dp_size, " ranks");
}

ProcessGroups make_process_groups(const LaunchInfo& launch, int64_t ep_size, int64_t num_experts) {
  if (ep_size < 1) fail("parallel.expert_model_parallel_size must be at least 1, got ", ep_size, ".");
  if (launch.world_size % ep_size != 0)
    fail("parallel.expert_model_parallel_size (", ep_size, ") must divide the number of processes (",
         launch.world_size, "); launch a multiple of ", ep_size, " processes or change the key.");
  if (num_experts > 0 && num_experts % ep_size != 0)
    fail("parallel.expert_model_parallel_size (", ep_size, ") must divide model.num_experts (",
         num_experts, ") so every rank owns the same number of experts.");
  if (launch.world_size > 1)
    fail("this build of deco trains in a single process; it was launched as rank ", launch.rank,
         " of ", launch.world_size, " by ", launch.launcher,
         ". Multi-process data and expert parallelism (parallel/) is the next work item; "
         "run without mpirun for now.");

  ProcessGroups groups;
  ParallelLayout& L = groups.layout;
  L.world_size = launch.world_size;
  L.rank = launch.rank;
  L.ep_size = ep_size;
  L.ep_rank = L.rank % ep_size;
  L.expert_dp_size = L.world_size / ep_size;
  L.expert_dp_rank = L.rank / ep_size;
  L.dp_size = L.world_size;
  L.dp_rank = L.rank;
  groups.world = std::make_unique<SelfComm>("world");
  groups.data_parallel = std::make_unique<SelfComm>("data-parallel");
  groups.expert_parallel = std::make_unique<SelfComm>("expert-parallel");
  groups.expert_data_parallel = std::make_unique<SelfComm>("expert-data-parallel");
  return groups;
}

}  // namespace deco
