// The training loop: the quickstart end to end, gradient accumulation,
// Megatron's sample order, determinism, and what metrics.jsonl holds.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "data/synthetic_corpus.h"
#include "test_util.h"
#include "trainer/trainer.h"
#include "trainer/weights_io.h"

using namespace deco;

namespace {

std::string fresh_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("deco-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir.string();
}

Config tiny(const std::vector<std::string>& overrides = {}) {
  return load_config(deco::test::source_dir() + "/configs/tiny.yaml", overrides);
}

// tiny.yaml for a run of a few steps: the schedule must fit inside the run.
Config short_tiny(int64_t steps, std::vector<std::string> overrides = {}) {
  overrides.insert(overrides.begin(), {"training.train_iters=" + std::to_string(steps),
                                       "schedule.lr_warmup_iters=1", "schedule.lr_wsd_decay_iters=1"});
  return tiny(overrides);
}

std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

double mean_of(const std::vector<nlohmann::json>& rows, size_t begin, size_t end, const char* key) {
  double s = 0.0;
  for (size_t i = begin; i < end; ++i) s += rows[i][key].get<double>();
  return s / static_cast<double>(end - begin);
}

}  // namespace

TEST_CASE("quickstart: configs/tiny.yaml learns and moves the activation ratio to its target", "[trainer][e2e]") {
  const Config config = tiny();
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
  const std::string dir = fresh_dir("e2e");
  Trainer trainer(config, groups, TrainerOptions{dir, nullptr, ""});
  trainer.train();
  const auto rows = read_metrics(dir);
  REQUIRE(rows.size() == static_cast<size_t>(config.training.train_iters));
  const double ln_vocab = std::log(static_cast<double>(config.model.vocab_size));
  // Untrained, the model is near uniform over the vocabulary.
  CHECK(rows[0]["lm_loss"].get<double>() == Approx(ln_vocab).margin(0.1));
  // Trained, it is far below: the synthetic corpus's Markov part has an
  // entropy of about 1.2 nats, and 2.5 is still 40% of ln(512).
  const double final_loss = mean_of(rows, rows.size() - 20, rows.size(), "lm_loss");
  CHECK(final_loss < 2.5);
  CHECK(rows.back()["val_loss"].get<double>() < 2.5);
  // The ratio starts near 0.5 (random router signs) and the regularizer
  // with its adaptive coefficient brings it to the 0.2 target.
  const double target = config.sparsity.target_ratio;
  const double start_ratio = mean_of(rows, 0, 5, "activation_ratio");
  const double end_ratio = mean_of(rows, rows.size() - 100, rows.size(), "activation_ratio");
  CHECK(start_ratio > 0.4);
  CHECK(std::abs(end_ratio - target) < 0.5 * std::abs(start_ratio - target));
  CHECK(std::abs(end_ratio - target) < 0.08);
  std::filesystem::remove_all(dir);
}

