// The subcommands of the `deco` binary. main.cpp parses the command line
// with CLI11 and calls one of these; each returns the process exit code and
// throws deco::Error for anything the user can fix.
#pragma once

#include <string>
#include <vector>

namespace deco::cli {

struct ConfigArgs {
  std::string config;             // --config F
  std::vector<std::string> sets;  // --set section.key=value, in order
};

struct TrainArgs {
  ConfigArgs cfg;
  std::string run_dir;            // --run-dir D (overrides logging.run_dir)
};
int train(const TrainArgs& args);

int info(const ConfigArgs& args);

struct InitArgs {
  ConfigArgs cfg;
  std::string out;
  long long seed = -1;            // -1: training.seed
};
int init(const InitArgs& args);

struct EvalArgs {
  ConfigArgs cfg;
  std::string weights, tokens, dump_grads;
  double reg_coef = -1.0;         // < 0: sparsity.reg_coef_init (lambda_0 by default)
};
int eval(const EvalArgs& args);

struct SamplesArgs {
  ConfigArgs cfg;
  std::string split = "train";
  long long first = 0;
  std::string out;
};
int data_samples(const SamplesArgs& args);

}  // namespace deco::cli
