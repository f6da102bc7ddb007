// The configuration system: the shipped configs carry the paper's values,
// config_to_yaml round-trips, overrides apply, and every class of mistake is
// one deco::Error that names the file, the key and the constraint.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "trainer/config.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Contains;
using deco::Config;
using deco::load_config;

namespace {

// A fresh directory under the system temp dir, removed with its files.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("deco_test_config_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path file = path_ / name;
    std::ofstream(file) << text;
    return file.string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

// A small valid configuration that tests edit key by key.
class Doc {
 public:
  Doc() {
    sections_ = {
        {"model",
         {{"num_layers", "2"}, {"hidden_size", "64"}, {"num_attention_heads", "4"},
          {"ffn_hidden_size", "128"}, {"vocab_size", "100"}, {"seq_length", "16"},
          {"num_experts", "8"}, {"moe_ffn_hidden_size", "8"},
          {"moe_shared_expert_intermediate_size", "16"}}},
        {"training",
         {{"micro_batch_size", "2"}, {"global_batch_size", "8"}, {"train_iters", "100"}}},
        {"optimizer", {{"lr", "1.0e-3"}}},
        {"schedule", {{"lr_warmup_iters", "10"}, {"lr_wsd_decay_iters", "50"}}},
    };
  }

  // Sets (or adds) section.key; a new section goes at the end.
  Doc& set(const std::string& section, const std::string& key, const std::string& value) {
    for (auto& [name, keys] : sections_) {
      if (name != section) continue;
      for (auto& kv : keys)
        if (kv.first == key) {
          kv.second = value;
          return *this;
        }
      keys.emplace_back(key, value);
      return *this;
    }
    sections_.push_back({section, {{key, value}}});
    return *this;
  }

  Doc& erase(const std::string& section, const std::string& key) {
    for (auto& [name, keys] : sections_)
      if (name == section)
        for (size_t i = 0; i < keys.size(); ++i)
          if (keys[i].first == key) keys.erase(keys.begin() + static_cast<std::ptrdiff_t>(i));
    return *this;
  }

  Doc& erase_section(const std::string& section) {
    for (size_t i = 0; i < sections_.size(); ++i)
      if (sections_[i].first == section)
        sections_.erase(sections_.begin() + static_cast<std::ptrdiff_t>(i));
    return *this;
  }

