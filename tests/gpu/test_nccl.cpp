// NcclComm: every collective and dtype on device tensors, and the host
// conveniences through its staging, against values each rank computes on
// its own (tests/mpi/collective_checks.h, the checks the MPI tests run).
// Alone it is a group of one bootstrapped by SelfComm; under mpirun on a
// machine with several GPUs (one per rank) it bootstraps over MpiComm.
// Exits 77 (CTest: skipped) when there is no GPU.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/layout.h"
#include "parallel/mpi_runtime.h"
#include "parallel/nccl_comm.h"
#include "tests/mpi/collective_checks.h"

using namespace deco;
using namespace deco::test;

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // every line reaches the log even if a collective hangs
  if (cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping the NCCL tests\n");
    return 77;
  }
  try {
    const LaunchInfo launch = detect_launch();
    const int device = select_local_device(launch);  // before MPI, as deco train does
    ProcessGroups groups = make_process_groups(launch, 1, 0);
    // The launch order a run with several communicators takes (nccl_comm.h),
    // set before the first communicator as enable_device_collectives sets it.
    const NcclLaunchOrder order = nccl_launch_order(nccl_runtime_version(), std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT"));
    use_nccl_launch_order(order);
    // nullptr, as the trainer passes it: ordered after the current stream,
    // the legacy one the collective checks fill their inputs on.
    std::unique_ptr<Communicator> nccl = make_nccl_comm(*groups.world, device, nullptr);

    std::vector<std::string> failures;
    int checks = 0;
    auto record = [&](std::vector<std::string> more) {
      ++checks;
      failures.insert(failures.end(), more.begin(), more.end());
    };
    if (nccl->size() != groups.world->size() || nccl->rank() != groups.world->rank() || nccl->name() != "world")
      failures.push_back("the NCCL communicator's rank, size or name differ from its bootstrap's");
    for (DType dtype : collective_dtypes(Device::CUDA))
      for (int64_t n : {1, 5, 4099}) {
        record(check_all_reduce(*nccl, Device::CUDA, dtype, ReduceOp::Sum, n));
        record(check_all_reduce(*nccl, Device::CUDA, dtype, ReduceOp::Max, n));
        record(check_reduce_scatter(*nccl, Device::CUDA, dtype, n));
        record(check_all_gather(*nccl, Device::CUDA, dtype, n));
        record(check_broadcast(*nccl, Device::CUDA, dtype, n));
        record(check_all_to_all(*nccl, Device::CUDA, dtype, n == 1 ? 0 : n));
        record(check_all_reduce_async(*nccl, Device::CUDA, dtype, n));
      }
    // Host tensors, staged through device memory.
    record(check_all_reduce(*nccl, Device::CPU, DType::F32, ReduceOp::Sum, 5));
    record(check_all_to_all(*nccl, Device::CPU, DType::I64, 3));
    record(check_host_conveniences(*nccl));

    // More communicators over the same ranks, as a run with expert
    // parallelism creates them, used side by side as a step uses them: two
    // sharing one stream (the remedy where NCCL cannot order launches
    // across communicators) with each other, and, where NCCL orders
    // launches itself (Implicit), communicators on streams of their own.
    {
      const NcclStream shared = make_nccl_stream();
      std::unique_ptr<Communicator> first = make_nccl_comm(*groups.world, device, nullptr, shared);
      std::unique_ptr<Communicator> second = make_nccl_comm(*groups.world, device, nullptr, shared);
      for (DType dtype : {DType::F32, DType::BF16}) {
        record(check_interleaved(*first, *second, Device::CUDA, dtype, 4099));
        record(check_interleaved(*second, *first, Device::CUDA, dtype, 1 << 20));
      }
    }  // both destroyed here, the shared stream with the last of them
    if (order == NcclLaunchOrder::Implicit) {
      std::unique_ptr<Communicator> other = make_nccl_comm(*groups.world, device, nullptr);
      for (DType dtype : {DType::F32, DType::BF16}) {
        record(check_interleaved(*nccl, *other, Device::CUDA, dtype, 4099));
        record(check_interleaved(*other, *nccl, Device::CUDA, dtype, 1 << 20));
      }
    }

    for (const std::string& line : failures) std::printf("FAIL %s\n", line.c_str());
    std::printf("rank %lld of %lld: %d NCCL checks, %zu failures\n", static_cast<long long>(nccl->rank()),
                static_cast<long long>(nccl->size()), checks, failures.size());
    nccl.reset();
    return failures.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    abort_job(e.what(), 1);
  }
}
