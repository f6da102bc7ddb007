#include "trainer/exit_signal.h"

#include <pthread.h>

#include <atomic>
#include <cstring>

#include "core/error.h"

namespace deco {
namespace {

// One handler per process at a time: the flag a signal handler may touch
// must be a lock-free atomic (or a volatile sig_atomic_t).
std::atomic<bool> g_received{false};
std::atomic<bool> g_installed{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal flag must be lock-free");

extern "C" void on_exit_signal(int) { g_received.store(true); }

}  // namespace

int exit_signal_number(ExitSignal signal) {
  switch (signal) {
    case ExitSignal::Term: return SIGTERM;
    case ExitSignal::Int: return SIGINT;
    case ExitSignal::Usr1: return SIGUSR1;
    case ExitSignal::Usr2: return SIGUSR2;
  }
  return SIGTERM;
}

const char* exit_signal_name(ExitSignal signal) {
  switch (signal) {
    case ExitSignal::Term: return "SIGTERM";
    case ExitSignal::Int: return "SIGINT";
    case ExitSignal::Usr1: return "SIGUSR1";
    case ExitSignal::Usr2: return "SIGUSR2";
  }
  return "?";
}

ExitSignalHandler::ExitSignalHandler(ExitSignal signal) : signal_(signal) {
  DECO_ASSERT(!g_installed.exchange(true), "one ExitSignalHandler at a time");
  g_received.store(false);
  struct sigaction action {};
  action.sa_handler = on_exit_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND | SA_RESTART;  // the second signal gets the default action
  const int number = exit_signal_number(signal);
  if (sigaction(number, &action, &previous_) != 0) {
    const int error = errno;
    g_installed.store(false);
    fail("cannot install a handler for ", exit_signal_name(signal), " (training.exit_signal_handler): ",
         std::strerror(error), ".");
  }
  // A launcher may have blocked it; this thread (and the threads it starts) take it then.
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, number);
  pthread_sigmask(SIG_UNBLOCK, &set, &old);
  was_blocked_ = sigismember(&old, number) == 1;
}

ExitSignalHandler::~ExitSignalHandler() {
  const int number = exit_signal_number(signal_);
  sigaction(number, &previous_, nullptr);
  if (was_blocked_) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, number);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }
  g_installed.store(false);
}

bool ExitSignalHandler::received() const { return g_received.load(); }

}  // namespace deco
