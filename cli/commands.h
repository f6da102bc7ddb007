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
  std::string load_weights;       // --load W.h5: start from these weights, fresh optimizer
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

// deco preprocess: Megatron's flag names (--input, --output-prefix,
// --tokenizer-type, --tokenizer-model, --json-keys, --append-eod, --workers).
struct PreprocessArgs {
  std::vector<std::string> inputs;
  std::string output_prefix, tokenizer_type, tokenizer_model;
  std::vector<std::string> text_keys{"text"};  // --text-key, alias --json-keys
  std::string input_format = "auto";           // auto | jsonl | text
  std::string text_docs = "line";              // line | paragraph | file
  std::string on_bad_line = "fail";            // fail | skip
  bool append_eod = false;
  int workers = 0;                             // 0: every core
};
int preprocess(const PreprocessArgs& args);

struct TokenizerTrainArgs {
  std::vector<std::string> inputs;
  long long vocab_size = 0;
  std::string output;
  std::string model_type = "bpe";
  double character_coverage = 0.9995;
  long long max_sentences = 0;                 // 0: all
  int threads = 0;                             // 0: every core
  std::string text_key = "text", input_format = "auto";
  bool verbose = false;
};
int tokenizer_train(const TokenizerTrainArgs& args);

struct InspectArgs {
  std::string prefix;
  long long document = 0;
  long long tokens = 32;
  std::string tokenizer_type, tokenizer_model;
};
int data_inspect(const InspectArgs& args);

// deco export: weights (a checkpoint step or save directory, or a weights
// .h5) to <out>/model.safetensors and <out>/config.json (docs/export.md).
struct ExportArgs {
  std::string checkpoint, out;
  std::string dtype = "bf16";     // bf16 | fp32
  ConfigArgs cfg;                 // optional here: default, the config stored with the weights
};
int export_weights(const ExportArgs& args);

// deco import: <dir>/model.safetensors, checked against --config, to a weights .h5.
struct ImportArgs {
  std::string safetensors, out;
  ConfigArgs cfg;
};
int import_weights(const ImportArgs& args);

// deco bench: timed training steps and MFU against the device's measured peak.
struct BenchArgs {
  ConfigArgs cfg;
  int64_t steps = 20;
  int64_t warmup = 3;
  int64_t profile = 0;  // > 0: that many more steps, timed region by region (core/profile.h)
};
int bench(const BenchArgs& args);

// deco bench-layer: one DECO layer forward + backward per path and forced activation ratio.
struct BenchLayerArgs {
  ConfigArgs cfg;
  std::vector<double> ratios{0.05, 0.2, 0.5, 1.0};
  std::vector<std::string> paths{"dense", "sparse"};
  int64_t tokens = 0;  // 0: micro_batch_size x seq_length
  int64_t iters = 5;
  int64_t warmup = 2;
};
int bench_layer(const BenchLayerArgs& args);

// deco bench-attention: causal attention forward + backward alone at the config's shapes.
struct BenchAttentionArgs {
  ConfigArgs cfg;
  int64_t batch = 0;  // 0: micro_batch_size
  int64_t seq = 0;    // 0: seq_length
  int64_t iters = 10;
  int64_t warmup = 3;
};
int bench_attention(const BenchAttentionArgs& args);

// deco report: <run_dir> (and --compare runs) to one self-contained HTML file.
struct ReportArgs {
  std::string run_dir;
  std::vector<std::string> compare;
  std::string out;                // default: <run_dir>/report.html
};
int report(const ReportArgs& args);

}  // namespace deco::cli
