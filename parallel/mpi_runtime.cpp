#include "parallel/mpi_runtime.h"

#include <mpi.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <thread>

#include "core/error.h"

namespace deco {
namespace {

// Everything the runtime knows, allocated once and never destroyed: the
// watchdog thread and abort_job may run while static destructors do.
struct RuntimeState {
  std::atomic<bool> active{false};
  std::atomic<int> rank{-1}, size{-1};  // MPI's, once initialized
  std::atomic<int64_t> timeout_ms{600'000};

  // The collective in flight: start time in steady-clock nanoseconds, 0 when
  // none. Written by the main thread, read by the watchdog.
  std::atomic<int64_t> wait_started_ns{0};
  std::atomic<const char*> wait_collective{""}, wait_group{""};

  std::mutex watchdog_mutex;
  std::condition_variable watchdog_wake;
  bool watchdog_stop = false;  // guarded by watchdog_mutex
  std::thread watchdog;

  std::mutex names_mutex;
  std::set<std::string> group_names;  // node-based: c_str() pointers stay valid
};

RuntimeState& state() {
  static RuntimeState* s = new RuntimeState();
  return *s;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The exit code a stalled collective ends the job with (what `timeout` uses).
constexpr int kStalledExitCode = 124;

// How often the watchdog looks: often enough that a short test timeout
// fires on time, rarely enough to cost nothing against a 600 s limit.
std::chrono::milliseconds watchdog_period(int64_t timeout_ms) {
  if (timeout_ms <= 0) return std::chrono::milliseconds(1000);
  const int64_t period = timeout_ms / 20;
  return std::chrono::milliseconds(period < 50 ? 50 : (period > 1000 ? 1000 : period));
}

void watchdog_loop() {
  RuntimeState& s = state();
  std::unique_lock<std::mutex> lock(s.watchdog_mutex);
  while (!s.watchdog_stop) {
    s.watchdog_wake.wait_for(lock, watchdog_period(s.timeout_ms.load()));
    const int64_t timeout_ms = s.timeout_ms.load();  // set_collective_timeout wakes us to re-read it
    if (s.watchdog_stop || timeout_ms <= 0) continue;
    const int64_t started = s.wait_started_ns.load(std::memory_order_acquire);
    if (started == 0) continue;
    const double waited_s = static_cast<double>(now_ns() - started) * 1e-9;
    if (waited_s * 1000.0 < static_cast<double>(timeout_ms)) continue;
    // The names may belong to a collective that began a moment ago; they are
    // interned, so reading them is safe either way.
    const std::string message =
        stalled_collective_message(s.wait_collective.load(), s.wait_group.load(), waited_s);
    lock.unlock();
    abort_job(message, kStalledExitCode);
  }
}

void finalize_at_exit() {
  RuntimeState& s = state();
  {
    std::lock_guard<std::mutex> lock(s.watchdog_mutex);
    s.watchdog_stop = true;
  }
  s.watchdog_wake.notify_all();
  if (s.watchdog.joinable()) s.watchdog.join();
  s.active.store(false);
  MPI_Finalize();
}

// Ctrl-C (mpirun forwards it to every rank as SIGINT/SIGTERM) must end each
// rank with the default action. A launcher or a parent may have blocked them;
// threads inherit the mask, so unblock before starting the watchdog.
void unblock_termination_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace

std::string stalled_collective_message(const std::string& collective, const std::string& group,
                                       double waited_seconds) {
  return str(collective, " on the ", group, " group has waited ", static_cast<int64_t>(waited_seconds),
             " s; another rank has probably failed or stopped (see its error above); aborting the job");
}

void mpi_init(const LaunchInfo& launch) {
  RuntimeState& s = state();
  if (!launch.under_mpi() || s.active.load()) return;
  unblock_termination_signals();
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
    fail("MPI_Init_thread failed on rank ", launch.rank, " of ", launch.world_size,
         "; check that mpirun and the MPI library deco was built with come from the same installation.");
  if (provided < MPI_THREAD_SERIALIZED)
    fail("the MPI library provides thread level ", provided, " but deco needs MPI_THREAD_SERIALIZED (",
         MPI_THREAD_SERIALIZED, ") because its data loader and checkpoint writer are threads; "
         "use an MPI built with thread support.");
  // Errors come back as codes, so MpiComm can say which call failed where
  // (communicators split from the world inherit this).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  s.rank.store(rank);
  s.size.store(size);
  s.active.store(true);
  std::atexit(finalize_at_exit);
  s.watchdog = std::thread(watchdog_loop);
}

bool mpi_active() { return state().active.load(); }

void abort_job(const std::string& message, int code) {
  // One abort per process: the watchdog and the main thread may race here.
  static std::atomic<bool> aborting{false};
  if (aborting.exchange(true)) {
    for (;;) pause();  // the first caller ends the process
  }
  RuntimeState& s = state();
  std::fflush(stdout);
  if (s.active.load()) {
    std::fprintf(stderr, "error: rank %d of %d: %s\n", s.rank.load(), s.size.load(), message.c_str());
    std::fflush(stderr);
    // MPI_Abort tells the launcher, which kills every rank; it does not
    // return. Should an MPI library return anyway, exiting without
    // MPI_Finalize still makes mpirun end the job.
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }
  // Not (yet) initialized: a single process, or a rank that failed before
  // MPI_Init (a launch or layout error, raised identically on every rank).
  LaunchInfo launch;
  try {
    launch = detect_launch();
  } catch (const Error&) {
    launch.launcher = "none";  // a malformed launcher variable: report the message without a rank
  }
  if (launch.under_mpi())
    std::fprintf(stderr, "error: rank %lld of %lld: %s\n", static_cast<long long>(launch.rank),
                 static_cast<long long>(launch.world_size), message.c_str());
  else
    std::fprintf(stderr, "error: %s\n", message.c_str());
  std::fflush(stderr);
  std::exit(code);
}

void set_collective_timeout(double seconds) {
  if (!(seconds >= 0))
    fail("the collective timeout must be a non-negative number of seconds (0 disables it), got ", seconds, ".");
  state().timeout_ms.store(static_cast<int64_t>(seconds * 1000.0));
  state().watchdog_wake.notify_all();
}

double collective_timeout() { return static_cast<double>(state().timeout_ms.load()) / 1000.0; }

CollectiveWait::CollectiveWait(const char* collective, const char* group) {
  RuntimeState& s = state();
  s.wait_collective.store(collective, std::memory_order_relaxed);
  s.wait_group.store(group, std::memory_order_relaxed);
  s.wait_started_ns.store(now_ns(), std::memory_order_release);
}

CollectiveWait::~CollectiveWait() { state().wait_started_ns.store(0, std::memory_order_release); }

const char* intern_group_name(const std::string& name) {
  RuntimeState& s = state();
  std::lock_guard<std::mutex> lock(s.names_mutex);
  return s.group_names.insert(name).first->c_str();
}

}  // namespace deco
