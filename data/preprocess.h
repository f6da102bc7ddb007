// Text to Megatron indexed dataset: reads JSONL or plain-text documents
// (optionally gzipped), tokenizes them on N threads and writes <prefix>.bin
// and <prefix>.idx in input order. `deco preprocess` is a thin shell over
// preprocess(); docs/tokenization.md describes the rules for users.
//
// What is written matches Megatron-LM's tools/preprocess_data.py for the
// same tokenizer and JSONL input (one sequence per document, or one per
// sentence when the key holds a list of strings; EOD after the last
// sequence of a non-empty document; an empty document is recorded with no
// sequence), except that deco writes to <prefix>.bin/.idx where Megatron
// appends "_<key>_document" to the prefix.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace deco {

class Tokenizer;

// How an input file holds documents. Auto decides from the name: .jsonl,
// .json and .ndjson are JSONL, .txt and .text plain text (each optionally
// followed by .gz); any other file is JSONL when its first non-blank line is
// a JSON object, else plain text.
enum class InputFormat { Auto, Jsonl, Text };
// Where a plain-text document ends: at each line, at blank lines, or at the
// end of the file. Lines holding only whitespace are never documents.
enum class TextDocs { Line, Paragraph, File };
enum class OnBadLine { Fail, Skip };

InputFormat parse_input_format(const std::string& name);  // "auto" | "jsonl" | "text"
TextDocs parse_text_docs(const std::string& name);        // "line" | "paragraph" | "file"
OnBadLine parse_on_bad_line(const std::string& name);     // "fail" | "skip"
// The format of `path`, Auto resolved by the rule above (which may read the
// file's first line).
InputFormat resolve_input_format(const std::string& path, InputFormat requested);

// One raw record of an input: a JSONL line (not yet parsed) or a whole
// plain-text document, with the 1-based line it starts on.
struct InputRecord {
  std::string text;
  int64_t line = 0;
};

// Reads the records of one file, gzipped or not (zlib detects which from the
// bytes, not the name). A trailing '\r' is dropped from every line (CRLF
// files), except in TextDocs::File, which keeps the file's bytes exactly.
// Blank JSONL lines are not records; blank_lines() counts them.
class RecordReader {
 public:
  RecordReader(const std::string& path, InputFormat format, TextDocs text_docs);
  ~RecordReader();
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;

  // The next record, false at the end of the file. Throws deco::Error for
  // read errors and corrupt or truncated gzip data.
  bool next(InputRecord* record);
  // Bytes of the file consumed so far (compressed bytes for .gz), for progress.
  int64_t position() const;
  int64_t blank_lines() const { return blank_lines_; }

 private:
  bool read_line(std::string* line);  // without '\n'; false at the end of the file
  bool fill();

  std::string path_;
  InputFormat format_;
  TextDocs text_docs_;
  void* gz_ = nullptr;  // gzFile; void* keeps zlib.h out of this header
  std::vector<char> buffer_;
  size_t begin_ = 0, end_ = 0;
  bool eof_ = false;
  int64_t line_ = 0;  // lines read so far
  int64_t blank_lines_ = 0;
};

// The texts of `key` in one JSONL line: a JSON string gives one text, an
// array of strings several (Megatron's pre-split sentences). Returns an
// empty string on success, else what is wrong with the line (for
// "file:line: <what>"), so that skipping malformed lines costs no exception.
std::string parse_jsonl_texts(const std::string& line, const std::string& key,
                              std::vector<std::string>* texts);

struct PreprocessOptions {
  std::vector<std::string> inputs;
  std::string output_prefix;      // writes <output_prefix>.bin and .idx
  std::string text_key = "text";  // JSONL key holding the document
  InputFormat input_format = InputFormat::Auto;
  TextDocs text_docs = TextDocs::Line;
  bool append_eod = false;
  int workers = 1;  // tokenizing threads; the output does not depend on it
  OnBadLine on_bad_line = OnBadLine::Fail;
  // Progress, skipped-line warnings and the summary; nullptr = silent.
  std::ostream* log = nullptr;
  bool log_is_terminal = false;  // progress as one line rewritten with '\r'
  double log_interval_s = 10.0;  // between progress lines when not a terminal
};

struct PreprocessStats {
  int64_t documents = 0;        // written, including empty ones
  int64_t empty_documents = 0;  // tokenized to nothing: recorded without a sequence
  int64_t sequences = 0;
  int64_t tokens = 0;         // including EODs
  int64_t skipped_lines = 0;  // malformed JSONL lines skipped (OnBadLine::Skip)
  int64_t blank_lines = 0;    // blank JSONL lines (not documents)
  int64_t text_bytes = 0;     // bytes of the records read (uncompressed)
  double seconds = 0.0;
};

// Tokenizes every document of options.inputs, in order, into
// <output_prefix>.bin/.idx with dtype index_dtype_for_vocab(vocab size).
// Nothing is written under the final names unless the whole run succeeds.
// Throws deco::Error for missing inputs, unreadable or corrupt files,
// malformed JSONL lines under OnBadLine::Fail ("file:line: ..."), and for
// inputs holding no document at all.
PreprocessStats preprocess(const Tokenizer& tokenizer, const PreprocessOptions& options);

}  // namespace deco
