// deco: train and inspect DECO models. See README.md for the quickstart.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "core/error.h"

namespace {

void add_config_options(CLI::App* app, deco::cli::ConfigArgs& cfg) {
  app->add_option("--config", cfg.config, "YAML config file (see configs/)")->required();
  app->add_option("--set", cfg.sets, "override a config key: --set optimizer.lr=3e-4 (repeatable)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"deco: pre-training for DECO sparse Mixture-of-Experts transformers"};
  app.set_version_flag("--version", std::string("deco ") + DECO_VERSION);
  app.require_subcommand(1);

  deco::cli::TrainArgs train;
  CLI::App* train_cmd = app.add_subcommand("train", "train a model");
  add_config_options(train_cmd, train.cfg);
  train_cmd->add_option("--run-dir", train.run_dir, "directory for config.yaml and metrics.jsonl");

  deco::cli::ConfigArgs info;
  CLI::App* info_cmd = app.add_subcommand("info", "parameter counts and training FLOPs of a config");
  add_config_options(info_cmd, info);

  deco::cli::InitArgs init;
  CLI::App* init_cmd = app.add_subcommand("init", "write freshly initialized weights to HDF5");
  add_config_options(init_cmd, init.cfg);
  init_cmd->add_option("--out", init.out, "output .h5 file")->required();
  init_cmd->add_option("--seed", init.seed, "initialization seed (default: training.seed)");

  deco::cli::EvalArgs eval;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "loss (and gradients) of given weights on a token array; prints one JSON line");
  add_config_options(eval_cmd, eval.cfg);
  eval_cmd->add_option("--weights", eval.weights, "weights .h5 (from deco init)")->required();
  eval_cmd->add_option("--tokens", eval.tokens, "int32/int64 .npy of shape [B, S+1]")->required();
  eval_cmd->add_option("--reg-coef", eval.reg_coef, "sparsity coefficient lambda (default: the config's initial one)");
  eval_cmd->add_option("--dump-grads", eval.dump_grads, "write d(lm_loss + reg_loss)/d(parameter) to this .h5");

  CLI::App* data_cmd = app.add_subcommand("data", "inspect training data");
  data_cmd->require_subcommand(1);
  deco::cli::SamplesArgs samples;
  CLI::App* samples_cmd = data_cmd->add_subcommand(
      "samples", "write the first N samples of a split, in training order, to .npy [N, seq_length+1]");
  add_config_options(samples_cmd, samples.cfg);
  samples_cmd->add_option("--split", samples.split, "train, valid or test")
      ->check(CLI::IsMember({"train", "valid", "test"}));
  samples_cmd->add_option("--first", samples.first, "number of samples")->required()->check(CLI::PositiveNumber);
  samples_cmd->add_option("--out", samples.out, "output .npy file")->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*train_cmd) return deco::cli::train(train);
    if (*info_cmd) return deco::cli::info(info);
    if (*init_cmd) return deco::cli::init(init);
    if (*eval_cmd) return deco::cli::eval(eval);
    if (*samples_cmd) return deco::cli::data_samples(samples);
  } catch (const deco::Error& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {  // internal errors carry their own "internal error at" text
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  }
  return 0;
}
