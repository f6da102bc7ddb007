#include "parallel/layout.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/mpi_comm.h"
#include "parallel/mpi_runtime.h"
#ifdef DECO_WITH_NCCL
#include "parallel/nccl_comm.h"
#endif

namespace deco {
namespace {

// Another group's communicator under this group's name, for a group with
// the same members (the world and the data-parallel group). Not owning: the
// groups live and die together in ProcessGroups.
class SharedComm final : public Communicator {
 public:
  SharedComm(Communicator& target, std::string name) : target_(target), name_(std::move(name)) {}
  int64_t rank() const override { return target_.rank(); }
  int64_t size() const override { return target_.size(); }
  std::string name() const override { return name_; }
  void all_reduce(const Tensor& x, ReduceOp op) override { target_.all_reduce(x, op); }
  void reduce_scatter(const Tensor& out, const Tensor& in) override { target_.reduce_scatter(out, in); }
  void all_gather(const Tensor& out, const Tensor& in) override { target_.all_gather(out, in); }
  void all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                  const std::vector<int64_t>& send_counts) override {
    target_.all_to_all(out, recv_counts, in, send_counts);
  }
  void broadcast(const Tensor& x, int64_t root) override { target_.broadcast(x, root); }
  void barrier() override { target_.barrier(); }
  std::unique_ptr<PendingCollective> all_reduce_async(const Tensor& x, ReduceOp op) override {
    return target_.all_reduce_async(x, op);
  }
  std::unique_ptr<PendingCollective> reduce_async(const Tensor& x, int64_t root) override {
    return target_.reduce_async(x, root);
  }

 private:
  Communicator& target_;
  std::string name_;
};

// "[0 1 2 3]", or "[0 8 16 ... 504]" for a long group (groups are arithmetic
// progressions, so the first members and the last say it all).
std::string format_members(const std::vector<int64_t>& members) {
  constexpr size_t kShown = 3, kMaxListed = 8;
  std::string out = "[";
  for (size_t i = 0; i < members.size(); ++i) {
    if (members.size() > kMaxListed && i == kShown) {
      out += " ...";
      i = members.size() - 1;
    }
    out += str(i == 0 ? "" : " ", members[i]);
  }
  return out + "]";
}

// "[0 1] [2 3]", or the first groups, "...", the last and the count.
std::string format_groups(const std::vector<std::vector<int64_t>>& groups) {
  constexpr size_t kShown = 3, kMaxListed = 8;
  std::string out;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups.size() > kMaxListed && g == kShown) {
      out += " ...";
      g = groups.size() - 1;
    }
    out += (g == 0 ? "" : " ") + format_members(groups[g]);
  }
  if (groups.size() > kMaxListed) out += str(" (", groups.size(), " groups)");
  return out;
}

}  // namespace

std::string ParallelLayout::describe() const {
  return str("world ", world_size, " = expert-parallel ", ep_size, " x expert-data-parallel ",
             expert_dp_size, "; dense parameters data-parallel over ", dp_size, " ranks");
}

std::vector<std::vector<int64_t>> ParallelLayout::expert_parallel_groups() const {
  std::vector<std::vector<int64_t>> groups(static_cast<size_t>(expert_dp_size));
  for (int64_t r = 0; r < world_size; ++r) groups[static_cast<size_t>(r / ep_size)].push_back(r);
  return groups;
}

std::vector<std::vector<int64_t>> ParallelLayout::expert_data_parallel_groups() const {
  std::vector<std::vector<int64_t>> groups(static_cast<size_t>(ep_size));
  for (int64_t r = 0; r < world_size; ++r) groups[static_cast<size_t>(r % ep_size)].push_back(r);
  return groups;
}

std::string ProcessGroups::describe_groups() const {
  std::vector<int64_t> everyone;
  for (int64_t r = 0; r < layout.world_size; ++r) everyone.push_back(r);
  return str("data-parallel group: ", format_members(everyone),
             "; expert-parallel groups: ", format_groups(layout.expert_parallel_groups()),
             "; expert-data-parallel groups: ", format_groups(layout.expert_data_parallel_groups()));
}

