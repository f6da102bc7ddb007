// deco init, deco eval, deco data samples: the parity tooling that lets
// other implementations load deco's weights and check its losses and gradients.
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "data/npy.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "parallel/layout.h"
#include "trainer/config.h"
#include "trainer/data_sources.h"
#include "trainer/weights_io.h"

namespace deco::cli {
namespace {

std::map<std::string, std::string> provenance(const Config& config) {
  return {{"config", config_to_yaml(config)}, {"deco_version", DECO_VERSION}};
}

}  // namespace

int init(const InitArgs& args) {
  const Config config = load_config(args.cfg.config, args.cfg.sets);
  Model model(config.model, DType::F32, Device::CPU);
  model.init(args.seed >= 0 ? static_cast<uint64_t>(args.seed) : config.training.seed);
  save_weights_h5(args.out, model.params(), provenance(config));
  std::printf("wrote %lld parameters in %zu tensors to %s\n",
              static_cast<long long>(model.layout().num_parameters()), model.layout().specs().size(),
              args.out.c_str());
  return 0;
}

int eval(const EvalArgs& args) {
  const Config config = load_config(args.cfg.config, args.cfg.sets);
  const ModelConfig& m = config.model;
  // Everything the user handed in is checked before any compute.
  const TokenArray tokens = read_token_npy(args.tokens, m.vocab_size, m.seq_length);
  Model model(m, DType::F32, Device::CPU);
  load_weights_h5(args.weights, model.params());
  model.refresh_derived();

  StepOptions opt;
  opt.reg = m.num_experts > 0 ? config.sparsity.reg_type : RegType::None;
  opt.reg_coef = args.reg_coef >= 0 ? args.reg_coef : config.sparsity.initial_coef();
  opt.grad_scale = 1.0;
  opt.backward = !args.dump_grads.empty();
  // The whole array is one batch: lm_loss is the mean over all its target tokens.
  const Tensor t(const_cast<int32_t*>(tokens.tokens.data()), DType::I32, Device::CPU,
                 Shape{tokens.rows, tokens.cols});
  ops::zero(model.grads().flat());
  const StepResult r = model.step(t, opt);

  nlohmann::json out;
  out["lm_loss"] = r.lm_loss();
  out["reg_loss"] = r.reg_loss;
  out["tokens"] = r.tokens;
  if (r.routed_slots() > 0) {
    out["activation_ratio"] = static_cast<double>(r.active_pairs()) / static_cast<double>(r.routed_slots());
    std::vector<double> per_layer;
    for (const DecoLayerStats& s : r.deco_layers)
      per_layer.push_back(static_cast<double>(s.active_pairs) /
                          static_cast<double>(s.tokens * static_cast<int64_t>(s.expert_tokens.size())));
    out["activation_ratio_per_layer"] = per_layer;
  } else {
    out["activation_ratio"] = nullptr;
    out["activation_ratio_per_layer"] = nlohmann::json::array();
  }
  if (opt.backward) {
    auto attrs = provenance(config);
    attrs["content"] = "gradient of lm_loss + reg_loss";
    save_weights_h5(args.dump_grads, model.grads(), attrs);
  }
  std::cout << out.dump() << std::endl;  // nlohmann prints doubles with round-trip precision
  return 0;
}

int data_samples(const SamplesArgs& args) {
  const Config config = load_config(args.cfg.config, args.cfg.sets);
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
  const TrainingData data = make_training_data(config, groups);
  const SampleSource* source = args.split == "valid" ? data.valid.get()
                               : args.split == "test" ? data.test.get()
                                                      : data.train.get();
  if (source == nullptr)
    fail(config.source, ": the ", args.split, " split of data.data_path is empty; check data.split.");
  // With one data-parallel rank the training order is the sample order; the
  // dataset itself applies Megatron's shuffle.
  const int64_t len = source->sample_tokens();
  std::vector<int32_t> out(static_cast<size_t>(args.first * len));
  for (int64_t i = 0; i < args.first; ++i) source->read(i, out.data() + i * len);
  write_npy(args.out, "<i4", {args.first, len}, out.data());
  std::printf("wrote %lld samples of %lld tokens (%s split) to %s\n", args.first, static_cast<long long>(len),
              args.split.c_str(), args.out.c_str());
  return 0;
}

}  // namespace deco::cli
