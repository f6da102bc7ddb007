#include "data/preprocess.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <ostream>
#include <thread>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/tokenizer.h"

namespace deco {
namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_blank(const std::string& s) {
  return s.find_first_not_of(" \t\r\n\f\v") == std::string::npos;
}

gzFile gz(void* handle) { return static_cast<gzFile>(handle); }

// 1234567 -> "1,234,567": counts in the progress line are read at a glance.
std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return n < 0 ? "-" + out : out;
}

std::string megabytes(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

// nlohmann's what() is "[json.exception.parse_error.101] parse error at line
// 1, column 8: syntax error ..."; the line is always 1 (one JSONL line), so
// the column onwards is what helps.
std::string json_problem(const std::exception& e) {
  const std::string what = e.what();
  const size_t column = what.find("column ");
  return "malformed JSON at " + (column == std::string::npos ? what : what.substr(column));
}

std::string key_list(const nlohmann::json& object) {
  std::string keys;
  int shown = 0;
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (shown == 8) return keys + ", ...";
    keys += (shown++ > 0 ? ", " : "") + it.key();
  }
  return shown == 0 ? "none" : keys;
}

}  // namespace

InputFormat parse_input_format(const std::string& name) {
  if (name == "auto") return InputFormat::Auto;
  if (name == "jsonl") return InputFormat::Jsonl;
  if (name == "text") return InputFormat::Text;
  fail("unknown input format \"", name, "\"; use auto, jsonl or text");
}

TextDocs parse_text_docs(const std::string& name) {
  if (name == "line") return TextDocs::Line;
  if (name == "paragraph") return TextDocs::Paragraph;
  if (name == "file") return TextDocs::File;
  fail("unknown plain-text document rule \"", name, "\"; use line, paragraph or file");
}

OnBadLine parse_on_bad_line(const std::string& name) {
  if (name == "fail") return OnBadLine::Fail;
  if (name == "skip") return OnBadLine::Skip;
  fail("unknown bad-line policy \"", name, "\"; use fail or skip");
}

InputFormat resolve_input_format(const std::string& path, InputFormat requested) {
  if (requested != InputFormat::Auto) return requested;
  std::string name = fs::path(path).filename().string();
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ends_with(name, ".gz")) name.resize(name.size() - 3);
  for (const char* ext : {".jsonl", ".json", ".ndjson"})
    if (ends_with(name, ext)) return InputFormat::Jsonl;
  for (const char* ext : {".txt", ".text"})
    if (ends_with(name, ext)) return InputFormat::Text;
  // No telling name: a first line that is a JSON object means JSONL. A text
  // file that merely starts like one then fails loudly on its second line,
  // and a JSONL file is never read as text.
  RecordReader reader(path, InputFormat::Text, TextDocs::Line);
  InputRecord first;
  if (!reader.next(&first)) return InputFormat::Text;
  const size_t brace = first.text.find_first_not_of(" \t");
  const bool object =
      brace != std::string::npos && first.text[brace] == '{' && nlohmann::json::accept(first.text);
  return object ? InputFormat::Jsonl : InputFormat::Text;
}

// ---------------------------------------------------------------- reading

RecordReader::RecordReader(const std::string& path, InputFormat format, TextDocs text_docs)
    : path_(path), format_(format), text_docs_(text_docs), buffer_(size_t{1} << 20) {
  DECO_ASSERT(format != InputFormat::Auto, "resolve the format before reading ", path);
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("input file ", path, " does not exist");
  if (fs::is_directory(path, ec)) fail("input ", path, " is a directory, not a file");
  gz_ = gzopen(path.c_str(), "rb");
  if (gz_ == nullptr) fail("cannot open input file ", path, " (", std::strerror(errno), ")");
  gzbuffer(gz(gz_), 1u << 18);
}

RecordReader::~RecordReader() {
  if (gz_ != nullptr) gzclose(gz(gz_));
}

int64_t RecordReader::position() const { return static_cast<int64_t>(gzoffset(gz(gz_))); }