  std::string text() const {
    std::string out;
    for (const auto& [name, keys] : sections_) {
      out += name + ":\n";
      for (const auto& [key, value] : keys) out += "  " + key + ": " + value + "\n";
    }
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> sections_;
};

std::string error_of(const std::string& path, const std::vector<std::string>& overrides = {},
                     int64_t world_size = 1) {
  try {
    load_config(path, overrides, world_size);
  } catch (const deco::Error& e) {
    return e.what();
  }
  FAIL("load_config(" << path << ") did not throw");
  return "";
}

// Every field of the two configs but `source`, written out so a key the
// schema forgot would show up as a round-trip difference.
void require_same(const Config& a, const Config& b) {
  const auto& ma = a.model;
  const auto& mb = b.model;
  CHECK(ma.num_layers == mb.num_layers);
  CHECK(ma.hidden_size == mb.hidden_size);
  CHECK(ma.num_attention_heads == mb.num_attention_heads);
  CHECK(ma.num_query_groups == mb.num_query_groups);
  CHECK(ma.ffn_hidden_size == mb.ffn_hidden_size);
  CHECK(ma.vocab_size == mb.vocab_size);
  CHECK(ma.seq_length == mb.seq_length);
  CHECK(ma.norm_epsilon == mb.norm_epsilon);
  CHECK(ma.rotary_base == mb.rotary_base);
  CHECK(ma.init_method_std == mb.init_method_std);
  CHECK(ma.num_experts == mb.num_experts);
  CHECK(ma.moe_ffn_hidden_size == mb.moe_ffn_hidden_size);
  CHECK(ma.moe_shared_expert_intermediate_size == mb.moe_shared_expert_intermediate_size);
  CHECK(ma.dense_layers == mb.dense_layers);
  CHECK(ma.expert_act == mb.expert_act);
  CHECK(ma.expert_gated == mb.expert_gated);
  CHECK(ma.router_scale_init == mb.router_scale_init);
  CHECK(ma.expert_compute == mb.expert_compute);

  CHECK(a.training.micro_batch_size == b.training.micro_batch_size);
  CHECK(a.training.global_batch_size == b.training.global_batch_size);
  CHECK(a.training.train_iters == b.training.train_iters);
  CHECK(a.training.seed == b.training.seed);
  CHECK(a.training.log_interval == b.training.log_interval);
  CHECK(a.training.eval_interval == b.training.eval_interval);
  CHECK(a.training.eval_iters == b.training.eval_iters);
  CHECK(a.training.threads == b.training.threads);

  CHECK(a.optimizer.lr == b.optimizer.lr);
  CHECK(a.optimizer.min_lr == b.optimizer.min_lr);
  CHECK(a.optimizer.weight_decay == b.optimizer.weight_decay);
  CHECK(a.optimizer.adam_beta1 == b.optimizer.adam_beta1);
  CHECK(a.optimizer.adam_beta2 == b.optimizer.adam_beta2);
  CHECK(a.optimizer.adam_eps == b.optimizer.adam_eps);
  CHECK(a.optimizer.clip_grad == b.optimizer.clip_grad);

  CHECK(a.schedule.lr_decay_style == b.schedule.lr_decay_style);
  CHECK(a.schedule.lr_warmup_iters == b.schedule.lr_warmup_iters);
  CHECK(a.schedule.lr_decay_iters == b.schedule.lr_decay_iters);
  CHECK(a.schedule.lr_wsd_decay_style == b.schedule.lr_wsd_decay_style);
  CHECK(a.schedule.lr_wsd_decay_iters == b.schedule.lr_wsd_decay_iters);

  CHECK(a.sparsity.target_ratio == b.sparsity.target_ratio);
  CHECK(a.sparsity.reg_type == b.sparsity.reg_type);
  CHECK(a.sparsity.reg_coef_min == b.sparsity.reg_coef_min);
  CHECK(a.sparsity.reg_coef_init == b.sparsity.reg_coef_init);
  CHECK(a.sparsity.reg_coef_multiplier == b.sparsity.reg_coef_multiplier);

  CHECK(a.data.data_path == b.data.data_path);
  CHECK(a.data.split == b.data.split);
  CHECK(a.data.data_cache_path == b.data.data_cache_path);
  CHECK(a.data.tokenizer_type == b.data.tokenizer_type);
  CHECK(a.data.tokenizer_model == b.data.tokenizer_model);
  CHECK(a.data.synthetic_successors == b.data.synthetic_successors);
  CHECK(a.data.synthetic_repeat_prob == b.data.synthetic_repeat_prob);

  CHECK(a.parallel.expert_model_parallel_size == b.parallel.expert_model_parallel_size);
  CHECK(a.parallel.use_distributed_optimizer == b.parallel.use_distributed_optimizer);

  CHECK(a.checkpoint.save == b.checkpoint.save);
  CHECK(a.checkpoint.save_interval == b.checkpoint.save_interval);
  CHECK(a.checkpoint.keep_last == b.checkpoint.keep_last);
  CHECK(a.checkpoint.load == b.checkpoint.load);

  CHECK(a.logging.run_dir == b.logging.run_dir);
  CHECK(a.logging.log_per_layer == b.logging.log_per_layer);
}

std::vector<std::string> shipped_configs() {
  std::vector<std::string> paths;
  for (const auto& entry : fs::directory_iterator(fs::path(deco::test::source_dir()) / "configs"))
    if (entry.path().extension() == ".yaml") paths.push_back(entry.path().string());
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::string config_path(const std::string& name) {
  return (fs::path(deco::test::source_dir()) / "configs" / name).string();
}

}  // namespace

// ---------------------------------------------------------------- shipped configs

TEST_CASE("every shipped config loads", "[config]") {
  const std::vector<std::string> paths = shipped_configs();
  REQUIRE(paths.size() >= 8);
  for (const std::string& path : paths) {
    INFO(path);
    const Config c = load_config(path);
    CHECK(c.source == path);
    CHECK(c.model.num_layers > 0);
  }
}

TEST_CASE("the paper configs carry the values of deco-model.md section 5", "[config]") {
  struct Row {
    const char* size;
    int64_t layers, hidden, heads, ffn, experts, global_batch, iters;
    double lr, multiplier;
  };
  const Row rows[] = {
      {"0.1b", 16, 768, 6, 1920, 42, 64, 15000, 1.1175e-3, 1.002},
      {"0.2b", 20, 1024, 8, 2560, 57, 128, 15000, 9.3e-4, 1.002},
      {"0.5b", 27, 1280, 10, 3360, 77, 256, 20000, 7.8e-4, 1.001},
      {"1.2b", 32, 1792, 14, 4480, 102, 512, 23000, 6.54e-4, 1.001},
  };
  for (const Row& row : rows) {
    for (const bool dense : {false, true}) {
      const std::string name = std::string(dense ? "dense-" : "deco-") + row.size + ".yaml";
      INFO(name);
      const Config c = load_config(config_path(name));
      const deco::ModelConfig& m = c.model;
      CHECK(m.num_layers == row.layers);
      CHECK(m.hidden_size == row.hidden);
      CHECK(m.num_attention_heads == row.heads);
      CHECK(m.num_query_groups == row.heads);
      CHECK(m.head_dim() == 128);
      CHECK(m.ffn_hidden_size == row.ffn);
      CHECK(m.num_experts == (dense ? 0 : row.experts));
      CHECK(m.num_deco_layers() == (dense ? 0 : row.layers - 1));
      CHECK(m.vocab_size == 73448);
      CHECK(m.seq_length == 4096);
      CHECK(m.moe_ffn_hidden_size == 64);
      CHECK(m.moe_shared_expert_intermediate_size == 128);
      CHECK(m.dense_layers == 1);
      CHECK(m.init_method_std == 0.01);
      CHECK(m.norm_epsilon == 1e-5);
      CHECK(m.rotary_base == 10000.0);
      CHECK(m.expert_act == deco::ops::ExpertAct::NormSilu);
      CHECK_FALSE(m.expert_gated);
      CHECK(m.router_scale_init == 0.1);

      CHECK(c.training.micro_batch_size == 8);
      CHECK(c.training.global_batch_size == row.global_batch);
      CHECK(c.training.train_iters == row.iters);

      CHECK(c.optimizer.lr == row.lr);
      CHECK(c.optimizer.min_lr == 0.0);
      CHECK(c.optimizer.adam_beta1 == 0.9);
      CHECK(c.optimizer.adam_beta2 == 0.95);
      CHECK(c.optimizer.adam_eps == 1e-8);
      CHECK(c.optimizer.weight_decay == 0.1);
      CHECK(c.optimizer.clip_grad == 1.0);

      CHECK(c.schedule.lr_decay_style == deco::LrDecayStyle::WSD);
      CHECK(c.schedule.lr_warmup_iters == 100);
      CHECK(c.lr_decay_end() == row.iters);
      CHECK(c.schedule.lr_wsd_decay_style == deco::WsdDecayStyle::Exponential);
      CHECK(c.schedule.lr_wsd_decay_iters == 1000);

      CHECK(c.sparsity.target_ratio == 0.2);
      CHECK(c.sparsity.reg_type == deco::RegType::Entropy);
      CHECK(c.sparsity.reg_coef_min == 1e-8);
      CHECK(c.sparsity.initial_coef() == 1e-8);
      CHECK(c.sparsity.reg_coef_multiplier == row.multiplier);

      CHECK(c.checkpoint.save.empty());
      CHECK(c.checkpoint.load.empty());
    }
  }
}

// ---------------------------------------------------------------- config_to_yaml

TEST_CASE("config_to_yaml round-trips every shipped config", "[config]") {
  TempDir dir;
  for (const std::string& path : shipped_configs()) {
    INFO(path);
    const Config original = load_config(path);
    const std::string yaml = deco::config_to_yaml(original);
    const Config again = load_config(dir.write("again.yaml", yaml));
    require_same(original, again);
    CHECK(deco::config_to_yaml(again) == yaml);
  }
}

TEST_CASE("config_to_yaml writes every key, in a stable order, exactly", "[config]") {
  TempDir dir;
  Doc doc;
  doc.set("model", "expert_act", "norm_silu_nomean")
      .set("model", "expert_compute", "dense")
      .set("model", "expert_gated", "true")
      .set("model", "router_scale_init", "0.30000000000000004")  // 0.1 + 0.2: needs 17 digits
      .set("model", "init_method_std", "1.0e-300")
      .set("training", "seed", "18446744073709551615")
      .set("optimizer", "lr", "0.00111750000000000001")
      .set("schedule", "lr_decay_style", "cosine")
      .set("schedule", "lr_wsd_decay_style", "linear")
      .set("sparsity", "reg_type", "l1")
      .set("logging", "run_dir", "\"null\"")
      .set("logging", "log_per_layer", "true");
  const Config original = load_config(dir.write("odd.yaml", doc.text()));
  CHECK(original.logging.run_dir == "null");
  const std::string yaml = deco::config_to_yaml(original);

  // Every section in schema order, enums by their lowercase names.
  size_t last = 0;
  for (const char* section : {"model:", "training:", "optimizer:", "schedule:", "sparsity:",
                              "data:", "parallel:", "checkpoint:", "logging:"}) {
    const size_t at = yaml.find(std::string("\n") + section);
    INFO(section);
    REQUIRE(at != std::string::npos);
    CHECK(at > last);
    last = at;
  }
  CHECK_THAT(yaml, Contains("expert_act: norm_silu_nomean"));
  CHECK_THAT(yaml, Contains("lr_decay_style: cosine"));
  CHECK_THAT(yaml, Contains("reg_type: l1"));
  CHECK_THAT(yaml, Contains("num_query_groups: 4"));  // a default, resolved and written
  CHECK_THAT(yaml, Contains("synthetic_repeat_prob: 0.3"));
  CHECK(deco::config_to_yaml(original) == yaml);

  const Config again = load_config(dir.write("again.yaml", yaml));
  require_same(original, again);
  CHECK(again.model.router_scale_init == 0.1 + 0.2);
  CHECK(again.training.seed == 18446744073709551615ull);
  CHECK(again.logging.run_dir == "null");
  CHECK(deco::config_to_yaml(again) == yaml);  // the source path stays out of the text
}

TEST_CASE("enum names agree with the model's name functions", "[config]") {
  TempDir dir;
  using deco::ops::ExpertAct;
  for (const ExpertAct act : {ExpertAct::NormSilu, ExpertAct::NormSiluNoMean,
                              ExpertAct::NormSiluNorms, ExpertAct::Silu}) {
    const std::string path =
        dir.write("act.yaml", Doc().set("model", "expert_act", deco::expert_act_name(act)).text());
    CHECK(load_config(path).model.expert_act == act);
  }
  using deco::RegType;
  for (const RegType type : {RegType::None, RegType::Entropy, RegType::L1}) {
    const std::string path =
        dir.write("reg.yaml", Doc().set("sparsity", "reg_type", deco::reg_type_name(type)).text());
    CHECK(load_config(path).sparsity.reg_type == type);
  }
  for (const deco::ExpertCompute mode : {deco::ExpertCompute::Dense, deco::ExpertCompute::Sparse}) {
    const std::string path = dir.write(
        "mode.yaml", Doc().set("model", "expert_compute", deco::expert_compute_name(mode)).text());
    CHECK(load_config(path).model.expert_compute == mode);
  }
  for (const deco::ExitSignal sig : {deco::ExitSignal::Term, deco::ExitSignal::Int, deco::ExitSignal::Usr1,
                                     deco::ExitSignal::Usr2}) {
    // Written as a user would (SIGUSR1); read case-insensitively.
    const std::string path =
        dir.write("sig.yaml", Doc().set("training", "exit_signal", deco::exit_signal_name(sig)).text());
    CHECK(load_config(path).training.exit_signal == sig);
  }
  using deco::AttentionBackend;
  for (const AttentionBackend backend : {AttentionBackend::TensorCores, AttentionBackend::CudaCores}) {
    const std::string path = dir.write(
        "attn.yaml", Doc().set("model", "attention_backend", deco::attention_backend_name(backend)).text());
    CHECK(load_config(path).model.attention_backend == backend);
  }
  using deco::ops::SparseExpertKernels;
  for (const SparseExpertKernels k :
       {SparseExpertKernels::Wide, SparseExpertKernels::Narrow, SparseExpertKernels::Composition}) {
    const std::string path = dir.write(
        "kern.yaml", Doc().set("model", "sparse_expert_kernels", deco::ops::sparse_expert_kernels_name(k)).text());
    CHECK(load_config(path).model.sparse_expert_kernels == k);
  }
}

TEST_CASE("the GPU kernel choices set the process-wide kernel switches", "[config]") {
  using deco::ops::SparseExpertKernels;
  deco::ModelConfig m;
  CHECK(m.attention_backend == deco::AttentionBackend::TensorCores);  // the defaults
  CHECK(m.sparse_expert_kernels == SparseExpertKernels::Wide);
  m.attention_backend = deco::AttentionBackend::CudaCores;
  m.sparse_expert_kernels = SparseExpertKernels::Composition;
  deco::use_gpu_kernels(m);
  CHECK_FALSE(deco::ops::attention_tensor_cores());
  CHECK(deco::ops::sparse_expert_kernels() == SparseExpertKernels::Composition);
  deco::use_gpu_kernels(deco::ModelConfig{});
  CHECK(deco::ops::attention_tensor_cores());
  CHECK(deco::ops::sparse_expert_kernels() == SparseExpertKernels::Wide);
}

// ---------------------------------------------------------------- defaults and parsing

TEST_CASE("defaults fill what the file leaves out", "[config]") {
  TempDir dir;
  const Config c = load_config(dir.write("small.yaml", Doc().text()));
  const Config defaults;
  CHECK(c.model.num_query_groups == 4);  // = num_attention_heads
  CHECK(c.model.dense_layers == 1);
  CHECK(c.model.expert_compute == deco::ExpertCompute::Sparse);
  CHECK(c.training.seed == defaults.training.seed);
  CHECK(c.optimizer.adam_beta2 == defaults.optimizer.adam_beta2);
  CHECK(c.schedule.lr_decay_style == deco::LrDecayStyle::WSD);
  CHECK(c.sparsity.reg_coef_multiplier == defaults.sparsity.reg_coef_multiplier);
  CHECK(c.data.synthetic_successors == defaults.data.synthetic_successors);
  CHECK(c.logging.run_dir.empty());
}

TEST_CASE("enum values match case-insensitively and YAML comments are fine", "[config]") {
  TempDir dir;
  const std::string path = dir.write(
      "case.yaml", Doc().set("schedule", "lr_decay_style", "WSD   # upper case")
                       .set("model", "expert_act", "Norm_SiLU")
                       .set("logging", "log_per_layer", "True")
                       .text());
  const Config c = load_config(path);
  CHECK(c.schedule.lr_decay_style == deco::LrDecayStyle::WSD);
  CHECK(c.model.expert_act == deco::ops::ExpertAct::NormSilu);
  CHECK(c.logging.log_per_layer);
}

TEST_CASE("ffn_hidden_size is optional when every layer is a DECO layer", "[config]") {
  TempDir dir;
  const std::string path =
      dir.write("all_deco.yaml",
                Doc().erase("model", "ffn_hidden_size").set("model", "dense_layers", "0").text());
  const Config c = load_config(path);
  CHECK(c.model.num_deco_layers() == 2);
}

// ---------------------------------------------------------------- overrides

TEST_CASE("overrides replace values with parsed types, in order", "[config]") {
  TempDir dir;
  const std::string path = dir.write("base.yaml", Doc().text());
  const Config c = load_config(path, {"optimizer.lr=3e-4", "model.num_layers=4",
                                      "model.expert_gated=true", "logging.run_dir=/tmp/x y",
                                      "schedule.lr_decay_style=cosine", "training.seed=7",
                                      "training.seed=8", "data.synthetic_successors=12",
                                      "checkpoint.keep_last=3"});
  CHECK(c.optimizer.lr == 3e-4);
  CHECK(c.model.num_layers == 4);
  CHECK(c.model.expert_gated);
  CHECK(c.logging.run_dir == "/tmp/x y");
  CHECK(c.schedule.lr_decay_style == deco::LrDecayStyle::Cosine);
  CHECK(c.training.seed == 8);                    // the later override wins
  CHECK(c.data.synthetic_successors == 12);       // a section the file lacks
  CHECK(c.checkpoint.keep_last == 3);
  CHECK(c.source == path);

  const Config empty_string = load_config(path, {"logging.run_dir="});
  CHECK(empty_string.logging.run_dir.empty());
}

TEST_CASE("bad overrides name the --set text", "[config]") {
  TempDir dir;
  const std::string path = dir.write("base.yaml", Doc().text());
  SECTION("unknown key, with a suggestion") {
    const std::string msg = error_of(path, {"optimizer.lrr=1e-3"});
    CHECK_THAT(msg, Contains("--set optimizer.lrr=1e-3"));
    CHECK_THAT(msg, Contains("unknown key optimizer.lrr"));
    CHECK_THAT(msg, Contains("did you mean optimizer.lr?"));
  }
  SECTION("misplaced key suggests its section") {
    const std::string msg = error_of(path, {"model.seed=3"});
    CHECK_THAT(msg, Contains("--set model.seed=3"));
    CHECK_THAT(msg, Contains("did you mean training.seed?"));
  }
  SECTION("unknown section, with a suggestion") {
    const std::string msg = error_of(path, {"optimiser.lr=1e-3"});
    CHECK_THAT(msg, Contains("--set optimiser.lr=1e-3"));
    CHECK_THAT(msg, Contains("did you mean optimizer?"));
  }
  SECTION("malformed") {
    for (const char* text : {"optimizer.lr", "lr=1e-3", ".lr=1", "optimizer.=1", "=3"}) {
      const std::string msg = error_of(path, {text});
      INFO(msg);
      CHECK_THAT(msg, Contains(std::string("--set ") + text));
      CHECK_THAT(msg, Contains("section.key=value"));
    }
  }
  SECTION("wrong type") {
    CHECK(error_of(path, {"optimizer.lr=abc"}) ==
          "--set optimizer.lr=abc: optimizer.lr must be a number, got 'abc'.");
    CHECK_THAT(error_of(path, {"model.expert_gated=maybe"}),
               Contains("model.expert_gated must be true or false"));
    CHECK_THAT(error_of(path, {"model.num_layers=2.5"}),
               Contains("--set model.num_layers=2.5: model.num_layers must be an integer"));
  }
  SECTION("invalid YAML value") {
    const std::string msg = error_of(path, {"logging.run_dir=[a, b"});
    CHECK_THAT(msg, Contains("--set logging.run_dir=[a, b"));
    CHECK_THAT(msg, Contains("not valid YAML"));
  }
  SECTION("a constraint broken by an override names the file and the override") {
    const std::string msg = error_of(path, {"model.num_attention_heads=5"});
    CHECK_THAT(msg, Contains(path + " with --set model.num_attention_heads=5"));
    CHECK_THAT(msg, Contains("divisible"));
  }
}

// ---------------------------------------------------------------- file-level errors

TEST_CASE("unreadable or malformed files are clear errors", "[config]") {
  TempDir dir;
  SECTION("missing file") {
    const std::string path = dir.path() + "/nope.yaml";
    CHECK_THAT(error_of(path), Contains(path) && Contains("does not exist"));
  }
  SECTION("a directory") {
    CHECK_THAT(error_of(dir.path()), Contains(dir.path()) && Contains("directory"));
  }
  SECTION("invalid YAML names line and column") {
    const std::string path = dir.write("broken.yaml", "model:\n  num_layers: [1, 2\ntraining:\n");
    const std::string msg = error_of(path);
    CHECK_THAT(msg, Contains(path) && Contains("invalid YAML") && Contains("line"));
  }
  SECTION("empty file") {
    const std::string path = dir.write("empty.yaml", "# nothing\n");
    CHECK_THAT(error_of(path), Contains(path) && Contains("empty"));
  }
  SECTION("top level not a map") {
    const std::string path = dir.write("list.yaml", "- model\n- training\n");
    CHECK_THAT(error_of(path), Contains(path) && Contains("map of sections"));
  }
  SECTION("section not a map") {
    const std::string path = dir.write("flat.yaml", Doc().text() + "data: 3\n");
    CHECK_THAT(error_of(path), Contains(path) && Contains("section data must be a map"));
  }
  SECTION("a key written twice") {
    const std::string path =
        dir.write("twice.yaml", Doc().text() + "logging:\n  run_dir: a\n  run_dir: b\n");
    CHECK_THAT(error_of(path), Contains(path) && Contains("logging.run_dir appears twice"));
  }
}

TEST_CASE("unknown names suggest the nearest valid one", "[config]") {
  TempDir dir;
  SECTION("a typo in a key") {
    const std::string path = dir.write("x.yaml", Doc().set("model", "hiden_size", "64").text());
    CHECK(error_of(path) ==
          path + ": unknown key model.hiden_size; did you mean model.hidden_size?");
  }
  SECTION("a key in the wrong section") {
    const std::string path = dir.write("x.yaml", Doc().set("model", "seed", "3").text());
    CHECK_THAT(error_of(path), Contains(path) && Contains("unknown key model.seed") &&
                                   Contains("did you mean training.seed?"));
  }
  SECTION("nothing close: no suggestion, the valid keys listed") {
    const std::string path = dir.write("x.yaml", Doc().set("data", "zzzz", "3").text());
    const std::string msg = error_of(path);
    CHECK_THAT(msg, Contains(path) && Contains("unknown key data.zzzz"));
    CHECK_THAT(msg, !Contains("did you mean"));
    CHECK_THAT(msg, Contains("synthetic_successors"));
  }
  SECTION("a typo in a section") {
    const std::string path =
        dir.write("x.yaml", Doc().set("sparsty", "target_ratio", "0.2").text());
    CHECK_THAT(error_of(path),
               Contains(path) && Contains("unknown section sparsty") && Contains("sparsity?"));
  }
  SECTION("a key at the top level") {
    const std::string path = dir.write("x.yaml", Doc().text() + "seed: 3\n");
    CHECK_THAT(error_of(path), Contains("unknown section seed") && Contains("training.seed"));
  }
  SECTION("an unknown section with nothing close") {
    const std::string path = dir.write("x.yaml", Doc().text() + "qqqqqqqq: {}\n");
    const std::string msg = error_of(path);
    CHECK_THAT(msg, Contains("unknown section qqqqqqqq") && !Contains("did you mean"));
  }
}

// ---------------------------------------------------------------- type errors

TEST_CASE("wrong types name the key, the expected type and the value", "[config]") {
  TempDir dir;
  struct Case {
    const char* section;
    const char* key;
    const char* value;
    const char* expected;
  };
  const Case cases[] = {
      {"model", "num_layers", "abc", "model.num_layers must be an integer, got 'abc'"},
      {"model", "num_layers", "1.5", "model.num_layers must be an integer, got '1.5'"},
      {"model", "num_layers", "true", "model.num_layers must be an integer, got 'true'"},
      {"model", "num_layers", "\"16\"", "remove the quotes"},
      {"model", "num_layers", "[1, 2]", "model.num_layers must be an integer, got a list"},
      {"model", "num_layers", "", "model.num_layers must be an integer, got an empty value"},
      {"model", "num_layers", "99999999999999999999", "out of range"},
      {"training", "seed", "-1", "training.seed must be a non-negative integer"},
      {"optimizer", "lr", "fast", "optimizer.lr must be a number, got 'fast'"},
      {"optimizer", "lr", ".nan", "optimizer.lr must be a number"},
      {"optimizer", "lr", "{a: 1}", "optimizer.lr must be a number, got a map"},
      {"model", "expert_gated", "yes", "model.expert_gated must be true or false, got 'yes'"},
      {"model", "expert_gated", "1", "model.expert_gated must be true or false"},
      {"model", "expert_act", "gelu",
       "model.expert_act must be one of norm_silu, norm_silu_nomean, norm_silu_norms, silu; "
       "got 'gelu'"},
      {"model", "expert_compute", "fast", "must be one of dense, sparse"},
      {"model", "attention_backend", "flash", "model.attention_backend must be one of tensor_cores, cuda_cores"},
      {"training", "exit_signal", "SIGKILL", "training.exit_signal must be one of sigterm, sigint, sigusr1, sigusr2"},
      {"training", "exit_signal_handler", "on", "training.exit_signal_handler must be true or false"},
      {"model", "sparse_expert_kernels", "grouped",
       "model.sparse_expert_kernels must be one of wide, narrow, composition"},
      {"schedule", "lr_decay_style", "step", "must be one of constant, linear, cosine, wsd"},
      {"schedule", "lr_wsd_decay_style", "step", "must be one of exponential, linear, cosine"},
      {"sparsity", "reg_type", "l2", "must be one of entropy, l1, none"},
      {"logging", "run_dir", "[a]", "logging.run_dir must be a string, got a list"},
      {"model", "dense_layers", "[0]", "got a list; it counts the leading layers"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.write("types.yaml", Doc().set(c.section, c.key, c.value).text());
    const std::string msg = error_of(path);
    INFO(c.section << "." << c.key << " = " << c.value << " -> " << msg);
    CHECK_THAT(msg, Contains(path + ": ") && Contains(c.expected));
  }
}

// ---------------------------------------------------------------- missing keys

TEST_CASE("missing required keys say what the key is", "[config]") {
  TempDir dir;
  const std::pair<const char*, const char*> required[] = {
      {"model", "num_layers"},         {"model", "hidden_size"},
      {"model", "num_attention_heads"}, {"model", "vocab_size"},
      {"model", "seq_length"},         {"training", "micro_batch_size"},
      {"training", "global_batch_size"}, {"training", "train_iters"},
      {"optimizer", "lr"},
  };
  for (const auto& [section, key] : required) {
    const std::string path = dir.write("missing.yaml", Doc().erase(section, key).text());
    const std::string msg = error_of(path);
    INFO(msg);
    CHECK_THAT(msg, Contains(path + ": " + section + "." + key + " is missing; it is required"));
  }
  CHECK(error_of(dir.write("m.yaml", Doc().erase("training", "micro_batch_size").text()))
            .find("(the number of sequences per micro-batch).") != std::string::npos);

  SECTION("an empty section is a section without keys") {
    const std::string path =
        dir.write("emptysec.yaml", Doc().erase("optimizer", "lr").text() + "data:\n");
    CHECK_THAT(error_of(path), Contains(path + ": optimizer.lr is missing"));
  }
  SECTION("a whole required section") {
    const std::string path = dir.write("nosec.yaml", Doc().erase_section("optimizer").text());
    CHECK_THAT(error_of(path),
               Contains(path) && Contains("section optimizer is missing") && Contains("lr"));
  }
  SECTION("ffn_hidden_size when a layer is dense") {
    const std::string path =
        dir.write("noffn.yaml", Doc().erase("model", "ffn_hidden_size").text());
    CHECK_THAT(error_of(path), Contains(path) && Contains("model.ffn_hidden_size is missing") &&
                                   Contains("model.dense_layers is 1"));
    const std::string dense = dir.write(
        "noffn_dense.yaml",
        Doc().erase("model", "ffn_hidden_size").set("model", "num_experts", "0").text());
    CHECK_THAT(error_of(dense), Contains("model.ffn_hidden_size is missing") &&
                                    Contains("model.num_experts is 0"));
  }
}

// ---------------------------------------------------------------- impossible values

TEST_CASE("impossible values name the key and the constraint", "[config]") {
  TempDir dir;
  struct Case {
    std::vector<std::pair<std::string, std::string>> changes;  // "section.key" -> value
    const char* key;      // the key the message must name
    const char* keyword;  // a word of the constraint
    int64_t world_size;
  };
  const std::vector<Case> cases = {
      {{{"model.num_layers", "0"}}, "model.num_layers", "positive", 1},
      {{{"model.hidden_size", "-64"}}, "model.hidden_size", "positive", 1},
      {{{"model.vocab_size", "0"}}, "model.vocab_size", "positive", 1},
      {{{"model.seq_length", "0"}}, "model.seq_length", "positive", 1},
      {{{"model.num_attention_heads", "5"}}, "model.num_attention_heads", "divisible", 1},
      {{{"model.num_query_groups", "3"}}, "model.num_query_groups", "divisible", 1},
      {{{"model.num_query_groups", "0"}}, "model.num_query_groups", "positive", 1},
      {{{"model.num_attention_heads", "64"}}, "model.num_attention_heads", "even", 1},
      {{{"model.dense_layers", "3"}}, "model.dense_layers", "between 0 and", 1},
      {{{"model.dense_layers", "-1"}}, "model.dense_layers", "between 0 and", 1},
      {{{"model.num_experts", "-2"}}, "model.num_experts", "negative", 1},
      {{{"training.exit_interval", "-1"}}, "training.exit_interval", "negative", 1},
      {{{"training.exit_duration_in_mins", "-0.5"}}, "training.exit_duration_in_mins", "negative", 1},
      {{{"model.ffn_hidden_size", "0"}}, "model.ffn_hidden_size", "positive", 1},
      {{{"model.moe_ffn_hidden_size", "0"}}, "model.moe_ffn_hidden_size", "positive", 1},
      {{{"model.moe_shared_expert_intermediate_size", "-1"}},
       "model.moe_shared_expert_intermediate_size", "negative", 1},
      {{{"model.norm_epsilon", "0"}}, "model.norm_epsilon", "positive", 1},
      {{{"model.init_method_std", "-0.01"}}, "model.init_method_std", "positive", 1},
      {{{"training.micro_batch_size", "0"}}, "training.micro_batch_size", "positive", 1},
      {{{"training.global_batch_size", "7"}}, "training.global_batch_size", "divisible", 1},
      {{{"training.train_iters", "0"}}, "training.train_iters", "positive", 1},
      {{{"training.log_interval", "0"}}, "training.log_interval", "positive", 1},
      {{{"training.eval_interval", "-1"}}, "training.eval_interval", "negative", 1},
      {{{"training.eval_iters", "-1"}}, "training.eval_iters", "negative", 1},
      {{{"training.threads", "-1"}}, "training.threads", "negative", 1},
      {{{"optimizer.lr", "0"}}, "optimizer.lr", "positive", 1},
      {{{"optimizer.min_lr", "0.01"}}, "optimizer.min_lr", "between 0 and optimizer.lr", 1},
      {{{"optimizer.min_lr", "-1e-5"}}, "optimizer.min_lr", "between 0 and optimizer.lr", 1},
      {{{"optimizer.adam_beta1", "1.0"}}, "optimizer.adam_beta1", "[0, 1)", 1},
      {{{"optimizer.adam_beta2", "-0.5"}}, "optimizer.adam_beta2", "[0, 1)", 1},
      {{{"optimizer.adam_eps", "0"}}, "optimizer.adam_eps", "positive", 1},
      {{{"optimizer.weight_decay", "-0.1"}}, "optimizer.weight_decay", "negative", 1},
      {{{"optimizer.clip_grad", "-1"}}, "optimizer.clip_grad", "negative", 1},
      {{{"schedule.lr_warmup_iters", "-1"}}, "schedule.lr_warmup_iters", "negative", 1},
      {{{"schedule.lr_warmup_iters", "101"}}, "schedule.lr_warmup_iters", "exceed", 1},
      {{{"schedule.lr_decay_iters", "-1"}}, "schedule.lr_decay_iters", "negative", 1},
      {{{"schedule.lr_wsd_decay_iters", "0"}}, "schedule.lr_wsd_decay_iters", "between 1 and", 1},
      {{{"schedule.lr_wsd_decay_iters", "91"}}, "schedule.lr_wsd_decay_iters", "after warmup", 1},
      {{{"schedule.lr_decay_iters", "50"}}, "schedule.lr_wsd_decay_iters", "between 1 and", 1},
      {{{"sparsity.target_ratio", "0"}}, "sparsity.target_ratio", "(0, 1]", 1},
      {{{"sparsity.target_ratio", "1.5"}}, "sparsity.target_ratio", "(0, 1]", 1},
      {{{"sparsity.reg_coef_min", "-1e-8"}}, "sparsity.reg_coef_min", "negative", 1},
      {{{"sparsity.reg_coef_multiplier", "0.99"}}, "sparsity.reg_coef_multiplier", "at least 1", 1},
      {{{"data.synthetic_successors", "0"}}, "data.synthetic_successors", "between 1 and", 1},
      {{{"data.synthetic_successors", "101"}}, "data.synthetic_successors", "model.vocab_size", 1},
      {{{"data.synthetic_repeat_prob", "1"}}, "data.synthetic_repeat_prob", "[0, 1)", 1},
      {{{"parallel.expert_model_parallel_size", "0"}}, "parallel.expert_model_parallel_size",
       "positive", 1},
      {{{"parallel.expert_model_parallel_size", "2"}}, "parallel.expert_model_parallel_size",
       "world size", 1},
      {{{"parallel.expert_model_parallel_size", "3"}, {"training.global_batch_size", "6"}},
       "model.num_experts", "divide", 3},
      {{{"parallel.ddp_bucket_size", "-1"}}, "parallel.ddp_bucket_size", "negative", 1},
      {{{"training.recompute", "partial"}}, "training.recompute", "selective", 1},
      {{{"model.expert_compute", "fast"}}, "model.expert_compute", "auto", 1},
      {{{"checkpoint.save_interval", "100"}}, "checkpoint.save", "names no directory", 1},
      {{{"checkpoint.load", "auto"}}, "checkpoint.load", "checkpoint.save is not set", 1},
      {{{"checkpoint.save_interval", "-1"}}, "checkpoint.save_interval", "negative", 1},
      {{{"checkpoint.keep_last", "-1"}}, "checkpoint.keep_last", "negative", 1},
      // Valid alone; 8 sequences cannot split into micro-batches of 2 over 3 processes.
      {{}, "training.global_batch_size", "data-parallel size", 3},
  };
  for (const Case& c : cases) {
    Doc doc;
    for (const auto& [name, value] : c.changes) {
      const size_t dot = name.find('.');
      doc.set(name.substr(0, dot), name.substr(dot + 1), value);
    }
    const std::string path = dir.write("values.yaml", doc.text());
    const std::string msg = error_of(path, {}, c.world_size);
    INFO(doc.text() << "world size " << c.world_size << " -> " << msg);
    CHECK_THAT(msg, Contains(path + ": ") && Contains(c.key) && Contains(c.keyword));
  }
}

TEST_CASE("a few messages read exactly as documented", "[config]") {
  TempDir dir;
  const std::string path =
      dir.write("x.yaml", Doc().set("model", "hidden_size", "768")
                              .set("model", "num_attention_heads", "5")
                              .text());
  CHECK(error_of(path) == path + ": model.hidden_size (768) must be divisible by "
                                 "model.num_attention_heads (5); change one of them.");
  const std::string batch = dir.write("b.yaml", Doc().text());
  CHECK(error_of(batch, {}, 3) ==
        batch + ": training.global_batch_size (8) must be divisible by training.micro_batch_size "
                "x world size (2 x 3 = 6; the world size is the data-parallel size, the number "
                "of processes); change the batch sizes or the number of processes.");
}

TEST_CASE("world size and expert parallelism that fit are accepted", "[config]") {
  TempDir dir;
  const std::string path = dir.write(
      "ep.yaml", Doc().set("parallel", "expert_model_parallel_size", "2").text());
  const Config c = load_config(path, {}, 2);
  CHECK(c.parallel.expert_model_parallel_size == 2);
  CHECK(load_config(config_path("deco-0.1b.yaml"), {}, 8).training.global_batch_size == 64);
}

TEST_CASE("data section: Megatron data paths, split, cache and tokenizer", "[config]") {
  TempDir dir;
  const std::string base = Doc().text();
  const std::string path = dir.write(
      "data.yaml", base + "data:\n  data_path: [[0.7, /corpora/web_text_document], /corpora/code]\n"
                          "  split: 98,2,0\n  data_cache_path: /tmp/cache\n"
                          "  tokenizer_type: sentencepiece\n  tokenizer_model: /m/tok.model\n");
  const Config c = load_config(path);
  REQUIRE(c.data.data_path.size() == 2);
  CHECK(c.data.data_path[0].weight == 0.7);
  CHECK(c.data.data_path[0].prefix == "/corpora/web_text_document");
  CHECK(c.data.data_path[1].weight == 1.0);  // a bare prefix weighs 1
  CHECK(c.data.data_path[1].prefix == "/corpora/code");
  CHECK(c.data.split == "98,2,0");
  CHECK(c.data.data_cache_path == "/tmp/cache");
  // Round trip through the resolved YAML keeps every entry.
  const Config again = load_config(dir.write("again.yaml", config_to_yaml(c)));
  CHECK(again.data.data_path == c.data.data_path);
  CHECK(again.data.tokenizer_model == "/m/tok.model");
  // Overrides take the same forms; a single prefix is a one-corpus list.
  const Config one = load_config(path, {"data.data_path=/x/corpus"});
  REQUIRE(one.data.data_path.size() == 1);
  CHECK(one.data.data_path[0].prefix == "/x/corpus");
  CHECK(load_config(dir.write("none.yaml", base)).data.data_path.empty());  // synthetic corpus

  auto error = [&](const std::string& data) {
    try {
      load_config(dir.write("bad.yaml", base + "data:\n" + data));
    } catch (const deco::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error("  data_path: [[0, /a]]\n"), Contains("bad.yaml") && Contains("data.data_path") && Contains("positive"));
  CHECK_THAT(error("  data_path: [/a/corpus.bin]\n"), Contains("data.data_path") && Contains("/a/corpus"));
  CHECK_THAT(error("  data_path: [[0.5, /a, 3]]\n"), Contains("data.data_path") && Contains("[weight, prefix]"));
  CHECK_THAT(error("  split: 90,x,1\n"), Contains("data.split") && Contains("969,30,1"));
  CHECK_THAT(error("  split: 0,0,0\n"), Contains("data.split"));
  CHECK_THAT(error("  split: 1,2,3,4\n"), Contains("data.split"));
  CHECK_THAT(error("  tokenizer_type: wordpiece\n"), Contains("data.tokenizer_type") && Contains("sentencepiece"));
  CHECK_THAT(error("  tokenizer_type: sentencepiece\n"), Contains("data.tokenizer_model"));
  CHECK(error("  split: 100\n  tokenizer_type: byte\n") == "no error");
}
