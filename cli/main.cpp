// deco: train and inspect DECO models. See README.md for the quickstart.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "parallel/mpi_runtime.h"

namespace {

void add_config_options(CLI::App* app, deco::cli::ConfigArgs& cfg) {
  app->add_option("--config", cfg.config, "YAML config file (see configs/)")->required();
  app->add_option("--set", cfg.sets, "override a config key: --set optimizer.lr=3e-4 (repeatable)");
}

// One line on stderr and the exit code. In a multi-process run the other
// ranks would wait for this one in their next collective: the whole job
// ends, naming this rank.
int report_error(const char* message, int code) {
  if (deco::mpi_active()) deco::abort_job(message, code);
  std::cerr << "error: " << message << std::endl;
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // Line by line even into a file or pipe: a run killed by a timeout or a
  // failing rank still leaves every line it printed (std::cout shares stdout's buffer).
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{"deco: pre-training for DECO sparse Mixture-of-Experts transformers"};
  app.set_version_flag("--version", std::string("deco ") + DECO_VERSION);
  app.require_subcommand(1);

  deco::cli::TrainArgs train;
  CLI::App* train_cmd = app.add_subcommand("train", "train a model");
  add_config_options(train_cmd, train.cfg);
  train_cmd->add_option("--run-dir", train.run_dir, "directory for config.yaml and metrics.jsonl");
  train_cmd->add_option("--load", train.load_weights,
                        "start from these weights (W.h5 or a checkpoint directory) with a fresh optimizer, "
                        "for fine-tuning; to resume a run use checkpoint.load");

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

  deco::cli::InspectArgs inspect;
  CLI::App* inspect_cmd = data_cmd->add_subcommand(
      "inspect", "counts, dtype and token range of a Megatron dataset, and the first tokens of a document");
  inspect_cmd->add_option("prefix", inspect.prefix, "dataset prefix P (reads P.bin and P.idx)")->required();
  inspect_cmd->add_option("--document", inspect.document, "document to show (default 0)");
  inspect_cmd->add_option("--tokens", inspect.tokens, "how many of its tokens (default 32)")
      ->check(CLI::NonNegativeNumber);
  inspect_cmd->add_option("--tokenizer-type", inspect.tokenizer_type,
                          "decode with this tokenizer: sentencepiece or byte");
  inspect_cmd->add_option("--tokenizer-model", inspect.tokenizer_model, "SentencePiece .model file");

  deco::cli::PreprocessArgs prep;
  CLI::App* prep_cmd = app.add_subcommand(
      "preprocess", "tokenize JSONL or text files into a Megatron dataset (P.bin, P.idx)");
  prep_cmd->add_option("--input", prep.inputs, "input files: .jsonl/.json or .txt, optionally .gz")
      ->required();
  prep_cmd->add_option("--output-prefix", prep.output_prefix, "writes <prefix>.bin and <prefix>.idx")
      ->required();
  prep_cmd->add_option("--tokenizer-type", prep.tokenizer_type,
                       "sentencepiece (alias GPTSentencePieceTokenizer) or byte")->required();
  prep_cmd->add_option("--tokenizer-model", prep.tokenizer_model, "SentencePiece .model file");
  prep_cmd->add_option("--text-key,--json-keys", prep.text_keys, "JSONL key holding the text (default text)");
  prep_cmd->add_flag("--append-eod", prep.append_eod, "end every document with the tokenizer's EOD id");
  prep_cmd->add_option("--workers", prep.workers, "tokenizing threads (default: every core); "
                       "the output does not depend on it")->check(CLI::NonNegativeNumber);
  prep_cmd->add_option("--on-bad-line", prep.on_bad_line, "malformed JSONL line: fail (default) or skip")
      ->check(CLI::IsMember({"fail", "skip"}));
  prep_cmd->add_option("--text-docs", prep.text_docs,
                       "plain-text documents: line (default), paragraph (blank-line separated) or file")
      ->check(CLI::IsMember({"line", "paragraph", "file"}));
  prep_cmd->add_option("--input-format", prep.input_format, "auto (from the file name), jsonl or text")
      ->check(CLI::IsMember({"auto", "jsonl", "text"}));

  CLI::App* tok_cmd = app.add_subcommand("tokenizer", "tokenizer tools");
  tok_cmd->require_subcommand(1);
  deco::cli::TokenizerTrainArgs tok_train;
  CLI::App* tok_train_cmd = tok_cmd->add_subcommand(
      "train", "train a SentencePiece model (lossless: byte fallback, no normalization)");
  tok_train_cmd->add_option("--input", tok_train.inputs, "training text: .txt or .jsonl, optionally .gz")
      ->required();
  tok_train_cmd->add_option("--vocab-size", tok_train.vocab_size, "vocabulary size")->required()
      ->check(CLI::PositiveNumber);
  tok_train_cmd->add_option("--output", tok_train.output, "output .model file")->required();
  tok_train_cmd->add_option("--model-type", tok_train.model_type, "bpe (default) or unigram")
      ->check(CLI::IsMember({"bpe", "unigram"}));
  tok_train_cmd->add_option("--character-coverage", tok_train.character_coverage,
                            "share of characters kept as pieces; the rest are spelled in bytes (default 0.9995)");
  tok_train_cmd->add_option("--max-sentences", tok_train.max_sentences,
                            "train on a random sample of this many lines (default 0: all)")
      ->check(CLI::NonNegativeNumber);
  tok_train_cmd->add_option("--threads", tok_train.threads, "training threads (default: every core)")
      ->check(CLI::NonNegativeNumber);
  tok_train_cmd->add_option("--text-key", tok_train.text_key, "JSONL key holding the text (default text)");
  tok_train_cmd->add_option("--input-format", tok_train.input_format, "auto, jsonl or text")
      ->check(CLI::IsMember({"auto", "jsonl", "text"}));
  tok_train_cmd->add_flag("--verbose", tok_train.verbose, "show SentencePiece's training log");

  deco::cli::ExportArgs export_args;
  CLI::App* export_cmd = app.add_subcommand(
      "export", "write weights as Hugging Face safetensors (DIR/model.safetensors, DIR/config.json)");
  export_cmd->add_option("--checkpoint", export_args.checkpoint,
                         "checkpoint step directory, save directory (its latest) or weights .h5")
      ->required();
  export_cmd->add_option("--out", export_args.out, "output directory (created if missing)")->required();
  export_cmd->add_option("--dtype", export_args.dtype, "bf16 (default, rounded to nearest even) or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  export_cmd->add_option("--config", export_args.cfg.config,
                         "model config (default: the one stored with the weights)");
  export_cmd->add_option("--set", export_args.cfg.sets, "override a key of --config (repeatable)");

  deco::cli::ImportArgs import_args;
  CLI::App* import_cmd = app.add_subcommand(
      "import", "read Hugging Face safetensors into a weights .h5 for deco train --load / deco eval");
  import_cmd->add_option("--safetensors", import_args.safetensors,
                         "directory holding model.safetensors (and config.json), or the file")
      ->required();
  add_config_options(import_cmd, import_args.cfg);
  import_cmd->add_option("--out", import_args.out, "output weights .h5")->required();

  deco::cli::BenchArgs bench_args;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench", "time training steps of a config on its training.device: tokens/s, step time, TFLOP/s, MFU, memory");
  add_config_options(bench_cmd, bench_args.cfg);
  bench_cmd->add_option("--steps", bench_args.steps, "steps to time (default 20)")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--profile", bench_args.profile,
                        "after the timed steps, run this many more and print where their time went, region by "
                        "region (attention, FFNs, routed and shared experts, LM head, optimizer...)")
      ->check(CLI::NonNegativeNumber);
  bench_cmd->add_option("--warmup", bench_args.warmup, "untimed steps first (default 3)")
      ->check(CLI::NonNegativeNumber);

