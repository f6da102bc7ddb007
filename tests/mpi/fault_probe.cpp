// A small program that misbehaves on purpose, for tests/mpi/test_faults.py:
// how a multi-process job ends when one rank fails, stalls or is launched
// into an impossible layout.
//
//   deco_fault_probe SCENARIO [--pid-file F]
//
//   ok      every rank sums its rank over the world and prints the sum
//   abort   the last rank calls abort_job after 1 s; the others wait in an all_reduce
//   stall   watchdog timeout 3 s; the last rank sleeps instead of joining the all_reduce
//   hang    like stall with the watchdog off (for Ctrl-C: the driver interrupts mpirun)
//   layout  expert-parallel size 2: refused unless the world is even
//
// Errors end the job the way the deco command should in a multi-process
// run: catch deco::Error at the top and pass its message to abort_job.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "parallel/layout.h"
#include "parallel/mpi_runtime.h"

using namespace deco;

namespace {

void sum_ranks_over_world(ProcessGroups& groups) {
  std::vector<double> value{static_cast<double>(groups.layout.rank)};
  std::printf("probe: rank %lld entering all_reduce\n", static_cast<long long>(groups.layout.rank));
  std::fflush(stdout);
  groups.world->all_reduce_sum(value);
  std::printf("probe: rank %lld sum %.0f\n", static_cast<long long>(groups.layout.rank), value[0]);
  std::fflush(stdout);
}

int run(const std::string& scenario, const std::string& pid_file) {
  const LaunchInfo launch = detect_launch();
  if (!pid_file.empty()) std::ofstream(pid_file + "." + std::to_string(launch.rank)) << getpid() << "\n";
  const bool last = launch.rank == launch.world_size - 1;
  if (scenario == "layout") {
    make_process_groups(launch, 2, 4);
    fail("deco_fault_probe: the layout scenario expects an odd number of processes");
  }
  if (scenario == "stall") set_collective_timeout(3);
  if (scenario == "hang") set_collective_timeout(0);
  ProcessGroups groups = make_process_groups(launch, 1, 0);
  if (scenario == "ok") {
    sum_ranks_over_world(groups);
  } else if (scenario == "abort") {
    if (last) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      abort_job("probe: this rank gave up", 3);
    }
    sum_ranks_over_world(groups);
  } else if (scenario == "stall" || scenario == "hang") {
    if (last) {
      std::this_thread::sleep_for(std::chrono::seconds(120));
      return 0;
    }
    sum_ranks_over_world(groups);
  } else {
    fail("deco_fault_probe: unknown scenario '", scenario, "'; use ok, abort, stall, hang or layout");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: deco_fault_probe ok|abort|stall|hang|layout [--pid-file F]\n");
    return 2;
  }
  const std::string pid_file = argc >= 4 && std::string(argv[2]) == "--pid-file" ? argv[3] : "";
  try {
    return run(argv[1], pid_file);
  } catch (const Error& e) {
    abort_job(e.what(), 1);
  }
}
