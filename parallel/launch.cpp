#include "parallel/launch.h"

#include <cstdlib>

#ifdef DECO_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "core/error.h"
#include "core/tensor.h"

namespace deco {
namespace {

bool read_int(const char* name, int64_t& out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return false;
  char* end = nullptr;
  const long long parsed = std::strtoll(v, &end, 10);
  if (*end != '\0' || parsed < 0)
    fail("the launcher set ", name, "='", v, "', which is not a non-negative integer; "
         "check the mpirun command line.");
  out = parsed;
  return true;
}

}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo info;
  info.launcher = "none";
  if (read_int("OMPI_COMM_WORLD_SIZE", info.world_size)) {
    info.launcher = "openmpi";
    read_int("OMPI_COMM_WORLD_RANK", info.rank);
    read_int("OMPI_COMM_WORLD_LOCAL_RANK", info.local_rank);
  } else if (read_int("PMI_SIZE", info.world_size)) {
    info.launcher = "pmi";
    read_int("PMI_RANK", info.rank);
    if (!read_int("MPI_LOCALRANKID", info.local_rank)) info.local_rank = info.rank;
  }
  return info;
}

int select_local_device(const LaunchInfo& launch) {
#ifdef DECO_WITH_CUDA
  const int count = cuda_device_count();
  if (count == 0) return -1;
  const int device = static_cast<int>(launch.local_rank % count);
  const cudaError_t status = cudaSetDevice(device);
  if (status != cudaSuccess)
    fail("could not select GPU ", device, " for local rank ", launch.local_rank, ": ",
         cudaGetErrorString(status), "; check CUDA_VISIBLE_DEVICES and nvidia-smi.");
  return device;
#else
  (void)launch;
  return -1;
#endif
}

}  // namespace deco