ParallelLayout make_parallel_layout(const LaunchInfo& launch, int64_t ep_size, int64_t num_experts) {
  if (ep_size < 1) fail("parallel.expert_model_parallel_size must be at least 1, got ", ep_size, ".");
  if (launch.world_size % ep_size != 0)
    fail("parallel.expert_model_parallel_size (", ep_size, ") must divide the number of processes (",
         launch.world_size, "); launch a multiple of ", ep_size, " processes or change the key.");
  if (num_experts > 0 && num_experts % ep_size != 0)
    fail("parallel.expert_model_parallel_size (", ep_size, ") must divide model.num_experts (",
         num_experts, ") so every rank owns the same number of experts.");
  ParallelLayout L;
  L.world_size = launch.world_size;
  L.rank = launch.rank;
  L.ep_size = ep_size;
  L.ep_rank = L.rank % ep_size;
  L.expert_dp_size = L.world_size / ep_size;
  L.expert_dp_rank = L.rank / ep_size;
  L.dp_size = L.world_size;
  L.dp_rank = L.rank;
  return L;
}

void enable_device_collectives(ProcessGroups& groups) {
  if (groups.layout.world_size == 1) return;
#ifdef DECO_WITH_NCCL
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess)
    fail("rank ", groups.layout.rank, " has no usable GPU for NCCL; check nvidia-smi and CUDA_VISIBLE_DEVICES.");
  // NCCL refuses (or hangs on) two ranks of one communicator on one GPU,
  // which more ranks per node than GPUs would give (local rank % GPUs):
  // every rank sees every rank's (host, GPU) and all refuse it alike.
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::vector<int64_t> mine{static_cast<int64_t>(std::hash<std::string>{}(host) & 0x7fffffffffffull), device};
  std::vector<int64_t> all(2 * static_cast<size_t>(groups.layout.world_size));
  groups.world->all_gather(Tensor(all.data(), DType::I64, Device::CPU, Shape{static_cast<int64_t>(all.size())}),
                           Tensor(mine.data(), DType::I64, Device::CPU, Shape{2}));
  for (int64_t r = 0; r < groups.layout.world_size; ++r)
    if (r != groups.layout.rank && all[2 * r] == mine[0] && all[2 * r + 1] == mine[1])
      fail("ranks ", std::min(r, groups.layout.rank), " and ", std::max(r, groups.layout.rank), " both use GPU ",
           device, " of ", host, ", and NCCL needs a GPU per rank; launch at most as many ranks per node as it has "
           "GPUs (mpirun -np N --map-by ppr:GPUS:node), or train on the CPU.");
  // One NCCL communicator per distinct group with more than one rank (each
  // holds GPU buffers and takes seconds to create): the data-parallel group
  // is the world (dp_size = world_size), so the world's device side is the
  // same communicator, and so is the expert-data-parallel group's without
  // expert parallelism (rank r at position r in all three); a group of one
  // needs none (SelfComm copies on the GPU too).
  std::unique_ptr<Communicator>* const kinds[] = {&groups.data_parallel, &groups.world, &groups.expert_parallel,
                                                  &groups.expert_data_parallel};
  auto shares_data_parallel = [&](std::unique_ptr<Communicator>* group) {
    return group == &groups.world || (group == &groups.expert_data_parallel && groups.layout.ep_size == 1);
  };
  int communicators = 0;
  for (std::unique_ptr<Communicator>* group : kinds)
    communicators += (*group)->size() > 1 && !shares_data_parallel(group) ? 1 : 0;
  // More than one: the expert exchange (blocking) runs while the gradient
  // buckets of the other groups are in flight, so their kernels must run in
  // one order on every rank (nccl_comm.h). Every rank takes the same remedy:
  // the shared stream if any rank needs it.
  const int version = nccl_runtime_version();
  NcclStream shared_stream;
  groups.device_collectives = str("NCCL ", nccl_version_string(version), ", ", communicators, " communicator",
                                  communicators > 1 ? "s" : "", " per rank");
  if (communicators > 1) {
    NcclLaunchOrder order = nccl_launch_order(version, std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT"));
    int64_t needs_shared = order == NcclLaunchOrder::SharedStream ? 1 : 0;
    groups.world->all_reduce(Tensor(&needs_shared, DType::I64, Device::CPU, Shape{1}), ReduceOp::Max);
    if (needs_shared != 0) order = NcclLaunchOrder::SharedStream;
    use_nccl_launch_order(order);
    if (order == NcclLaunchOrder::SharedStream) shared_stream = make_nccl_stream();
    groups.device_collectives +=
        order == NcclLaunchOrder::Implicit
            ? "; their kernels run in host launch order (NCCL_LAUNCH_ORDER_IMPLICIT=1)"
            : "; they share one stream, so their kernels run one at a time in launch order (NCCL before 2.26, "
              "or NCCL_LAUNCH_ORDER_IMPLICIT=0)";
  }
  Communicator* data_parallel_nccl = nullptr;
  for (std::unique_ptr<Communicator>* group : kinds) {
    std::unique_ptr<Communicator> device_side;
    if ((*group)->size() == 1) {
      device_side = std::make_unique<SelfComm>((*group)->name());
    } else if (shares_data_parallel(group)) {
      // One communicator and one stream: without expert parallelism the
      // dense and expert gradient buckets never run NCCL kernels side by side.
      DECO_ASSERT(data_parallel_nccl != nullptr && (*group)->size() == groups.data_parallel->size(),
                  "a group sharing the data-parallel group's communicator has its members");
      device_side = std::make_unique<SharedComm>(*data_parallel_nccl, (*group)->name());
    } else {
      // nullptr: ordered after the calling thread's current stream at each call (core/stream.h).
      device_side = make_nccl_comm(**group, device, nullptr, shared_stream);
    }
    if (group == &groups.data_parallel) data_parallel_nccl = device_side.get();
    *group = std::make_unique<ByDeviceComm>(std::move(*group), std::move(device_side));
  }
#else
  fail("GPU training over ", groups.layout.world_size, " processes needs NCCL, and this deco was built without it; "
       "rebuild where nccl.h and libnccl are found (see CMakeLists.txt), or train on one GPU.");
#endif
}

