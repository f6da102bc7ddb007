// Tokenizers for preprocessing text into Megatron indexed datasets, and
// SentencePiece training. See docs/tokenization.md.
//
// The ids a tokenizer produces are what the model trains on, so the rules
// follow Megatron-LM's tokenizers exactly where deco claims compatibility:
// "sentencepiece" is Megatron's GPTSentencePieceTokenizer (ids straight from
// SentencePiece, vocabulary = the model's piece count, end of document = the
// model's </s> id).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace deco {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Thread-safe: preprocessing encodes from several threads at once.
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // Throws deco::Error for an id outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // Appended after each document with --append-eod. Throws deco::Error when
  // the tokenizer has none (a SentencePiece model trained with eos_id=-1).
  virtual int32_t eod_id() const = 0;
  // One line for logs: the type, the model file, the vocabulary and EOD.
  virtual std::string describe() const = 0;
};

// The tokenizer types make_tokenizer accepts, for help texts.
extern const char* const kTokenizerTypes;

// type "sentencepiece" (alias "GPTSentencePieceTokenizer", Megatron's name):
// `model` is a SentencePiece .model file. type "byte": ids 0-255 are the
// bytes of the UTF-8 text, 256 is EOD, vocabulary 257; `model` must be
// empty. Megatron's "SentencePieceTokenizer" is refused with an explanation:
// it appends <CLS>/<SEP>/<EOD>/<MASK> ids after the model's pieces and ends
// documents with <EOD>, not </s>, so aliasing it would write different ids.
// Errors (unknown type, missing or corrupt model) are deco::Error sentences
// naming the type or the file.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& type, const std::string& model);

struct SentencePieceTrainOptions {
  // "bpe" (default) or "unigram". BPE with byte fallback is the
  // LLaMA-style SentencePiece model that MiniCPM-family tokenizers (whose
  // vocabulary size the DECO configs use) are built as; see docs/tokenization.md.
  std::string model_type = "bpe";
  // Share of characters covered by single-character pieces; rarer characters
  // are spelled with byte pieces (byte fallback), so nothing becomes <unk>.
  double character_coverage = 0.9995;
  // Sentences (lines) sampled for training, 0 = all. SentencePiece holds
  // every training sentence in memory, so large corpora need a sample.
  int64_t max_sentences = 0;
  int threads = 0;       // 0 = every core
  uint32_t seed = 1234;  // for the sample, so retraining gives the same model
  // How documents are read from the inputs (same rules as preprocessing):
  // JSONL's text_key, or plain text. Each line of a document is one
  // SentencePiece sentence.
  std::string text_key = "text";
  std::string input_format = "auto";  // auto | jsonl | text
  bool verbose = false;               // SentencePiece's own training log on stderr
};

// Trains a SentencePiece model on the documents of `inputs` (JSONL or text,
// optionally gzipped) and writes it to `output_model` atomically (temporary
// file + rename). Lossless by construction: identity normalization, no
// whitespace folding, byte fallback, so decode(encode(text)) == text.
// Throws deco::Error for unreadable inputs, malformed JSON lines (file:line)
// and SentencePiece's refusals (e.g. a vocabulary too small or too large for
// the corpus).
void train_sentencepiece(const std::vector<std::string>& inputs, int64_t vocab_size,
                         const std::string& output_model,
                         const SentencePieceTrainOptions& options = {});

}  // namespace deco
