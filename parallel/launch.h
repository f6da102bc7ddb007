// How this process was started. A process not started by an MPI launcher
// never initializes MPI (so the same binary runs on machines with no MPI
// runtime); one started by mpirun learns its rank from the launcher's
// environment before any MPI call.
#pragma once

#include <cstdint>
#include <string>

namespace deco {

struct LaunchInfo {
  int64_t world_size = 1;
  int64_t rank = 0;
  int64_t local_rank = 0;    // rank within the node: picks the GPU
  std::string launcher;      // "none", "openmpi", "pmi"
  bool under_mpi() const { return launcher != "none"; }
};

// Reads Open MPI's OMPI_COMM_WORLD_* or the PMI_* variables of MPICH-style
// launchers; "none" when neither is set.
LaunchInfo detect_launch();

// Makes GPU local_rank % device_count this process's current CUDA device and
// returns its index, or -1 in a build without CUDA or on a machine without a
// GPU (the CPU backend then runs; this is not an error). With more ranks on a
// node than GPUs, ranks would share GPUs: GPU training over NCCL refuses
// that (enable_device_collectives), CPU training does not use the GPU.
int select_local_device(const LaunchInfo& launch);

}  // namespace deco
