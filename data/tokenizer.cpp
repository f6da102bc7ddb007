#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "data/preprocess.h"

// Exported by libsentencepiece (0.1.97 included) but declared in its public
// headers only from later releases; it seeds the sampling of
// input_sentence_size, which is otherwise drawn from std::random_device.
namespace sentencepiece {
void SetRandomGeneratorSeed(unsigned int seed);
}  // namespace sentencepiece

namespace deco {
namespace fs = std::filesystem;

const char* const kTokenizerTypes = "sentencepiece (alias GPTSentencePieceTokenizer), byte";

namespace {

static_assert(sizeof(int) == sizeof(int32_t), "SentencePiece's int ids are stored as int32");

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kEod = 256;

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    text.reserve(ids.size());
    for (const int32_t id : ids) {
      if (id < 0 || id > kEod)
        fail("token id ", id, " is outside the byte tokenizer's vocabulary [0, ", kEod + 1, ")");
      if (id != kEod) text.push_back(static_cast<char>(id));  // EOD has no text, as </s> has none
    }
    return text;
  }
  int64_t vocab_size() const override { return kEod + 1; }
  int32_t eod_id() const override { return kEod; }
  std::string describe() const override {
    return "byte tokenizer (ids 0-255 are UTF-8 bytes, EOD 256, vocabulary 257)";
  }
};

// SentencePiece's messages start with its source location and the failed
// condition ("./src/x.cc(580) [a <= b] Vocabulary size is ..."); users need
// only the sentence after them, which some failures leave empty.
std::string status_text(const sentencepiece::util::Status& status, const char* if_empty) {
  std::string text = status.message() != nullptr ? status.message() : "";
  const size_t location = text.find(") [");
  if (location != std::string::npos) {
    size_t end = text.find("] ", location);
    if (end == std::string::npos) end = text.rfind(']');
    text = end == std::string::npos || end < location ? "" : text.substr(end + 1);
  }
  const size_t first = text.find_first_not_of(' ');
  return first == std::string::npos ? if_empty : text.substr(first);
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model) : model_(model) {
    if (model.empty())
      fail("the sentencepiece tokenizer needs its model file: pass --tokenizer-model M.model");
    std::error_code ec;
    if (!fs::exists(model, ec)) fail("tokenizer model ", model, " does not exist");
    if (fs::is_directory(model, ec))
      fail("tokenizer model ", model, " is a directory, not a SentencePiece .model file");
    const sentencepiece::util::Status status = processor_.Load(model);
    if (!status.ok())
      fail("tokenizer model ", model, " is not a valid SentencePiece model (",
           status_text(status,
                       "its bytes do not parse as one; a .vocab or tokenizer.json is not a "
                       ".model"),
           ")");
    if (processor_.GetPieceSize() <= 0) fail("tokenizer model ", model, " has no pieces");
  }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const sentencepiece::util::Status status = processor_.Encode(text, &ids);
    if (!status.ok())
      fail("SentencePiece model ", model_, " could not encode a text (",
           status_text(status, "no reason given"), ")");
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    const int64_t vocab = vocab_size();
    for (const int32_t id : ids)
      if (id < 0 || id >= vocab)
        fail("token id ", id, " is outside the vocabulary [0, ", vocab, ") of tokenizer model ",
             model_);
    std::string text;
    const sentencepiece::util::Status status =
        processor_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!status.ok())
      fail("SentencePiece model ", model_, " could not decode ids (",
           status_text(status, "no reason given"), ")");
    return text;
  }

  int64_t vocab_size() const override { return processor_.GetPieceSize(); }

  // Megatron's GPTSentencePieceTokenizer: eod is the model's eos_id().
  int32_t eod_id() const override {
    const int eos = processor_.eos_id();
    if (eos < 0)
      fail("tokenizer model ", model_, " has no end-of-sentence piece (it was trained with ",
           "eos_id=-1), so there is no EOD id to append; drop --append-eod or use a model with "
           "</s>");
    return eos;
  }

  std::string describe() const override {
    const int eos = processor_.eos_id();
    std::string eod = eos < 0 ? "none" : str(eos, " (", processor_.IdToPiece(eos), ")");
    return str("sentencepiece model ", model_, " (vocabulary ", vocab_size(), ", EOD ", eod, ")");
  }

 private:
  std::string model_;
  sentencepiece::SentencePieceProcessor processor_;
};

