// A planned stop on a signal (training.exit_signal_handler, Megatron-LM's
// --exit-signal-handler): a cluster's scheduler warns a job before its time
// limit (Slurm: #SBATCH --signal=USR1@120, or SIGTERM some seconds before
// SIGKILL), and the run should end with a checkpoint rather than lose the
// steps since the last one.
//
// While an ExitSignalHandler lives, the signal only sets a flag; the
// trainer reads it at every step, agrees on it with every rank (a rank
// that got the signal stops them all at the same step), saves and stops.
// The handler is reset on delivery (SA_RESETHAND), so a second signal of
// the same kind acts as it would without deco's handler: a second Ctrl-C
// still ends the process at once. The previous action is restored when
// the handler is destroyed.
#pragma once

#include <csignal>
#include <string>

namespace deco {

enum class ExitSignal { Term, Int, Usr1, Usr2 };
int exit_signal_number(ExitSignal signal);
const char* exit_signal_name(ExitSignal signal);  // "SIGTERM", ...

class ExitSignalHandler {
 public:
  explicit ExitSignalHandler(ExitSignal signal);
  ~ExitSignalHandler();
  ExitSignalHandler(const ExitSignalHandler&) = delete;
  ExitSignalHandler& operator=(const ExitSignalHandler&) = delete;

  // Whether the signal arrived since the handler was installed.
  bool received() const;
  ExitSignal signal() const { return signal_; }

 private:
  ExitSignal signal_;
  struct sigaction previous_ {};
  bool was_blocked_ = false;  // in the installing thread, before: blocked again after
};

}  // namespace deco