// Appends more of the file after the unread bytes; false at the end of the file.
bool RecordReader::fill() {
  if (eof_) return false;
  if (begin_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ == buffer_.size()) buffer_.resize(buffer_.size() * 2);  // a line longer than the buffer
  const size_t room = std::min(buffer_.size() - end_, size_t{INT_MAX});
  const int got = gzread(gz(gz_), buffer_.data() + end_, static_cast<unsigned>(room));
  int err = Z_OK;
  const char* message = gzerror(gz(gz_), &err);
  // zlib reports a truncated stream as Z_BUF_ERROR once the data ends.
  if (got < 0 || (got == 0 && err != Z_OK && err != Z_STREAM_END))
    fail(path_, ": the gzip data is corrupt or truncated (zlib: ", message, ")");
  if (got == 0) {
    eof_ = true;
    return false;
  }
  end_ += static_cast<size_t>(got);
  return true;
}

bool RecordReader::read_line(std::string* line) {
  size_t scanned = 0;  // bytes after begin_ known to hold no '\n'
  for (;;) {
    const char* start = buffer_.data() + begin_ + scanned;
    const void* newline = std::memchr(start, '\n', end_ - begin_ - scanned);
    if (newline != nullptr) {
      const size_t at = static_cast<size_t>(static_cast<const char*>(newline) - buffer_.data());
      line->assign(buffer_.data() + begin_, at - begin_);
      begin_ = at + 1;
      break;
    }
    scanned = end_ - begin_;
    if (!fill()) {
      if (begin_ == end_) return false;
      line->assign(buffer_.data() + begin_, end_ - begin_);  // a last line without '\n'
      begin_ = end_;
      break;
    }
  }
  ++line_;
  if (!line->empty() && line->back() == '\r') line->pop_back();
  return true;
}

bool RecordReader::next(InputRecord* record) {
  record->text.clear();
  if (format_ == InputFormat::Jsonl || text_docs_ == TextDocs::Line) {
    while (read_line(&record->text)) {
      if (!is_blank(record->text)) {
        record->line = line_;
        return true;
      }
      ++blank_lines_;
    }
    return false;
  }
  if (text_docs_ == TextDocs::Paragraph) {
    std::string line;
    while (read_line(&line)) {
      if (is_blank(line)) {
        if (!record->text.empty()) return true;
        continue;
      }
      if (record->text.empty()) {
        record->line = line_;
      } else {
        record->text.push_back('\n');
      }
      record->text += line;
    }
    return !record->text.empty();
  }
  // TextDocs::File: the file's bytes exactly, once.
  if (line_ > 0) return false;
  while (fill()) {
  }
  record->text.assign(buffer_.data() + begin_, end_ - begin_);
  begin_ = end_;
  line_ = 1;
  record->line = 1;
  return !is_blank(record->text);
}

std::string parse_jsonl_texts(const std::string& line, const std::string& key,
                              std::vector<std::string>* texts) {
  texts->clear();
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return json_problem(e);
  }
  if (!doc.is_object()) return str("expected a JSON object, found a JSON ", doc.type_name());
  const auto value = doc.find(key);
  if (value == doc.end())
    return str("no key \"", key, "\" in the JSON object (its keys: ", key_list(doc),
               "); choose the key with --text-key");
  if (value->is_string()) {
    texts->push_back(std::move(value->get_ref<std::string&>()));
    return {};
  }
  if (value->is_array()) {
    for (size_t i = 0; i < value->size(); ++i) {
      nlohmann::json& sentence = (*value)[i];
      if (!sentence.is_string())
        return str("key \"", key, "\" holds an array whose element ", i, " is a JSON ",
                   sentence.type_name(), ", not a string");
      texts->push_back(std::move(sentence.get_ref<std::string&>()));
    }
    return {};
  }
  return str("key \"", key, "\" holds a JSON ", value->type_name(),
             ", not a string or an array of strings");
}

// ---------------------------------------------------------------- the pipeline

