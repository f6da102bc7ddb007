#include "kernels/runtime.h"

#include <cblas.h>
#include <sys/resource.h>

#include <cstdlib>
#include <fstream>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deco {

void set_cpu_threads(int64_t threads) {
#ifdef _OPENMP
  // 0: OMP_NUM_THREADS when the environment sets it (as for other OpenMP
  // programs: several processes sharing a machine each take a few), else
  // every core.
  const char* env = std::getenv("OMP_NUM_THREADS");
  const int from_env = env != nullptr ? std::atoi(env) : 0;
  const int n = threads > 0 ? static_cast<int>(threads) : from_env > 0 ? from_env : omp_get_num_procs();
  omp_set_num_threads(n);
#else
  const int n = 1;
#endif
  openblas_set_num_threads(n);
}

int64_t cpu_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

const char* cpu_blas_name() { return openblas_get_config(); }

double host_memory_available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0.0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024.0;
  return 0.0;
}

int64_t peak_resident_bytes() {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace deco