TEST_CASE("metrics.jsonl carries every required field, one line per step", "[trainer]") {
  const Config config = short_tiny(3, {"training.eval_interval=2", "training.eval_iters=1"});
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
  const std::string dir = fresh_dir("metrics");
  std::ostringstream console;
  Trainer trainer(config, groups, TrainerOptions{dir, &console, ""});
  trainer.train();
  const auto rows = read_metrics(dir);
  REQUIRE(rows.size() == 3);
  for (const char* key : {"step", "lm_loss", "reg_loss", "lr", "grad_norm", "activation_ratio",
                          "activation_ratio_per_layer", "reg_coef", "tokens_per_second"})
    CHECK(rows[1].contains(key));
  CHECK(rows[1]["step"] == 2);
  CHECK(rows[1]["activation_ratio_per_layer"].size() == 3);  // layers 1-3 are DECO
  CHECK(rows[1].contains("val_loss"));                       // eval_interval 2
  CHECK(!rows[0].contains("val_loss"));
  CHECK(rows[2]["consumed_samples"] == 3 * config.training.global_batch_size);
  // The controller multiplies lambda when the step's ratio is above target.
  const double r0 = rows[0]["activation_ratio"], c0 = rows[0]["reg_coef"], c1 = rows[1]["reg_coef"];
  CHECK(c1 == Approx(r0 > 0.2 ? c0 * 1.05 : std::max(c0 / 1.05, 1e-8)));
  // The resolved config is saved and loads back to the same values.
  const Config saved = load_config(dir + "/config.yaml");
  auto without_comments = [](const std::string& yaml) {  // the header names the source file
    std::istringstream in(yaml);
    std::string out;
    for (std::string line; std::getline(in, line);)
      if (line.rfind("#", 0) != 0) out += line + "\n";
    return out;
  };
  CHECK(without_comments(config_to_yaml(saved)) == without_comments(config_to_yaml(config)));
  CHECK(console.str().find("act ratio") != std::string::npos);
  // An existing run is never overwritten.
  CHECK_THROWS_WITH(Trainer(config, groups, TrainerOptions{dir, nullptr, ""}), Catch::Contains("already exists"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("gradient accumulation: 4 micro-batches of 4 equal 1 micro-batch of 16", "[trainer]") {
  std::vector<StepMetrics> results;
  for (const char* micro : {"training.micro_batch_size=4", "training.micro_batch_size=16"}) {
    const Config config = short_tiny(2, {micro, "training.global_batch_size=16"});
    ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
    const std::string dir = fresh_dir("accum");
    Trainer trainer(config, groups, TrainerOptions{dir, nullptr, ""});
    trainer.train_step();
    results.push_back(trainer.train_step());  // the second step sees the first update
    std::filesystem::remove_all(dir);
  }
  // Same samples, same objective; only float32 summation order differs.
  CHECK(results[0].lm_loss == Approx(results[1].lm_loss).epsilon(1e-5));
  CHECK(results[0].reg_loss == Approx(results[1].reg_loss).epsilon(1e-4));
  CHECK(results[0].grad_norm == Approx(results[1].grad_norm).epsilon(1e-4));
  CHECK(*results[0].activation_ratio == Approx(*results[1].activation_ratio).epsilon(1e-3));
}

TEST_CASE("training is bit-for-bit reproducible", "[trainer]") {
  std::vector<std::vector<double>> runs;
  for (int run = 0; run < 2; ++run) {
    const Config config = short_tiny(4);
    ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
    const std::string dir = fresh_dir("repro" + std::to_string(run));
    Trainer trainer(config, groups, TrainerOptions{dir, nullptr, ""});
    std::vector<double> values;
    for (int s = 0; s < 4; ++s) {
      const StepMetrics m = trainer.train_step();
      values.insert(values.end(), {m.lm_loss, m.reg_loss, m.grad_norm, *m.activation_ratio, m.reg_coef});
    }
    runs.push_back(values);
    std::filesystem::remove_all(dir);
  }
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("Megatron sample order: rank r takes its slice of each micro x dp chunk", "[data]") {
  // global batch 16, micro 2, dp 4: 2 micro-batches per step; chunk = 8 samples.
  const BatchPlan rank2(2, 16, 4, 2);
  CHECK(rank2.micro_batches_per_step() == 2);
  CHECK(rank2.first_sample(0, 0) == 4);    // chunk 0 = samples 0..7, rank 2 takes 4, 5
  CHECK(rank2.first_sample(0, 1) == 12);   // chunk 1 = samples 8..15, rank 2 takes 12, 13
  CHECK(rank2.first_sample(32, 0) == 36);  // resumed after 32 consumed samples
  const BatchPlan single(4, 16, 1, 0);
  CHECK(single.first_sample(16, 3) == 28);
}

TEST_CASE("synthetic corpus: deterministic, in range, learnable structure", "[data]") {
  const SyntheticCorpus a(512, 64, 4, 0.3, 1234, Split::Train), b(512, 64, 4, 0.3, 1234, Split::Train),
      valid(512, 64, 4, 0.3, 1234, Split::Valid);
  std::vector<int32_t> x(65), y(65), v(65);
  a.read(17, x.data());
  b.read(17, y.data());
  valid.read(17, v.data());
  CHECK(x == y);  // same seed, same sample
  CHECK(x != v);  // splits differ
  for (int32_t t : x) CHECK((t >= 0 && t < 512));
  CHECK(a.markov_entropy() == Approx(1.2425).margin(1e-4));  // Zipf 1/k over 4 successors
  CHECK(a.markov_entropy() < 0.25 * std::log(512.0));
}

namespace {

// Runs `config` to its end in `run_dir` and returns its metrics rows.
std::vector<nlohmann::json> run_to_end(const Config& config, const std::string& run_dir,
                                       const std::string& load_weights = "", std::ostream* console = nullptr) {
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
  Trainer trainer(config, groups, TrainerOptions{run_dir, console, load_weights});
  trainer.train();
  return read_metrics(run_dir);
}

}  // namespace

TEST_CASE("2N steps equal N steps + resume + N steps, bit for bit", "[trainer][checkpoint]") {
  // model.expert_compute auto: the crossover measured by the first run is
  // kept in the checkpoint, so the resumed run makes the same path choices.
  // bf16: the checkpoint holds the float32 master weights, and the resumed
  // run rounds its bf16 copy from them as the uninterrupted run did.
  const std::string variant =
      GENERATE(as<std::string>{}, "model.expert_compute=sparse", "model.expert_compute=auto", "training.bf16=true");
  INFO(variant);
  const bool auto_compute = variant == "model.expert_compute=auto";
  deco::test::TempDir dir;
  const std::vector<std::string> common = {"checkpoint.save_interval=5", "training.eval_interval=3",
                                           "training.eval_iters=1", variant};
  std::vector<std::string> a = common;
  a.push_back("checkpoint.save=" + (dir / "ckpt"));
  const auto uninterrupted = run_to_end(short_tiny(10, a), dir / "a");
  REQUIRE(uninterrupted.size() == 10);
  REQUIRE(std::filesystem::exists(dir / "ckpt/step_0000005/model.h5"));
  const LoadedCheckpoint saved = load_checkpoint(dir / "ckpt/step_0000005", {});
  if (auto_compute) {
    CHECK(saved.state.expert_crossover >= 0.0);
    CHECK(saved.state.expert_crossover <= 1.0);
  } else {
    CHECK(saved.state.expert_crossover < 0.0);
  }

  // A second run resumes from step 5 (not from `latest`, which is step 10).
  std::vector<std::string> b = common;
  b.push_back("checkpoint.save=" + (dir / "ckpt_b"));
  b.push_back("checkpoint.load=" + (dir / "ckpt/step_0000005"));
  const auto resumed = run_to_end(short_tiny(10, b), dir / "b");
  REQUIRE(resumed.size() == 5);
  for (size_t i = 0; i < 5; ++i) {
    const nlohmann::json& x = uninterrupted[i + 5];
    const nlohmann::json& y = resumed[i];
    INFO("step " << x["step"]);
    CHECK(y["step"] == x["step"]);
    CHECK(y["consumed_samples"] == x["consumed_samples"]);
    // Exact equality: the same float32 computation on the same data.
    for (const char* key : {"lm_loss", "reg_loss", "grad_norm", "reg_coef", "lr", "activation_ratio"})
      CHECK(y[key].get<double>() == x[key].get<double>());
    CHECK(y["activation_ratio_per_layer"] == x["activation_ratio_per_layer"]);
    CHECK(y.contains("val_loss") == x.contains("val_loss"));
    if (x.contains("val_loss")) CHECK(y["val_loss"].get<double>() == x["val_loss"].get<double>());
  }
}

TEST_CASE("training.bf16: the mixed-precision run tracks the float32 run", "[trainer][bf16]") {
  // Same data, same initial weights; bf16 rounding (2^-9 relative per
  // stored value) moves the losses a little from the first step on. Measured
  // over 12 steps: within 0.1% relative; the bound is 1%.
  deco::test::TempDir dir;
  const std::vector<std::string> small = {"training.micro_batch_size=4", "training.global_batch_size=8"};
  std::vector<std::string> with_bf16 = small;
  with_bf16.push_back("training.bf16=true");
  const auto f32 = run_to_end(short_tiny(12, small), dir / "f32");
  const auto bf16 = run_to_end(short_tiny(12, with_bf16), dir / "bf16");
  REQUIRE(f32.size() == 12);
  REQUIRE(bf16.size() == 12);
  for (size_t i = 0; i < f32.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(bf16[i]["lm_loss"].get<double>() == Approx(f32[i]["lm_loss"].get<double>()).epsilon(1e-2));
    // Discrete pairs: those whose z lies within bf16 rounding of 0 flip.
    // Measured at most 0.009 apart over these 12 steps; the margin is 0.02.
    CHECK(bf16[i]["activation_ratio"].get<double>() ==
          Approx(f32[i]["activation_ratio"].get<double>()).margin(0.02));
  }
  CHECK(bf16.back()["lm_loss"].get<double>() < bf16.front()["lm_loss"].get<double>() - 0.5);  // it learns
}

TEST_CASE("resuming into the same run directory keeps one row per step", "[trainer][checkpoint]") {
  deco::test::TempDir dir;
  const std::vector<std::string> save = {"checkpoint.save=" + (dir / "ckpt"), "checkpoint.save_interval=3"};
  const auto first = run_to_end(short_tiny(6, save), dir / "run");
  // Resume the same run from step 3: rows 4-6 are recomputed (and equal), the
  // old ones set aside rather than lost.
  std::vector<std::string> resume = save;
  resume.push_back("checkpoint.load=" + (dir / "ckpt/step_0000003"));
  const auto again = run_to_end(short_tiny(6, resume), dir / "run");
  REQUIRE(again.size() == 6);
  for (size_t i = 0; i < 6; ++i) CHECK(again[i]["lm_loss"].get<double>() == first[i]["lm_loss"].get<double>());
  CHECK(std::filesystem::exists(dir / "run/metrics.jsonl.after-step-3"));
}

TEST_CASE("checkpoint.load: auto resumes from latest, a changed architecture is refused", "[trainer][checkpoint]") {
  deco::test::TempDir dir;
  const std::string save = "checkpoint.save=" + (dir / "ckpt");
  run_to_end(short_tiny(4, {save}), dir / "a");
  // auto with a longer run: continues at step 4 up to 6; a changed learning rate is only a warning.
  std::ostringstream console;
  const auto more = run_to_end(short_tiny(6, {save, "checkpoint.load=auto", "optimizer.lr=0.002"}), dir / "b", "",
                               &console);
  REQUIRE(more.size() == 2);
  CHECK(more[0]["step"] == 5);
  CHECK_THAT(console.str(), Catch::Contains("resumed from") && Catch::Contains("warning: resuming with optimizer.lr"));
  // A different architecture cannot load the checkpoint.
  const Config wider = short_tiny(6, {save, "checkpoint.load=auto", "model.num_attention_heads=8"});
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, wider.model.num_experts);
  CHECK_THROWS_WITH(Trainer(wider, groups, TrainerOptions{dir / "c", nullptr, ""}),
                    Catch::Contains("model.num_attention_heads") && Catch::Contains("checkpoint"));
}

TEST_CASE("Loading weights only (--load) starts from them with a fresh optimizer at step 0", "[trainer][checkpoint]") {
  deco::test::TempDir dir;
  const std::string save = "checkpoint.save=" + (dir / "ckpt");
  run_to_end(short_tiny(3, {save}), dir / "a");
  const Config config = short_tiny(2, {});
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
  Trainer trainer(config, groups, TrainerOptions{dir / "b", nullptr, dir / "ckpt/step_0000003"});
  // The weights are the checkpoint's, not a fresh initialization.
  Model reference(config.model, DType::F32, Device::CPU);
  load_weights_h5(dir / "ckpt/step_0000003/model.h5", reference.params());
  const Tensor& a = reference.params().flat();
  const Tensor& b = trainer.model().params().flat();
  CHECK(std::equal(a.data<float>(), a.data<float>() + a.numel(), b.data<float>()));
  CHECK(trainer.step() == 0);
  const StepMetrics m = trainer.train_step();
  CHECK(m.step == 1);
  CHECK(m.lr == Approx(config.optimizer.lr));  // warmup of 1 step: step 1 is at the peak, from a fresh schedule
}

TEST_CASE("non-finite steps are skipped, counted, and too many in a row stop the run", "[trainer][monitor]") {
  // A learning rate this large overflows the logits within a few steps; a
  // skipped step leaves the weights as they are, so every later step is
  // non-finite too and the limit is reached.
  const std::string dir = fresh_dir("nonfinite");
  const Config config = short_tiny(40, {"optimizer.lr=1e9", "optimizer.min_lr=0", "training.max_nonfinite_skips=3",
                                        "checkpoint.save=" + dir + "/ckpt", "checkpoint.save_interval=1"});
  ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
  std::ostringstream console;
  Trainer trainer(config, groups, TrainerOptions{dir, &console, ""});
  const std::string msg = test::error_of([&] { trainer.train(); });
  CHECK_THAT(msg, Catch::Matchers::Contains("were not finite for 3 steps in a row"));
  const auto rows = read_metrics(dir);
  REQUIRE(rows.size() >= 2);
  // The rows before the stop: the skipped ones flagged and counted.
  int64_t flagged = 0;
  for (const auto& r : rows) {
    const auto alerts = r["alerts"].get<std::vector<std::string>>();
    const bool skipped = std::find(alerts.begin(), alerts.end(), "nonfinite_step_skipped") != alerts.end();
    flagged += skipped;
    if (skipped) CHECK(r["skipped_steps"].get<int64_t>() == flagged);
  }
  CHECK(flagged == 2);  // the third skip stops the run before its row is written
  CHECK_THAT(console.str(), Catch::Matchers::Contains("the step was skipped (2 in a row"));
  // The last checkpoint (after the second skip) counts AdamW's updates apart
  // from the steps, so a resumed run's bias correction continues exactly.
  const LoadedCheckpoint saved = load_checkpoint(resolve_checkpoint("auto", dir + "/ckpt"), {});
  CHECK(saved.state.step == static_cast<int64_t>(rows.size()));
  CHECK(saved.state.optimizer_steps == saved.state.step - 2);
}

TEST_CASE("monitor: expert load imbalance, dead experts, idle tokens and the ratio alert", "[monitor]") {
  LoggingConfig logging;
  logging.alert_ratio_margin = 0.05;
  logging.alert_steps = 3;
  logging.dead_expert_steps = 2;
  logging.alert_idle_token_share = 0.1;
  Monitor monitor(logging, 0.2, 1, 4);
  auto step = [&](int64_t n, std::vector<int64_t> load, int64_t idle, double ratio) {
    StepMetrics m;
    m.step = n;
    m.expert_tokens_per_layer = {load};
    m.deco_layer_index = {3};
    m.idle_tokens_per_layer = {idle};
    m.tokens_per_layer = 100;
    m.activation_ratio = ratio;
    const std::vector<std::string> lines = monitor.observe(m);
    return std::make_pair(m, lines);
  };
  // Load 10, 20, 30, 40: mean 25, max violation (40 - 25) / 25 = 0.6.
  auto [m1, l1] = step(1, {10, 20, 30, 40}, 5, 0.21);
  CHECK(m1.expert_max_violation[0] == Approx(0.6));
  CHECK(m1.idle_token_share[0] == Approx(0.05));
  CHECK(m1.dead_experts[0] == 0);
  CHECK(m1.alerts.empty());
  CHECK(l1.empty());
  // Expert 0 gets nothing from step 2 on: dead once 2 steps passed since step 1.
  auto [m2, l2] = step(2, {0, 20, 30, 40}, 20, 0.5);
  CHECK(m2.dead_experts[0] == 0);
  auto [m3, l3] = step(3, {0, 20, 30, 40}, 20, 0.5);
  CHECK(m3.dead_experts[0] == 1);
  REQUIRE(l3.size() == 1);
  CHECK_THAT(l3[0], Catch::Matchers::Contains("layer 3 has 1 dead expert"));
  // Idle share 0.2 > 0.1 and ratio 0.5 off by more than 0.05, since step 2:
  // both alerts fire at the third step in a row.
  auto [m4, l4] = step(4, {0, 20, 30, 40}, 20, 0.5);
  CHECK(std::find(m4.alerts.begin(), m4.alerts.end(), "activation_ratio_off_target") != m4.alerts.end());
  CHECK(std::find(m4.alerts.begin(), m4.alerts.end(), "idle_tokens_layer_3") != m4.alerts.end());
  CHECK(std::find(m4.alerts.begin(), m4.alerts.end(), "dead_experts_layer_3") != m4.alerts.end());
  CHECK(l4.size() == 2);  // the two new alerts; the dead expert was already reported
  // Back to normal: the conditions clear.
  auto [m5, l5] = step(5, {10, 20, 30, 40}, 1, 0.2);
  CHECK(m5.alerts.empty());
  CHECK(m5.dead_experts[0] == 0);
}

TEST_CASE("console: the log line's ETA and the terminal's progress bar", "[trainer][monitor]") {
  StepMetrics m;
  m.step = 120;
  m.train_iters = 300;
  m.lm_loss = 2.5;
  m.tokens_per_second = 29812;
  m.elapsed_s = 3725;  // 01:02:05
  m.eta_s = 75;        // 00:01:15
  const std::string line = format_console_line(m, false);
  CHECK_THAT(line, Catch::Matchers::Contains("elapsed 01:02:05 | ETA 00:01:15"));
  CHECK(format_progress_bar(m, 10) == "[====>     ]    120/300  40% | ETA 00:01:15 | 29812 tok/s");
  m.step = 300;
  CHECK_THAT(format_console_line(m, false), !Catch::Matchers::Contains("ETA"));
  CHECK(format_progress_bar(m, 4).rfind("[====]", 0) == 0);
}

TEST_CASE("training.device cuda with training.bf16: 50 steps of tiny track the CPU float32 run",
          "[trainer][gpu][bf16]") {
  if (cuda_device_count() == 0) {
    WARN("skipped: no CUDA device");
    return;
  }
  // Mixed precision on the GPU against float32 on the CPU: bf16 rounding
  // (2^-9 per stored value) on top of the float32 drift of the test below.
  // On the CPU (tests/unit: training.bf16 tracks float32) 12 steps agree
  // within 0.1%; here the bound is 3% over 50 steps.
  const std::vector<std::string> schedule = {"training.train_iters=50", "schedule.lr_warmup_iters=10",
                                             "schedule.lr_wsd_decay_iters=10", "training.eval_interval=0"};
  std::vector<std::vector<nlohmann::json>> runs;
  for (bool gpu : {false, true}) {
    std::vector<std::string> overrides = schedule;
    if (gpu) overrides.insert(overrides.end(), {"training.device=cuda", "training.bf16=true"});
    const Config config = tiny(overrides);
    ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
    const std::string dir = fresh_dir(std::string("bf16-track-") + (gpu ? "gpu" : "cpu"));
    Trainer trainer(config, groups, TrainerOptions{dir, nullptr, ""});
    trainer.train();
    runs.push_back(read_metrics(dir));
    std::filesystem::remove_all(dir);
  }
  REQUIRE(runs[0].size() == 50);
  REQUIRE(runs[1].size() == 50);
  double worst = 0.0;
  for (size_t i = 0; i < 50; ++i) {
    const double c = runs[0][i]["lm_loss"].get<double>(), g = runs[1][i]["lm_loss"].get<double>();
    worst = std::max(worst, std::abs(g - c) / c);
  }
  INFO("worst relative loss difference " << worst);
  CHECK(worst < 0.03);
  CHECK(runs[1].back()["lm_loss"].get<double>() < runs[1].front()["lm_loss"].get<double>() - 1.0);
}

TEST_CASE("training.device cuda: 50 steps of tiny track the CPU run's loss curve", "[trainer][gpu]") {
  if (cuda_device_count() == 0) {  // runs in the GPU suite (scripts/gpu_suite.sh)
    WARN("skipped: no CUDA device");
    return;
  }
  // float32 on both; the GPU sums in other orders, so routing decisions on
  // near-zero router outputs can flip and the runs drift apart slowly: the
  // first step agrees to float32 rounding, the curve within 2%.
  const std::vector<std::string> schedule = {"training.train_iters=50", "schedule.lr_warmup_iters=10",
                                             "schedule.lr_wsd_decay_iters=10", "training.eval_interval=0"};
  std::vector<std::vector<nlohmann::json>> runs;
  for (const char* device : {"cpu", "cuda"}) {
    std::vector<std::string> overrides = schedule;
    overrides.push_back(std::string("training.device=") + device);
    const Config config = tiny(overrides);
    ProcessGroups groups = make_process_groups(LaunchInfo{}, 1, config.model.num_experts);
    const std::string dir = fresh_dir(std::string("gpu-track-") + device);
    Trainer trainer(config, groups, TrainerOptions{dir, nullptr, ""});
    trainer.train();
    runs.push_back(read_metrics(dir));
    std::filesystem::remove_all(dir);
  }
  const auto& cpu = runs[0];
  const auto& gpu = runs[1];
  REQUIRE(cpu.size() == 50);
  REQUIRE(gpu.size() == 50);
  CHECK(gpu[0]["lm_loss"].get<double>() == Approx(cpu[0]["lm_loss"].get<double>()).epsilon(1e-5));
  CHECK(gpu[0]["grad_norm"].get<double>() == Approx(cpu[0]["grad_norm"].get<double>()).epsilon(1e-4));
  double worst = 0.0, worst_ratio = 0.0;
  for (size_t i = 0; i < 50; ++i) {
    const double c = cpu[i]["lm_loss"].get<double>(), g = gpu[i]["lm_loss"].get<double>();
    worst = std::max(worst, std::abs(g - c) / c);
    worst_ratio = std::max(worst_ratio, std::abs(gpu[i]["activation_ratio"].get<double>() -
                                                 cpu[i]["activation_ratio"].get<double>()));
  }
  INFO("worst relative loss difference " << worst << ", worst activation-ratio difference " << worst_ratio);
  CHECK(worst < 0.02);
  CHECK(worst_ratio < 0.02);
  CHECK(gpu.back()["lm_loss"].get<double>() < gpu.front()["lm_loss"].get<double>() - 1.0);  // it learns
}
