// The parallel layout and its process groups: the rule
// rank = expert_dp_rank * ep_size + ep_rank, the refusals of impossible
// layouts, and (under mpirun) that each group's communicator holds exactly
// the ranks the rule names, for every expert-parallel size the world allows.
#include <catch2/catch.hpp>

#include "core/error.h"
#include "parallel/layout.h"
#include "tests/mpi/collective_checks.h"
#ifdef DECO_WITH_NCCL
#include "parallel/nccl_comm.h"
#endif

using namespace deco;
using namespace deco::test;

namespace {

LaunchInfo launch_of(int64_t world_size, int64_t rank) {
  LaunchInfo launch;
  launch.world_size = world_size;
  launch.rank = rank;
  launch.launcher = world_size > 1 ? "openmpi" : "none";
  return launch;
}

// The world ranks of `group`'s members, in group-rank order, learnt by
// communication (each member contributes its world rank).
std::vector<int64_t> members_of(Communicator& group, int64_t world_rank) {
  std::vector<int64_t> mine{world_rank}, all(static_cast<size_t>(group.size()));
  group.all_gather(Tensor(all.data(), DType::I64, Device::CPU, Shape{group.size()}),
                   Tensor(mine.data(), DType::I64, Device::CPU, Shape{1}));
  return all;
}

}  // namespace