namespace {

// Batches keep the threads' hand-offs rare; a batch never spans two files.
constexpr size_t kBatchRecords = 1024;
constexpr size_t kBatchBytes = size_t{1} << 20;
constexpr int64_t kListedSkips = 10;  // skipped lines named on the log; the rest are counted

struct RawBatch {
  int64_t index = 0;
  size_t file = 0;
  std::vector<InputRecord> records;
  int64_t input_position = 0;  // input bytes consumed once this batch is read (all files)
  int64_t blank_lines = 0;     // in all files, once this batch is read
  std::exception_ptr error;    // reading failed here; nothing follows
  bool last = false;
};

struct EncodedDoc {
  int64_t line = 0;
  std::vector<int32_t> tokens;
  std::vector<int64_t> lengths;  // one per sequence; none for an empty document
  std::string problem;           // a malformed line: what is wrong with it
};

struct EncodedBatch {
  size_t file = 0;
  std::vector<EncodedDoc> docs;
  int64_t text_bytes = 0;
  int64_t input_position = 0;
  int64_t blank_lines = 0;
  std::exception_ptr error;
  bool last = false;
};

// Megatron's Encoder.encode: each text (a document, or one pre-split
// sentence) is one sequence unless it tokenizes to nothing; EOD extends the
// last sequence of a non-empty document.
void encode_record(const Tokenizer& tokenizer, const PreprocessOptions& options, InputFormat format,
                   int32_t eod, InputRecord& record, EncodedDoc* doc) {
  doc->line = record.line;
  std::vector<std::string> texts;
  if (format == InputFormat::Jsonl) {
    doc->problem = parse_jsonl_texts(record.text, options.text_key, &texts);
    if (!doc->problem.empty()) return;
  } else {
    texts.push_back(std::move(record.text));
  }
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = tokenizer.encode(text);
    if (ids.empty()) continue;
    doc->tokens.insert(doc->tokens.end(), ids.begin(), ids.end());
    doc->lengths.push_back(static_cast<int64_t>(ids.size()));
  }
  if (!doc->tokens.empty() && options.append_eod) {
    doc->tokens.push_back(eod);
    ++doc->lengths.back();
  }
}

// A reader thread cuts the inputs into batches, `workers` threads encode
// them, and next() hands the encoded batches back in input order, whatever
// order the workers finish in. At most max_in_flight batches exist at once,
// which bounds memory however far the reader could run ahead.
class Pipeline {
 public:
  Pipeline(const Tokenizer& tokenizer, const PreprocessOptions& options,
           const std::vector<InputFormat>& formats, int32_t eod)
      : tokenizer_(tokenizer),
        options_(options),
        formats_(formats),
        eod_(eod),
        max_in_flight_(2 * options.workers + 2) {
    threads_.emplace_back([this] { read_all(); });
    for (int i = 0; i < options.workers; ++i) threads_.emplace_back([this] { encode_all(); });
  }

  ~Pipeline() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    space_.notify_all();
    work_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  EncodedBatch next() {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return done_.count(next_out_) > 0; });
    EncodedBatch batch = std::move(done_[next_out_]);
    done_.erase(next_out_++);
    space_.notify_one();
    return batch;
  }

 private:
  // False when the pipeline is stopping.
  bool push(RawBatch&& batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    space_.wait(lock, [&] { return stop_ || read_count_ - next_out_ < max_in_flight_; });
    if (stop_) return false;
    batch.index = read_count_++;
    queued_.push_back(std::move(batch));
    work_.notify_one();
    return true;
  }

  void read_all() {
    int64_t done_bytes = 0, blank_lines = 0;  // of the files finished
    RawBatch batch;
    try {
      for (size_t file = 0; file < options_.inputs.size(); ++file) {
        RecordReader reader(options_.inputs[file], formats_[file], options_.text_docs);
        InputRecord record;
        bool more = true;
        while (more) {
          batch = RawBatch();
          batch.file = file;
          size_t bytes = 0;
          while (batch.records.size() < kBatchRecords && bytes < kBatchBytes &&
                 (more = reader.next(&record))) {
            bytes += record.text.size();
            batch.records.push_back(std::move(record));
          }
          batch.input_position = done_bytes + reader.position();
          batch.blank_lines = blank_lines + reader.blank_lines();
          if (!batch.records.empty() && !push(std::move(batch))) return;
        }
        done_bytes += static_cast<int64_t>(fs::file_size(options_.inputs[file]));
        blank_lines += reader.blank_lines();
      }
      batch = RawBatch();
      batch.input_position = done_bytes;
      batch.blank_lines = blank_lines;
    } catch (...) {
      batch = RawBatch();
      batch.error = std::current_exception();
    }
    batch.last = true;
    push(std::move(batch));
  }

  void encode_all() {
    for (;;) {
      RawBatch raw;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        work_.wait(lock, [&] { return stop_ || !queued_.empty(); });
        if (stop_) return;
        raw = std::move(queued_.front());
        queued_.pop_front();
      }
      EncodedBatch out;
      out.file = raw.file;
      out.input_position = raw.input_position;
      out.blank_lines = raw.blank_lines;
      out.error = raw.error;
      out.last = raw.last;
      try {
        out.docs.resize(raw.records.size());
        for (size_t i = 0; i < raw.records.size(); ++i) {
          out.text_bytes += static_cast<int64_t>(raw.records[i].text.size());
          encode_record(tokenizer_, options_, formats_[raw.file], eod_, raw.records[i],
                        &out.docs[i]);
        }
      } catch (...) {
        out.error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      done_[raw.index] = std::move(out);
      done_cv_.notify_all();
    }
  }

  const Tokenizer& tokenizer_;
  const PreprocessOptions& options_;
  const std::vector<InputFormat>& formats_;
  const int32_t eod_;
  const int64_t max_in_flight_;
  std::mutex mutex_;
  std::condition_variable space_, work_, done_cv_;
  std::deque<RawBatch> queued_;
  std::map<int64_t, EncodedBatch> done_;
  int64_t read_count_ = 0, next_out_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

