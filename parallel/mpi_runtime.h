// The MPI runtime of a multi-process run: initialization, finalization,
// ending the whole job on an error, and the collective watchdog.
//
// MPI is initialized only for a process an MPI launcher started (and only
// when the layout needs more than one process): a single-process run never
// calls an MPI function, not even MPI_Initialized, so the same binary runs on
// machines with no MPI runtime.
//
// Why a watchdog: when one rank dies or stops calling collectives, the others
// wait inside MPI forever, printing nothing (the hang users of Megatron-LM
// know). Every blocking collective marks itself in flight (CollectiveWait);
// a background thread ends the job with a message once one has waited longer
// than the timeout.
#pragma once

#include <cstdint>
#include <string>

#include "parallel/launch.h"

namespace deco {

// Initializes MPI (MPI_THREAD_SERIALIZED: the trainer calls collectives only
// from its main thread) when launch.under_mpi(), once; later calls do nothing.
// Registers MPI_Finalize at exit and starts the watchdog. Does nothing for a
// process not started by a launcher.
void mpi_init(const LaunchInfo& launch);
// True between mpi_init's MPI_Init_thread and the finalization at exit.
bool mpi_active();

// Ends the job: prints "error: rank R of N: <message>" ("error: <message>" in
// a single process) to stderr, flushes, and calls MPI_Abort(MPI_COMM_WORLD,
// code) when MPI is active, which makes mpirun kill every rank; otherwise
// exits with `code`. For errors after which the other ranks cannot go on
// (they would wait for this rank in their next collective).
[[noreturn]] void abort_job(const std::string& message, int code);

// The watchdog's limit on one blocking collective, in seconds (default 600;
// 0 disables it). Takes effect immediately, also for a wait in progress.
void set_collective_timeout(double seconds);
double collective_timeout();

// "all_reduce on the data-parallel group has waited 600 s; another rank has
// probably failed or stopped (see its error above); aborting the job": the
// watchdog's message, shared with NcclComm's own timeout.
std::string stalled_collective_message(const std::string& collective, const std::string& group,
                                       double waited_seconds);

// Marks one blocking collective in flight for the watchdog, for the scope of
// the call (construct it right before the blocking MPI call). Costs three
// atomic stores. Not nestable: one collective at a time per process.
class CollectiveWait {
 public:
  // `collective` must be a string literal; `group` a name from
  // intern_group_name (both must outlive any wait, since the watchdog thread
  // reads them).
  CollectiveWait(const char* collective, const char* group);
  ~CollectiveWait();
  CollectiveWait(const CollectiveWait&) = delete;
  CollectiveWait& operator=(const CollectiveWait&) = delete;
};

// A copy of `name` that lives until the process exits, for CollectiveWait.
const char* intern_group_name(const std::string& name);

}  // namespace deco
