// Process-wide settings of the compute backends.
#pragma once

#include <cstdint>

namespace deco {

// Threads for the CPU backend (OpenMP loops and BLAS); 0 = every core.
void set_cpu_threads(int64_t threads);
int64_t cpu_threads();
// The BLAS library the CPU backend was linked with, for the start-up banner.
const char* cpu_blas_name();
// Host memory the kernel can still give this process (MemAvailable of
// /proc/meminfo), in bytes; 0 when unknown.
double host_memory_available_bytes();
// The most memory this process has held so far: on the CPU backend its peak
// resident set (getrusage's ru_maxrss), in bytes.
int64_t peak_resident_bytes();

}  // namespace deco