using Clock = std::chrono::steady_clock;

// The progress line: rewritten in place on a terminal, one line per interval
// otherwise (logs of batch jobs).
class Progress {
 public:
  Progress(const PreprocessOptions& options, int64_t input_bytes)
      : log_(options.log),
        terminal_(options.log_is_terminal),
        interval_s_(terminal_ ? 0.25 : options.log_interval_s),
        input_bytes_(input_bytes),
        start_(Clock::now()),
        last_(start_) {}

  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

  void update(const PreprocessStats& stats, int64_t input_position) {
    if (log_ == nullptr) return;
    const Clock::time_point now = Clock::now();
    if (std::chrono::duration<double>(now - last_).count() < interval_s_) return;
    last_ = now;
    const double seconds = std::max(elapsed(), 1e-9);
    const double percent = input_bytes_ > 0 ? 100.0 * static_cast<double>(input_position) /
                                                  static_cast<double>(input_bytes_)
                                            : 100.0;
    char rates[96];
    std::snprintf(
        rates, sizeof(rates), "%.1f%% of the input, %.2f MB/s, %s tokens/s", percent,
        static_cast<double>(stats.text_bytes) / 1e6 / seconds,
        with_commas(static_cast<int64_t>(static_cast<double>(stats.tokens) / seconds)).c_str());
    *log_ << (terminal_ ? "\r\033[K" : "") << "preprocess: " << with_commas(stats.documents)
          << " documents, " << with_commas(stats.tokens) << " tokens, " << rates
          << (terminal_ ? "" : "\n") << std::flush;
    open_ = terminal_;
  }

  // A whole line (a warning, the summary), after clearing an open progress line.
  void line(const std::string& text) {
    if (log_ == nullptr) return;
    *log_ << (open_ ? "\r\033[K" : "") << text << "\n" << std::flush;
    open_ = false;
  }

 private:
  std::ostream* log_;
  bool terminal_;
  double interval_s_;
  int64_t input_bytes_;
  Clock::time_point start_, last_;
  bool open_ = false;
};

void check_options(const PreprocessOptions& options) {
  if (options.inputs.empty()) fail("no input files given");
  if (options.output_prefix.empty()) fail("no output prefix given");
  if (options.text_key.empty()) fail("the JSON text key is empty");
  if (options.workers < 1 || options.workers > 1024)
    fail("workers must be between 1 and 1024, got ", options.workers);
  const fs::path dir = fs::path(options.output_prefix).parent_path();
  if (!dir.empty() && !fs::is_directory(dir))
    fail("the output directory ", dir.string(), " of prefix ", options.output_prefix,
         " does not exist");
}

}  // namespace