  deco::cli::BenchLayerArgs layer_args;
  CLI::App* layer_cmd = app.add_subcommand(
      "bench-layer", "time one DECO layer forward + backward on the dense and sparse expert paths at forced "
                     "activation ratios, against the device's floors");
  add_config_options(layer_cmd, layer_args.cfg);
  layer_cmd->add_option("--ratio", layer_args.ratios, "activation ratios to force (default 0.05 0.2 0.5 1.0)")
      ->delimiter(',');
  layer_cmd->add_option("--path", layer_args.paths, "expert paths to time: dense, sparse (default both)")
      ->delimiter(',');
  layer_cmd->add_option("--tokens", layer_args.tokens, "tokens per pass (default micro_batch_size x seq_length)")
      ->check(CLI::PositiveNumber);
  layer_cmd->add_option("--iters", layer_args.iters, "timed passes (default 5)")->check(CLI::PositiveNumber);
  layer_cmd->add_option("--warmup", layer_args.warmup, "untimed passes first (default 2)")
      ->check(CLI::NonNegativeNumber);

  deco::cli::BenchAttentionArgs attn_args;
  CLI::App* attn_cmd = app.add_subcommand(
      "bench-attention", "time causal attention forward and backward alone at a config's shapes and precision");
  add_config_options(attn_cmd, attn_args.cfg);
  attn_cmd->add_option("--batch", attn_args.batch, "sequences (default micro_batch_size)")->check(CLI::PositiveNumber);
  attn_cmd->add_option("--seq", attn_args.seq, "sequence length (default seq_length)")->check(CLI::PositiveNumber);
  attn_cmd->add_option("--iters", attn_args.iters, "timed passes (default 10)")->check(CLI::PositiveNumber);
  attn_cmd->add_option("--warmup", attn_args.warmup, "untimed passes first (default 3)")
      ->check(CLI::NonNegativeNumber);

  deco::cli::ReportArgs report_args;
  CLI::App* report_cmd = app.add_subcommand(
      "report", "one self-contained HTML file of a run's loss, sparsity and throughput (docs/monitoring.md)");
  report_cmd->add_option("run_dir", report_args.run_dir, "run directory (holds config.yaml and metrics.jsonl)")
      ->required();
  report_cmd->add_option("--compare", report_args.compare,
                         "other run directories to overlay and tabulate (the dense twin, other scales)");
  report_cmd->add_option("--out", report_args.out, "output .html file (default: RUN_DIR/report.html)");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*train_cmd) return deco::cli::train(train);
    if (*info_cmd) return deco::cli::info(info);
    if (*init_cmd) return deco::cli::init(init);
    if (*eval_cmd) return deco::cli::eval(eval);
    if (*samples_cmd) return deco::cli::data_samples(samples);
    if (*inspect_cmd) return deco::cli::data_inspect(inspect);
    if (*prep_cmd) return deco::cli::preprocess(prep);
    if (*tok_train_cmd) return deco::cli::tokenizer_train(tok_train);
    if (*export_cmd) return deco::cli::export_weights(export_args);
    if (*import_cmd) return deco::cli::import_weights(import_args);
    if (*report_cmd) return deco::cli::report(report_args);
    if (*bench_cmd) return deco::cli::bench(bench_args);
    if (*layer_cmd) return deco::cli::bench_layer(layer_args);
    if (*attn_cmd) return deco::cli::bench_attention(attn_args);
  } catch (const deco::Error& e) {
    return report_error(e.what(), 1);
  } catch (const std::exception& e) {  // internal errors carry their own "internal error at" text
    return report_error(e.what(), 2);
  }
  return 0;
}
