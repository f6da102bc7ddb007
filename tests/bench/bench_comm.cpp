// MpiComm bandwidth: all-reduce (sum, fp32, in place) and all-to-all (equal
// counts, fp32) over message sizes 1 KB ... 256 MB, as nccl-tests reports
// them. Run under mpirun through scripts/bench_comm.sh.
//
//   mpirun -np N deco_bench_comm [--min-bytes B] [--max-bytes B] [--iters K] [--warmup W]
//
// Size is the bytes each rank contributes (all-reduce: its buffer;
// all-to-all: its whole send buffer, size/N to each peer). Time is the
// median over iterations of the slowest rank's time (a collective is done
// when its last rank is). algbw = size / time; busbw (nccl-tests'
// definitions, comparable across rank counts): all-reduce algbw * 2(N-1)/N,
// all-to-all algbw * (N-1)/N. For scale, each row also shows memcpy's
// bandwidth at that size, every rank copying its own buffer at the same
// time: the floor for moving bytes through shared memory on this machine.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "parallel/layout.h"
#include "parallel/mpi_runtime.h"

using namespace deco;

namespace {

struct Options {
  int64_t min_bytes = 1024, max_bytes = int64_t{256} << 20;
  int iters = 20, warmup = 3;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const int64_t value = std::atoll(argv[i + 1]);
    if (key == "--min-bytes") o.min_bytes = value;
    else if (key == "--max-bytes") o.max_bytes = value;
    else if (key == "--iters") o.iters = static_cast<int>(value);
    else if (key == "--warmup") o.warmup = static_cast<int>(value);
    else fail("deco_bench_comm: unknown option ", key, "; use --min-bytes, --max-bytes, --iters or --warmup");
  }
  if (o.min_bytes < 4 || o.max_bytes < o.min_bytes || o.iters < 1 || o.warmup < 0)
    fail("deco_bench_comm: need 4 <= --min-bytes <= --max-bytes, --iters >= 1 and --warmup >= 0");
  return o;
}

// Median over iterations of the slowest rank's seconds for one call of `op`.
double median_seconds(Communicator& world, const Options& o, const std::function<void()>& op) {
  for (int i = 0; i < o.warmup; ++i) op();
  std::vector<double> times(static_cast<size_t>(o.iters));
  for (double& t : times) {
    world.barrier();  // start together, so the slowest rank's time is the collective's
    const auto start = std::chrono::steady_clock::now();
    op();
    t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  world.all_reduce_max(times);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::string human_bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 20)) return str(bytes >> 20, " MB");
  return str(bytes >> 10, " KB");
}

void print_row(bool show, const char* op, int64_t bytes, double seconds, double bus_factor, double memcpy_seconds) {
  if (!show) return;
  const double algbw = static_cast<double>(bytes) / seconds / 1e9;
  std::printf("%-10s %9s %12.1f %12.3f %12.3f %12.3f\n", op, human_bytes(bytes).c_str(), seconds * 1e6, algbw,
              algbw * bus_factor, static_cast<double>(bytes) / memcpy_seconds / 1e9);
  std::fflush(stdout);
}

int run(int argc, char** argv) {
  const Options o = parse(argc, argv);
  ProcessGroups groups = make_process_groups(detect_launch(), 1, 0);
  Communicator& world = *groups.world;
  const int64_t n = world.size();
  const bool root = world.rank() == 0;
  if (root) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING] = "single process";
    int length = 0;
    if (mpi_active()) MPI_Get_library_version(version, &length);
    std::string first_line = version;
    first_line = first_line.substr(0, first_line.find_first_of(",\n"));
    std::printf("MpiComm bandwidth, %lld ranks (%s); median of %d iterations after %d warm-up; GB/s = 1e9 B/s\n",
                static_cast<long long>(n), first_line.c_str(), o.iters, o.warmup);
    std::printf("%-10s %9s %12s %12s %12s %12s\n", "op", "size", "time (us)", "algbw GB/s", "busbw GB/s",
                "memcpy GB/s");
  }
  const double n_d = static_cast<double>(n);
  // Zero-filled (so every page is touched before timing), and zeros stay
  // zero under repeated in-place sums: no overflow, no denormals.
  Buffer a(DType::F32, Device::CPU, Shape{o.max_bytes / 4});
  Buffer b(DType::F32, Device::CPU, Shape{o.max_bytes / 4});

  auto memcpy_seconds = [&](int64_t bytes) {
    return median_seconds(world, o, [&] { std::memcpy(b.tensor().raw(), a.tensor().raw(), static_cast<size_t>(bytes)); });
  };
  for (int64_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 4) {
    const Tensor x = a.tensor().slice(0, bytes / 4);
    print_row(root, "allreduce", bytes, median_seconds(world, o, [&] { world.all_reduce(x, ReduceOp::Sum); }),
              2.0 * (n_d - 1) / n_d, memcpy_seconds(bytes));
  }
  for (int64_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 4) {
    const int64_t per_peer = bytes / 4 / n;
    const Tensor in = a.tensor().slice(0, per_peer * n), out = b.tensor().slice(0, per_peer * n);
    const std::vector<int64_t> counts(static_cast<size_t>(n), per_peer);
    print_row(root, "alltoall", per_peer * n * 4,
              median_seconds(world, o, [&] { world.all_to_all(out, counts, in, counts); }), (n_d - 1) / n_d,
              memcpy_seconds(per_peer * n * 4));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    abort_job(e.what(), 1);
  }
}