PreprocessStats preprocess(const Tokenizer& tokenizer, const PreprocessOptions& options) {
  check_options(options);
  // Every input is checked before any work, so a typo in the tenth file
  // does not surface after an hour on the first nine.
  std::vector<InputFormat> formats;
  int64_t input_bytes = 0;
  for (const std::string& input : options.inputs) {
    std::error_code ec;
    if (!fs::exists(input, ec)) fail("input file ", input, " does not exist");
    if (fs::is_directory(input, ec)) fail("input ", input, " is a directory, not a file");
    formats.push_back(resolve_input_format(input, options.input_format));
    input_bytes += static_cast<int64_t>(fs::file_size(input));
  }
  const int32_t eod = options.append_eod ? tokenizer.eod_id() : -1;
  const IndexDType dtype = index_dtype_for_vocab(tokenizer.vocab_size());

  IndexedDatasetBuilder builder(options.output_prefix, dtype);
  PreprocessStats stats;
  Progress progress(options, input_bytes);
  progress.line(str("preprocess: ", options.inputs.size(),
                    options.inputs.size() == 1 ? " input file (" : " input files (",
                    megabytes(input_bytes), "), ", tokenizer.describe(), ", ", options.workers,
                    " workers", options.append_eod ? ", EOD appended" : ""));
  {
    Pipeline pipeline(tokenizer, options, formats, eod);
    for (;;) {
      EncodedBatch batch = pipeline.next();
      if (batch.error) std::rethrow_exception(batch.error);
      for (EncodedDoc& doc : batch.docs) {
        if (!doc.problem.empty()) {
          const std::string where = str(options.inputs[batch.file], ":", doc.line, ": ");
          if (options.on_bad_line == OnBadLine::Fail)
            fail(where, doc.problem,
                 "; fix the line, or pass --on-bad-line skip to skip such lines");
          if (++stats.skipped_lines <= kListedSkips)
            progress.line(str("warning: skipped ", where, doc.problem,
                              stats.skipped_lines == kListedSkips
                                  ? " (further skipped lines are counted, not listed)"
                                  : ""));
          continue;
        }
        const int32_t* tokens = doc.tokens.data();
        for (const int64_t length : doc.lengths) {
          if (length > INT32_MAX)
            fail(options.inputs[batch.file], ":", doc.line, ": a document of ", length,
                 " tokens exceeds the int32 sequence lengths of the .idx format; split it");
          builder.add_sequence(tokens, length);
          tokens += length;
        }
        builder.end_document();
        ++stats.documents;
        stats.empty_documents += doc.lengths.empty() ? 1 : 0;
        stats.sequences += static_cast<int64_t>(doc.lengths.size());
        stats.tokens += static_cast<int64_t>(doc.tokens.size());
      }
      stats.text_bytes += batch.text_bytes;
      stats.blank_lines = batch.blank_lines;
      progress.update(stats, batch.input_position);
      if (batch.last) break;
    }
  }
  if (stats.documents == 0)
    fail("the inputs hold no documents",
         stats.skipped_lines > 0 ? " (every line was malformed)" : "", "; nothing was written to ",
         options.output_prefix, ".bin/.idx");
  builder.finalize();
  stats.seconds = progress.elapsed();

  const double seconds = std::max(stats.seconds, 1e-9);
  char rates[96];
  std::snprintf(
      rates, sizeof(rates), "%.2f s (%s tokens/s, %.2f MB/s)", stats.seconds,
      with_commas(static_cast<int64_t>(static_cast<double>(stats.tokens) / seconds)).c_str(),
      static_cast<double>(stats.text_bytes) / 1e6 / seconds);
  progress.line(str(
      "preprocess: wrote ", options.output_prefix, ".bin and .idx: ", with_commas(stats.documents),
      " documents (", with_commas(stats.empty_documents), " empty), ", with_commas(stats.sequences),
      " sequences, ", with_commas(stats.tokens), " tokens as ", index_dtype_name(dtype), ", from ",
      megabytes(stats.text_bytes), " of text in ", rates));
  if (stats.skipped_lines > 0)
    progress.line(str("preprocess: skipped ", with_commas(stats.skipped_lines),
                      " malformed lines (--on-bad-line skip)"));
  if (stats.blank_lines > 0)
    progress.line(str("preprocess: ignored ", with_commas(stats.blank_lines), " blank lines"));
  return stats;
}

}  // namespace deco