TEST_CASE("the layout follows rank = expert_dp_rank * ep_size + ep_rank", "[layout]") {
  const ParallelLayout L = make_parallel_layout(launch_of(8, 5), 2, 16);
  CHECK(L.ep_size == 2);
  CHECK(L.ep_rank == 1);
  CHECK(L.expert_dp_size == 4);
  CHECK(L.expert_dp_rank == 2);
  CHECK(L.dp_size == 8);
  CHECK(L.dp_rank == 5);
  using Groups = std::vector<std::vector<int64_t>>;
  CHECK(L.expert_parallel_groups() == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  CHECK(L.expert_data_parallel_groups() == Groups{{0, 2, 4, 6}, {1, 3, 5, 7}});
  const ParallelLayout whole = make_parallel_layout(launch_of(4, 0), 4, 8);
  CHECK(whole.expert_parallel_groups() == Groups{{0, 1, 2, 3}});
  CHECK(whole.expert_data_parallel_groups() == Groups{{0}, {1}, {2}, {3}});
}

TEST_CASE("describe_groups lists each group kind's members", "[layout]") {
  ProcessGroups four;
  four.layout = make_parallel_layout(launch_of(4, 0), 2, 8);
  CHECK(four.describe_groups() ==
        "data-parallel group: [0 1 2 3]; expert-parallel groups: [0 1] [2 3]; "
        "expert-data-parallel groups: [0 2] [1 3]");
  ProcessGroups large;
  large.layout = make_parallel_layout(launch_of(64, 0), 4, 64);
  CHECK(large.describe_groups() ==
        "data-parallel group: [0 1 2 ... 63]; expert-parallel groups: [0 1 2 3] [4 5 6 7] [8 9 10 11] ... "
        "[60 61 62 63] (16 groups); expert-data-parallel groups: [0 4 8 ... 60] [1 5 9 ... 61] "
        "[2 6 10 ... 62] [3 7 11 ... 63]");
}

TEST_CASE("impossible layouts are refused before any collective", "[layout]") {
  CHECK_THROWS_WITH(make_process_groups(launch_of(3, 1), 2, 4),
                    "parallel.expert_model_parallel_size (2) must divide the number of processes (3); "
                    "launch a multiple of 2 processes or change the key.");
  CHECK_THROWS_WITH(make_process_groups(launch_of(4, 1), 4, 6),
                    "parallel.expert_model_parallel_size (4) must divide model.num_experts (6) so every "
                    "rank owns the same number of experts.");
  CHECK_THROWS_AS(make_process_groups(launch_of(4, 1), 0, 6), Error);
}

#ifdef DECO_WITH_NCCL
// What keeps several NCCL communicators of one GPU from deadlocking
// (nccl_comm.h): NCCL's implicit launch order where the library has it and
// the user did not turn it off, else one shared stream. Needs no GPU.
TEST_CASE("several NCCL communicators: implicit launch order from NCCL 2.26, else one stream", "[layout]") {
  CHECK(nccl_launch_order(22600, nullptr) == NcclLaunchOrder::Implicit);
  CHECK(nccl_launch_order(22809, nullptr) == NcclLaunchOrder::Implicit);
  CHECK(nccl_launch_order(22809, "1") == NcclLaunchOrder::Implicit);
  CHECK(nccl_launch_order(22809, "") == NcclLaunchOrder::Implicit);  // empty counts as unset
  CHECK(nccl_launch_order(22809, "0") == NcclLaunchOrder::SharedStream);
  CHECK(nccl_launch_order(22809, "08") == NcclLaunchOrder::SharedStream);  // NCCL's strtoll(base 0) reads 0
  CHECK(nccl_launch_order(22809, "0x1") == NcclLaunchOrder::Implicit);
  CHECK(nccl_launch_order(22507, nullptr) == NcclLaunchOrder::SharedStream);
  CHECK(nccl_launch_order(22507, "1") == NcclLaunchOrder::SharedStream);  // 2.25 has no such variable
  CHECK(nccl_version_string(22809) == "2.28.9");
  CHECK(nccl_version_string(2804) == "2.8.4");  // the code before 2.9
  CHECK(nccl_runtime_version() >= 2000);        // the library linked in answers without a GPU
}
#endif

TEST_CASE("each group's communicator holds the ranks the rule names", "[groups]") {
  const LaunchInfo launch = detect_launch();
  for (int64_t ep_size : {1, 2, 4}) {
    if (launch.world_size % ep_size != 0) continue;
    INFO("world " << launch.world_size << ", expert-parallel size " << ep_size);
    ProcessGroups groups = make_process_groups(launch, ep_size, 8);
    const ParallelLayout& L = groups.layout;
    CHECK(L.rank == L.expert_dp_rank * ep_size + L.ep_rank);

    CHECK(groups.world->name() == "world");
    CHECK(groups.world->size() == launch.world_size);
    CHECK(groups.world->rank() == launch.rank);
    CHECK(groups.data_parallel->name() == "data-parallel");
    CHECK(groups.data_parallel->size() == L.dp_size);
    CHECK(groups.data_parallel->rank() == L.dp_rank);
    CHECK(groups.expert_parallel->name() == "expert-parallel");
    CHECK(groups.expert_parallel->size() == ep_size);
    CHECK(groups.expert_parallel->rank() == L.ep_rank);
    CHECK(groups.expert_data_parallel->name() == "expert-data-parallel");
    CHECK(groups.expert_data_parallel->size() == L.expert_dp_size);
    CHECK(groups.expert_data_parallel->rank() == L.expert_dp_rank);

    std::vector<int64_t> everyone(static_cast<size_t>(launch.world_size));
    for (size_t r = 0; r < everyone.size(); ++r) everyone[r] = static_cast<int64_t>(r);
    CHECK(members_of(*groups.world, L.rank) == everyone);
    CHECK(members_of(*groups.data_parallel, L.rank) == everyone);
    CHECK(members_of(*groups.expert_parallel, L.rank) ==
          L.expert_parallel_groups()[static_cast<size_t>(L.expert_dp_rank)]);
    CHECK(members_of(*groups.expert_data_parallel, L.rank) ==
          L.expert_data_parallel_groups()[static_cast<size_t>(L.ep_rank)]);

    // The groups are independent communicators: interleaved collectives on
    // them do not mix.
    for (Communicator* group : {groups.expert_parallel.get(), groups.expert_data_parallel.get()}) {
      CHECK(join(check_all_reduce(*group, Device::CPU, DType::F32, ReduceOp::Sum, 5)) == "");
      CHECK(join(check_all_to_all(*group, Device::CPU, DType::I64, 3)) == "");
      CHECK(join(check_host_conveniences(*group)) == "");
    }
  }
}