ProcessGroups make_process_groups(const LaunchInfo& launch, int64_t ep_size, int64_t num_experts) {
  ProcessGroups groups;
  groups.layout = make_parallel_layout(launch, ep_size, num_experts);
  const ParallelLayout& L = groups.layout;
  if (L.world_size == 1) {
    groups.world = std::make_unique<SelfComm>("world");
    groups.data_parallel = std::make_unique<SelfComm>("data-parallel");
    groups.expert_parallel = std::make_unique<SelfComm>("expert-parallel");
    groups.expert_data_parallel = std::make_unique<SelfComm>("expert-data-parallel");
    return groups;
  }

  mpi_init(launch);
  if (!mpi_active())
    fail("this process is rank ", launch.rank, " of ", launch.world_size,
         " but was not started by an MPI launcher; start multi-process runs with mpirun -np N.");
  std::unique_ptr<MpiComm> world = MpiComm::world("world");
  if (world->size() != L.world_size || world->rank() != L.rank)
    fail("MPI reports rank ", world->rank(), " of ", world->size(), " but the launcher's environment (",
         launch.launcher, ") says rank ", L.rank, " of ", L.world_size,
         "; start deco with the mpirun of the MPI it was built with (compare `which mpirun` with `ldd deco`).");
  // Each group is its own communicator, so a watchdog message names the
  // group that stalled. Splitting by the rule's two coordinates:
  // same expert_dp_rank -> one expert-parallel group (ordered by ep_rank),
  // same ep_rank -> one expert-data-parallel group (ordered by expert_dp_rank).
  groups.data_parallel = MpiComm::world("data-parallel");
  groups.expert_parallel =
      world->split(static_cast<int>(L.expert_dp_rank), static_cast<int>(L.ep_rank), "expert-parallel");
  groups.expert_data_parallel =
      world->split(static_cast<int>(L.ep_rank), static_cast<int>(L.expert_dp_rank), "expert-data-parallel");
  groups.world = std::move(world);
  return groups;
}

}  // namespace deco