// Feeds SentencePiece's trainer one line of a document at a time, read with
// preprocessing's rules, so a tokenizer can be trained on the same JSONL or
// gzipped files that are then preprocessed. A read error ends the iteration
// and is rethrown after training returns.
class DocumentLines final : public sentencepiece::SentenceIterator {
 public:
  DocumentLines(const std::vector<std::string>& inputs, const std::vector<InputFormat>& formats,
                const std::string& text_key)
      : inputs_(inputs), formats_(formats), text_key_(text_key) {
    advance();
  }

  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override {
    if (!error_) return sentencepiece::util::Status();
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal,
                                       "reading the training inputs failed");
  }
  std::exception_ptr error() const { return error_; }

 private:
  void advance() {
    try {
      done_ = !next_line();
    } catch (...) {
      error_ = std::current_exception();
      done_ = true;
    }
  }

  bool next_line() {
    while (pending_.empty()) {
      if (!next_document()) return false;
    }
    value_ = std::move(pending_.front());
    pending_.pop_front();
    return true;
  }

  // Splits the next document into its non-blank lines; false after the last input.
  bool next_document() {
    InputRecord record;
    while (reader_ == nullptr || !reader_->next(&record)) {
      if (file_ == inputs_.size()) return false;
      reader_ = std::make_unique<RecordReader>(inputs_[file_], formats_[file_], TextDocs::Line);
      ++file_;
    }
    std::vector<std::string> texts;
    if (formats_[file_ - 1] == InputFormat::Jsonl) {
      const std::string problem = parse_jsonl_texts(record.text, text_key_, &texts);
      if (!problem.empty()) fail(inputs_[file_ - 1], ":", record.line, ": ", problem);
    } else {
      texts.push_back(std::move(record.text));
    }
    for (const std::string& text : texts) {
      size_t begin = 0;
      while (begin <= text.size()) {
        size_t end = text.find('\n', begin);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(begin, end - begin);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t\r\f\v") != std::string::npos) pending_.push_back(line);
        begin = end + 1;
      }
    }
    return true;
  }

  const std::vector<std::string>& inputs_;
  const std::vector<InputFormat>& formats_;
  const std::string& text_key_;
  size_t file_ = 0;
  std::unique_ptr<RecordReader> reader_;
  std::deque<std::string> pending_;
  std::string value_;
  bool done_ = false;
  std::exception_ptr error_;
};

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = str(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write ", tmp, " (", std::strerror(errno), ")");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      fail("writing ", tmp, " failed (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail("cannot rename ", tmp, " to ", path, " (", ec.message(), ")");
  }
}

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& type, const std::string& model) {
  if (type == "byte") {
    if (!model.empty())
      fail("the byte tokenizer takes no model file, but tokenizer model ", model, " was given");
    return std::make_unique<ByteTokenizer>();
  }
  if (type == "sentencepiece" || type == "GPTSentencePieceTokenizer")
    return std::make_unique<SentencePieceTokenizer>(model);
  if (type == "SentencePieceTokenizer")
    fail(
        "tokenizer type SentencePieceTokenizer is Megatron's BERT/T5 wrapper: it appends <CLS>, "
        "<SEP>, <EOD> and <MASK> ids after the model's pieces and ends documents with <EOD>, so "
        "its ids are not the model's and deco does not reproduce them; use "
        "GPTSentencePieceTokenizer (or sentencepiece), whose EOD is the model's </s>");
  fail("unknown tokenizer type \"", type, "\"; deco supports ", kTokenizerTypes);
}

void train_sentencepiece(const std::vector<std::string>& inputs, int64_t vocab_size,
                         const std::string& output_model,
                         const SentencePieceTrainOptions& options) {
  if (inputs.empty()) fail("no training inputs given");
  if (vocab_size < 1) fail("vocabulary size must be positive, got ", vocab_size);
  if (options.model_type != "bpe" && options.model_type != "unigram")
    fail("unknown SentencePiece model type \"", options.model_type, "\"; use bpe or unigram");
  if (!(options.character_coverage > 0.0 && options.character_coverage <= 1.0))
    fail("character coverage must be in (0, 1], got ", options.character_coverage);
  if (options.max_sentences < 0)
    fail("the sentence sample must be >= 0, got ", options.max_sentences);
  // Every input is checked before the (possibly long) training starts.
  const InputFormat requested = parse_input_format(options.input_format);
  std::vector<InputFormat> formats;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (!fs::exists(input, ec)) fail("input file ", input, " does not exist");
    if (fs::is_directory(input, ec)) fail("input ", input, " is a directory, not a file");
    formats.push_back(resolve_input_format(input, requested));
  }
  const fs::path out_dir = fs::path(output_model).parent_path();
  if (!out_dir.empty() && !fs::is_directory(out_dir))
    fail("the directory of output model ", output_model, " does not exist");

  const unsigned threads = options.threads > 0 ? static_cast<unsigned>(options.threads)
                                               : std::max(1u, std::thread::hardware_concurrency());
  // Lossless by construction: identity normalization and no whitespace
  // folding keep every byte, byte fallback spells what the vocabulary lacks,
  // digits split one by one as in LLaMA-style tokenizers.
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(vocab_size)},
      {"character_coverage", str(options.character_coverage)},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", "16384"},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(threads)},
      {"minloglevel", options.verbose ? "0" : "1"},
  };
  sentencepiece::SetRandomGeneratorSeed(options.seed);
  DocumentLines lines(inputs, formats, options.text_key);
  std::string model;
  const sentencepiece::util::Status status =
      sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  if (lines.error()) std::rethrow_exception(lines.error());
  if (!status.ok()) fail("SentencePiece training failed: ", status_text(status, "no reason given"));
  write_file_atomically(output_model, model);
}

}  // namespace deco
