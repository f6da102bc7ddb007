// deco preprocess, deco tokenizer train, deco data inspect: text to Megatron
// indexed datasets and a look inside them. The work is in data/; this file
// turns arguments into options and results into lines.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/tokenizer.h"

namespace deco::cli {
namespace {

int resolve_workers(int workers) {
  if (workers > 0) return workers;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

std::string one_key(const std::vector<std::string>& keys) {
  // Megatron's --json-keys writes one dataset per key; deco writes exactly
  // <prefix>.bin/.idx, so it takes one key per run.
  if (keys.size() != 1)
    fail("--text-key/--json-keys takes one key (got ", keys.size(),
         "); run deco preprocess once per key with a different --output-prefix");
  return keys.front();
}

// The tokens of document `doc` (its sequences, concatenated), up to `limit`.
std::vector<int32_t> document_tokens(const IndexedDataset& ds, int64_t doc, int64_t limit) {
  std::vector<int32_t> out;
  const std::vector<int64_t>& docs = ds.document_indices();
  for (int64_t s = docs[doc]; s < docs[doc + 1] && static_cast<int64_t>(out.size()) < limit; ++s) {
    const int64_t take =
        std::min<int64_t>(ds.sequence_length(s), limit - static_cast<int64_t>(out.size()));
    const size_t at = out.size();
    out.resize(at + static_cast<size_t>(take));
    ds.read(s, 0, take, out.data() + at);
  }
  return out;
}

struct TokenRange {
  int64_t min = std::numeric_limits<int64_t>::max(), max = -1;
};

TokenRange scan_tokens(const IndexedDataset& ds) {
  TokenRange range;
  std::vector<int32_t> buf;
  for (int64_t s = 0; s < ds.num_sequences(); ++s) {
    const int64_t length = ds.sequence_length(s);
    // Chunks bound the buffer for sequences that are whole books.
    for (int64_t at = 0; at < length; at += int64_t{1} << 20) {
      const int64_t take = std::min<int64_t>(length - at, int64_t{1} << 20);
      buf.resize(static_cast<size_t>(take));
      ds.read(s, at, take, buf.data());
      const auto [lo, hi] = std::minmax_element(buf.begin(), buf.end());
      range.min = std::min<int64_t>(range.min, *lo);
      range.max = std::max<int64_t>(range.max, *hi);
    }
  }
  return range;
}

// Documents whose last token is `eod`: all of them after --append-eod.
int64_t documents_ending_in(const IndexedDataset& ds, int32_t eod) {
  const std::vector<int64_t>& docs = ds.document_indices();
  int64_t count = 0;
  for (size_t d = 0; d + 1 < docs.size(); ++d) {
    if (docs[d + 1] == docs[d]) continue;  // an empty document
    const int64_t last = docs[d + 1] - 1;
    const int32_t length = ds.sequence_length(last);
    if (length == 0) continue;
    int32_t token = -1;
    ds.read(last, length - 1, 1, &token);
    count += token == eod ? 1 : 0;
  }
  return count;
}

}  // namespace

int preprocess(const PreprocessArgs& args) {
  const std::unique_ptr<Tokenizer> tokenizer =
      make_tokenizer(args.tokenizer_type, args.tokenizer_model);
  PreprocessOptions options;
  options.inputs = args.inputs;
  options.output_prefix = args.output_prefix;
  options.text_key = one_key(args.text_keys);
  options.input_format = parse_input_format(args.input_format);
  options.text_docs = parse_text_docs(args.text_docs);
  options.on_bad_line = parse_on_bad_line(args.on_bad_line);
  options.append_eod = args.append_eod;
  options.workers = resolve_workers(args.workers);
  options.log = &std::cerr;
  options.log_is_terminal = ::isatty(STDERR_FILENO) == 1;
  preprocess(*tokenizer, options);
  return 0;
}

int tokenizer_train(const TokenizerTrainArgs& args) {
  SentencePieceTrainOptions options;
  options.model_type = args.model_type;
  options.character_coverage = args.character_coverage;
  options.max_sentences = args.max_sentences;
  options.threads = args.threads;
  options.text_key = args.text_key;
  options.input_format = args.input_format;
  options.verbose = args.verbose;
  const auto start = std::chrono::steady_clock::now();
  train_sentencepiece(args.inputs, args.vocab_size, args.output, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::unique_ptr<Tokenizer> trained = make_tokenizer("sentencepiece", args.output);
  std::printf("wrote %s: SentencePiece %s model, vocabulary %lld, EOD id %d, trained in %.1f s\n",
              args.output.c_str(), args.model_type.c_str(),
              static_cast<long long>(trained->vocab_size()), trained->eod_id(), seconds);
  return 0;
}

int data_inspect(const InspectArgs& args) {
  std::unique_ptr<Tokenizer> tokenizer;
  if (!args.tokenizer_type.empty()) {
    tokenizer = make_tokenizer(args.tokenizer_type, args.tokenizer_model);
  } else if (!args.tokenizer_model.empty()) {
    fail("--tokenizer-model ", args.tokenizer_model,
         " needs --tokenizer-type (e.g. sentencepiece)");
  }
  const IndexedDataset ds(args.prefix);
  const int64_t documents = ds.num_documents();
  if (args.document < 0 || (args.document >= documents && documents > 0))
    fail("document ", args.document, " does not exist: ", args.prefix, " has ", documents,
         " documents (0 to ", documents - 1, ")");

  const TokenRange range = scan_tokens(ds);
  std::printf("dataset     %s (.bin, .idx)\n", args.prefix.c_str());
  std::printf("dtype       %s\n", index_dtype_name(ds.dtype()));
  std::printf("sequences   %lld\n", static_cast<long long>(ds.num_sequences()));
  std::printf("documents   %lld\n", static_cast<long long>(documents));
  std::printf("tokens      %lld\n", static_cast<long long>(ds.total_tokens()));
  if (range.max < 0) {
    std::printf("token range none (no tokens)\n");
  } else {
    std::printf("token range min %lld, max %lld\n", static_cast<long long>(range.min),
                static_cast<long long>(range.max));
  }
  const bool decodable = tokenizer && range.max < tokenizer->vocab_size();
  if (tokenizer) {
    std::printf("tokenizer   %s\n", tokenizer->describe().c_str());
    if (decodable) {
      std::printf("vocabulary  every id is below %lld\n",
                  static_cast<long long>(tokenizer->vocab_size()));
    } else {
      std::printf(
          "vocabulary  ids up to %lld exceed the tokenizer's %lld: a different tokenizer made "
          "this dataset\n",
          static_cast<long long>(range.max), static_cast<long long>(tokenizer->vocab_size()));
    }
    if (documents > 0) {
      const int64_t ending = documents_ending_in(ds, tokenizer->eod_id());
      std::printf("EOD         %lld of %lld documents end with EOD id %d\n",
                  static_cast<long long>(ending), static_cast<long long>(documents),
                  tokenizer->eod_id());
    }
  }
  if (documents == 0) return 0;

  const std::vector<int64_t>& docs = ds.document_indices();
  int64_t doc_tokens = 0;
  for (int64_t s = docs[args.document]; s < docs[args.document + 1]; ++s)
    doc_tokens += ds.sequence_length(s);
  const std::vector<int32_t> first = document_tokens(ds, args.document, args.tokens);
  std::printf("document %lld: sequences %lld to %lld, %lld tokens; the first %zu:\n",
              static_cast<long long>(args.document), static_cast<long long>(docs[args.document]),
              static_cast<long long>(docs[args.document + 1] - 1),
              static_cast<long long>(doc_tokens), first.size());
  std::string ids;
  for (const int32_t id : first) ids += (ids.empty() ? "" : " ") + std::to_string(id);
  std::printf("%s\n", ids.c_str());
  if (decodable) std::printf("text:\n%s\n", tokenizer->decode(first).c_str());
  return 0;
}

}  // namespace deco::cli
