// Tokenizers, SentencePiece training and preprocessing into Megatron
// indexed datasets: ids read back equal encode(document) (+ EOD), the files
// do not depend on the worker count, and every input mistake is a sentence
// naming the file (and line).
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using deco::test::error_of;
using deco::test::TempDir;

namespace {

// Always present on Debian (base-files): a 35 KB English text.
const char* kGpl3 = "/usr/share/common-licenses/GPL-3";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

// GPL-3's paragraphs (blank-line separated), written independently of the
// reader under test.
std::vector<std::string> gpl3_paragraphs() {
  std::istringstream in(read_file(kGpl3));
  std::vector<std::string> paragraphs;
  std::string line, current;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      if (!current.empty()) paragraphs.push_back(current);
      current.clear();
    } else {
      current += (current.empty() ? "" : "\n") + line;
    }
  }
  if (!current.empty()) paragraphs.push_back(current);
  return paragraphs;
}

std::string json_line(const std::string& key, const std::string& text) {
  nlohmann::json j;
  j["id"] = 7;
  j[key] = text;
  return j.dump() + "\n";
}

std::string train_gpl3_model(const TempDir& dir, int64_t vocab = 400,
                             const std::string& type = "bpe") {
  const std::string model = dir / ("gpl3-" + type + ".model");
  deco::SentencePieceTrainOptions options;
  options.model_type = type;
  options.threads = 1;
  deco::train_sentencepiece({kGpl3}, vocab, model, options);
  return model;
}

// All tokens of document d (its sequences concatenated).
std::vector<int32_t> document(const deco::IndexedDataset& ds, int64_t d) {
  std::vector<int32_t> out;
  for (int64_t s = ds.document_indices()[d]; s < ds.document_indices()[d + 1]; ++s) {
    std::vector<int32_t> seq(static_cast<size_t>(ds.sequence_length(s)));
    ds.read(s, 0, static_cast<int64_t>(seq.size()), seq.data());
    out.insert(out.end(), seq.begin(), seq.end());
  }
  return out;
}

std::vector<int32_t> with_eod(std::vector<int32_t> ids, int32_t eod) {
  ids.push_back(eod);
  return ids;
}

deco::PreprocessOptions options_for(const std::string& input, const std::string& prefix) {
  deco::PreprocessOptions options;
  options.inputs = {input};
  options.output_prefix = prefix;
  return options;
}

// A tokenizer past uint16: byte b becomes 65500 + b, EOD 65756.
class WideTokenizer final : public deco::Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(65500 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    for (int32_t id : ids) text.push_back(static_cast<char>(id - 65500));
    return text;
  }
  int64_t vocab_size() const override { return 65757; }
  int32_t eod_id() const override { return 65756; }
  std::string describe() const override { return "wide test tokenizer"; }
};

}  // namespace

TEST_CASE("tokenizer: byte tokenizer round-trips UTF-8 with EOD 256", "[tokenizer]") {
  const auto tok = deco::make_tokenizer("byte", "");
  CHECK(tok->vocab_size() == 257);
  CHECK(tok->eod_id() == 256);
  const std::string text =
      "na\xC3\xAFve \xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\n";  // naïve ✓ 日本 😀
  const std::vector<int32_t> ids = tok->encode(text);
  REQUIRE(ids.size() == 23);  // UTF-8 spells ï in 2 bytes, ✓ 日 本 in 3, 😀 in 4
  CHECK(ids[2] == 0xC3);
  CHECK(ids[3] == 0xAF);
  CHECK(ids[18] == 0xF0);
  CHECK(ids[22] == '\n');
  CHECK(tok->decode(ids) == text);
  CHECK(tok->decode(with_eod(ids, 256)) == text);  // EOD has no text
  CHECK(tok->encode("").empty());
  CHECK_THAT(error_of([&] { tok->decode({65, 257}); }), Contains("257") && Contains("[0, 257)"));
  CHECK_THAT(error_of([&] { tok->decode({-1}); }), Contains("-1"));
  CHECK_THAT(error_of([] { deco::make_tokenizer("byte", "m.model"); }),
             Contains("takes no model file") && Contains("m.model"));
}

TEST_CASE("tokenizer: SentencePiece trained on GPL-3 round-trips text", "[tokenizer]") {
  TempDir dir;
  const std::string model = train_gpl3_model(dir, 400);
  REQUIRE(fs::exists(model));
  CHECK(dir.entries() == 1);  // the model only: no temporary left behind
  const auto tok = deco::make_tokenizer("sentencepiece", model);
  CHECK(tok->vocab_size() == 400);
  CHECK(tok->eod_id() == 2);  // SentencePiece's </s>: unk 0, <s> 1, </s> 2
  CHECK_THAT(tok->describe(), Contains(model) && Contains("400") && Contains("</s>"));

  const std::string sentence =
      "This License applies to any program in 2007.\n\tIndented  twice, na\xC3\xAFve \xE2\x9C\x93";
  const std::vector<int32_t> ids = tok->encode(sentence);
  CHECK(ids.size() > 10);
  CHECK(ids.size() < sentence.size());  // merges learned from GPL-3 shorten English text
  for (int32_t id : ids) CHECK((id >= 0 && id < 400));
  CHECK(tok->decode(ids) == sentence);  // lossless: identity normalization, byte fallback
  CHECK(tok->decode(with_eod(ids, 2)) == sentence);
  // ✓ never occurs in GPL-3: it is spelled with byte pieces <0xE2><0x9C><0x93>,
  // which SentencePiece numbers 3 + byte after its three special pieces.
  const std::vector<int32_t> check = tok->encode("\xE2\x9C\x93");
  REQUIRE(check.size() >= 3);
  CHECK(std::vector<int32_t>(check.end() - 3, check.end()) ==
        std::vector<int32_t>{3 + 0xE2, 3 + 0x9C, 3 + 0x93});
  // Digits are split one by one.
  const std::vector<int32_t> year = tok->encode("2007");
  CHECK(year.size() >= 4);

  // Megatron's name for the same tokenizer gives the same ids.
  const auto megatron = deco::make_tokenizer("GPTSentencePieceTokenizer", model);
  CHECK(megatron->encode(sentence) == ids);
  CHECK(megatron->eod_id() == 2);
  CHECK_THAT(error_of([&] { tok->decode({400}); }), Contains("400") && Contains(model));

  // Retraining gives the same model byte for byte.
  TempDir again;
  CHECK(read_file(train_gpl3_model(again, 400)) == read_file(model));
}

TEST_CASE("tokenizer: unigram models train too", "[tokenizer]") {
  TempDir dir;
  const std::string model = train_gpl3_model(dir, 500, "unigram");
  const auto tok = deco::make_tokenizer("sentencepiece", model);
  CHECK(tok->vocab_size() == 500);
  CHECK(tok->eod_id() == 2);
  const std::string sentence = "You may convey verbatim copies of the Program's source code.";
  CHECK(tok->decode(tok->encode(sentence)) == sentence);
  CHECK(tok->encode(sentence).size() < sentence.size());
}

TEST_CASE("tokenizer: bad types, models and training settings are clear errors", "[tokenizer]") {
  TempDir dir;
  CHECK_THAT(error_of([&] { deco::make_tokenizer("sentencepiece", dir / "missing.model"); }),
             Contains("missing.model") && Contains("does not exist"));
  write_file(dir / "corrupt.model", read_file(kGpl3));
  CHECK_THAT(error_of([&] { deco::make_tokenizer("sentencepiece", dir / "corrupt.model"); }),
             Contains("corrupt.model") && Contains("not a valid SentencePiece model"));
  CHECK_THAT(error_of([&] { deco::make_tokenizer("sentencepiece", dir.path.string()); }),
             Contains("is a directory"));
  CHECK_THAT(error_of([] { deco::make_tokenizer("sentencepiece", ""); }),
             Contains("--tokenizer-model"));
  CHECK_THAT(error_of([] { deco::make_tokenizer("GPT2BPETokenizer", ""); }),
             Contains("GPT2BPETokenizer") && Contains("sentencepiece") && Contains("byte"));
  CHECK_THAT(error_of([] { deco::make_tokenizer("SentencePieceTokenizer", "m.model"); }),
             Contains("<EOD>") && Contains("GPTSentencePieceTokenizer"));

  // 400 pieces cannot hold GPL-3's characters plus 256 byte pieces at 100;
  // nothing is written under the output name.
  const std::string out = dir / "small.model";
  CHECK_THAT(error_of([&] { deco::train_sentencepiece({kGpl3}, 100, out); }),
             Contains("SentencePiece training failed") && Contains("Vocabulary size"));
  CHECK_FALSE(fs::exists(out));
  CHECK_THAT(error_of([&] { deco::train_sentencepiece({dir / "none.txt"}, 400, out); }),
             Contains("none.txt") && Contains("does not exist"));
  deco::SentencePieceTrainOptions word;
  word.model_type = "word";
  CHECK_THAT(error_of([&] { deco::train_sentencepiece({kGpl3}, 400, out, word); }),
             Contains("\"word\"") && Contains("bpe or unigram"));
  CHECK_THAT(
      error_of([&] { deco::train_sentencepiece({kGpl3}, 400, dir / "no/such/dir/m.model"); }),
      Contains("no/such/dir/m.model") && Contains("does not exist"));
  // A malformed JSONL training line names its file and line.
  write_file(dir / "bad.jsonl", json_line("text", "fine") + "{oops\n");
  CHECK_THAT(error_of([&] { deco::train_sentencepiece({dir / "bad.jsonl"}, 400, out); }),
             Contains("bad.jsonl:2:") && Contains("malformed JSON"));
  CHECK(dir.entries() == 2);  // corrupt.model and bad.jsonl: no model, no temporaries
}

TEST_CASE("tokenizer: SentencePiece trains on JSONL documents like on their text", "[tokenizer]") {
  TempDir dir;
  std::string jsonl;
  for (const std::string& p : gpl3_paragraphs()) jsonl += json_line("body", p);
  write_gzip(dir / "gpl3.jsonl.gz", jsonl);
  deco::SentencePieceTrainOptions options;
  options.threads = 1;
  options.text_key = "body";
  deco::train_sentencepiece({dir / "gpl3.jsonl.gz"}, 400, dir / "j.model", options);
  const auto from_jsonl = deco::make_tokenizer("sentencepiece", dir / "j.model");
  const auto from_text = deco::make_tokenizer("sentencepiece", train_gpl3_model(dir, 400));
  // The same non-blank lines in the same order train the same pieces.
  CHECK(from_jsonl->vocab_size() == 400);
  CHECK(read_file(dir / "j.model") == read_file(dir / "gpl3-bpe.model"));
}

TEST_CASE("preprocess: JSONL documents read back as encode(text) + EOD", "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("sentencepiece", train_gpl3_model(dir));
  const std::vector<std::string> paragraphs = gpl3_paragraphs();
  REQUIRE(paragraphs.size() > 100);
  std::string jsonl;
  for (const std::string& p : paragraphs) jsonl += json_line("text", p);
  // Megatron's pre-split form: a list of sentences, one sequence each; and
  // an empty document, recorded without a sequence and without EOD.
  jsonl += "{\"text\": [\"First sentence.\", \"\", \"Second one.\"]}\n";
  jsonl += "{\"text\": \"\"}\r\n";
  write_file(dir / "gpl3.jsonl", jsonl);

  deco::PreprocessOptions options = options_for(dir / "gpl3.jsonl", dir / "ds");
  options.append_eod = true;
  options.workers = 2;
  const deco::PreprocessStats stats = deco::preprocess(*tok, options);

  const int64_t n = static_cast<int64_t>(paragraphs.size());
  const deco::IndexedDataset ds(dir / "ds");
  CHECK(ds.dtype() == deco::IndexDType::U16);
  REQUIRE(ds.num_documents() == n + 2);
  CHECK(ds.num_sequences() == n + 2);  // one per paragraph, two for the list, none for ""
  int64_t tokens = 0;
  for (int64_t d = 0; d < n; ++d) {
    const std::vector<int32_t> expected = with_eod(tok->encode(paragraphs[d]), 2);
    CHECK(document(ds, d) == expected);
    tokens += static_cast<int64_t>(expected.size());
  }
  const std::vector<int32_t> first = tok->encode("First sentence."),
                             second = tok->encode("Second one.");
  CHECK(ds.document_indices()[n + 1] - ds.document_indices()[n] == 2);
  CHECK(ds.sequence_length(n) == static_cast<int32_t>(first.size()));
  CHECK(ds.sequence_length(n + 1) == static_cast<int32_t>(second.size()) + 1);  // EOD on the last
  std::vector<int32_t> list = first;
  list.insert(list.end(), second.begin(), second.end());
  CHECK(document(ds, n) == with_eod(list, 2));
  CHECK(ds.document_indices()[n + 2] == ds.document_indices()[n + 1]);  // the empty document
  tokens += static_cast<int64_t>(list.size()) + 1;

  CHECK(ds.total_tokens() == tokens);
  CHECK(stats.documents == n + 2);
  CHECK(stats.empty_documents == 1);
  CHECK(stats.sequences == n + 2);
  CHECK(stats.tokens == tokens);
  CHECK(stats.skipped_lines == 0);
  CHECK(stats.text_bytes ==
        static_cast<int64_t>(jsonl.size()) - (n + 3));  // without "\n" and "\r\n"
  CHECK(dir.entries() == 4);  // model, input, ds.bin, ds.idx: no temporaries
}

TEST_CASE("preprocess: gzipped JSONL writes the same files as plain JSONL", "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("sentencepiece", train_gpl3_model(dir));
  std::string jsonl;
  for (const std::string& p : gpl3_paragraphs()) jsonl += json_line("text", p);
  write_file(dir / "plain.jsonl", jsonl);
  write_gzip(dir / "packed.jsonl.gz", jsonl);
  deco::PreprocessOptions plain = options_for(dir / "plain.jsonl", dir / "plain");
  deco::PreprocessOptions packed = options_for(dir / "packed.jsonl.gz", dir / "packed");
  plain.append_eod = packed.append_eod = true;
  const deco::PreprocessStats a = deco::preprocess(*tok, plain);
  const deco::PreprocessStats b = deco::preprocess(*tok, packed);
  CHECK(a.documents == static_cast<int64_t>(gpl3_paragraphs().size()));
  CHECK(b.tokens == a.tokens);
  CHECK(read_file(dir / "packed.bin") == read_file(dir / "plain.bin"));
  CHECK(read_file(dir / "packed.idx") == read_file(dir / "plain.idx"));

  // A truncated .gz is an error naming the file, not a shorter dataset.
  const std::string gz = read_file(dir / "packed.jsonl.gz");
  write_file(dir / "cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  CHECK_THAT(
      error_of([&] { deco::preprocess(*tok, options_for(dir / "cut.jsonl.gz", dir / "cut")); }),
      Contains("cut.jsonl.gz") && Contains("corrupt or truncated"));
  CHECK_FALSE(fs::exists(dir / "cut.bin"));
}

TEST_CASE("preprocess: plain text is one document per line, paragraph or file", "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("byte", "");
  const std::string text = "first line\r\nsecond line\n\n  \nthird\nfourth\n";
  write_file(dir / "doc.txt", text);

  deco::PreprocessOptions options = options_for(dir / "doc.txt", dir / "lines");
  options.append_eod = true;
  deco::preprocess(*tok, options);
  const deco::IndexedDataset lines(dir / "lines");
  REQUIRE(lines.num_documents() == 4);  // blank and whitespace-only lines are not documents
  CHECK(document(lines, 0) == with_eod(tok->encode("first line"), 256));  // "\r\n" ends the line
  CHECK(document(lines, 3) == with_eod(tok->encode("fourth"), 256));

  options.text_docs = deco::TextDocs::Paragraph;
  options.output_prefix = dir / "paragraphs";
  deco::preprocess(*tok, options);
  const deco::IndexedDataset paragraphs(dir / "paragraphs");
  REQUIRE(paragraphs.num_documents() == 2);
  CHECK(document(paragraphs, 0) == with_eod(tok->encode("first line\nsecond line"), 256));
  CHECK(document(paragraphs, 1) == with_eod(tok->encode("third\nfourth"), 256));

  options.text_docs = deco::TextDocs::File;
  options.output_prefix = dir / "file";
  options.inputs = {dir / "doc.txt", dir / "doc.txt"};
  deco::preprocess(*tok, options);
  const deco::IndexedDataset file(dir / "file");
  REQUIRE(file.num_documents() == 2);
  CHECK(document(file, 1) == with_eod(tok->encode(text), 256));  // the bytes exactly, "\r" included

  // GPL-3 has no extension: its first line is no JSON object, so it is text.
  const deco::PreprocessStats gpl = deco::preprocess(*tok, options_for(kGpl3, dir / "gpl"));
  int64_t nonblank = 0;
  std::istringstream in(read_file(kGpl3));
  for (std::string line; std::getline(in, line);)
    nonblank += line.find_first_not_of(" \t\r") != std::string::npos ? 1 : 0;
  CHECK(gpl.documents == nonblank);
}

TEST_CASE("preprocess: the files do not depend on the number of workers", "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("sentencepiece", train_gpl3_model(dir));
  // 5 x GPL-3 is ~3400 lines: several batches, finished out of order by 3 workers.
  std::string jsonl;
  std::istringstream in(read_file(kGpl3));
  int64_t lines = 0;
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t") != std::string::npos)
      jsonl += json_line("text", line), ++lines;
  write_file(dir / "a.jsonl", jsonl);
  write_file(dir / "b.jsonl", jsonl + jsonl);
  std::vector<std::string> bins, idxs;
  for (int workers : {1, 2, 3}) {
    deco::PreprocessOptions options;
    options.inputs = {dir / "a.jsonl", dir / "b.jsonl", dir / "a.jsonl", dir / "a.jsonl"};
    options.output_prefix = dir / ("w" + std::to_string(workers));
    options.append_eod = true;
    options.workers = workers;
    const deco::PreprocessStats stats = deco::preprocess(*tok, options);
    CHECK(stats.documents == 5 * lines);
    bins.push_back(read_file(options.output_prefix + ".bin"));
    idxs.push_back(read_file(options.output_prefix + ".idx"));
  }
  CHECK(bins[0].size() > 50000);
  CHECK(bins[1] == bins[0]);
  CHECK(bins[2] == bins[0]);
  CHECK(idxs[1] == idxs[0]);
  CHECK(idxs[2] == idxs[0]);
}

TEST_CASE("preprocess: malformed JSON lines fail with file:line, or are skipped and counted",
          "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("byte", "");
  write_file(dir / "bad.jsonl", json_line("text", "one") + "\n" + "{\"text\": \"two\"\n" +
                                    json_line("text", "three") + "[1, 2]\n" +
                                    json_line("text", "four"));
  deco::PreprocessOptions options = options_for(dir / "bad.jsonl", dir / "out");
  options.workers = 2;
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }),
             Contains("bad.jsonl:3: malformed JSON") && Contains("--on-bad-line skip"));
  CHECK(dir.entries() == 1);  // nothing written, no temporaries

  std::ostringstream log;
  options.on_bad_line = deco::OnBadLine::Skip;
  options.log = &log;
  const deco::PreprocessStats stats = deco::preprocess(*tok, options);
  CHECK(stats.documents == 3);
  CHECK(stats.skipped_lines == 2);
  CHECK(stats.blank_lines == 1);
  const deco::IndexedDataset ds(dir / "out");
  CHECK(document(ds, 1) == tok->encode("three"));
  CHECK(document(ds, 2) == tok->encode("four"));
  CHECK_THAT(log.str(), Contains("warning: skipped " + (dir / "bad.jsonl") + ":3: malformed JSON"));
  CHECK_THAT(log.str(), Contains(":5: expected a JSON object, found a JSON array"));
  CHECK_THAT(log.str(), Contains("3 documents (0 empty)") &&
                            Contains("skipped 2 malformed lines") &&
                            Contains("ignored 1 blank lines"));

  // Every line malformed: an error, not an empty dataset.
  write_file(dir / "all-bad.jsonl", "nope\n");
  options.inputs = {dir / "all-bad.jsonl"};
  options.output_prefix = dir / "none";
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }), Contains("no documents"));
  CHECK_FALSE(fs::exists(dir / "none.idx"));
}

TEST_CASE("preprocess: a missing key or a non-text value names the line", "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("byte", "");
  write_file(dir / "keys.jsonl", json_line("content", "a") + json_line("content", "bc"));
  deco::PreprocessOptions options = options_for(dir / "keys.jsonl", dir / "out");
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }),
             Contains("keys.jsonl:1: no key \"text\"") && Contains("content, id") &&
                 Contains("--text-key"));
  options.text_key = "content";
  CHECK(deco::preprocess(*tok, options).tokens == 3);

  write_file(dir / "types.jsonl",
             "{\"text\": \"ok\"}\n{\"text\": 42}\n{\"text\": [\"a\", null]}\n");
  options = options_for(dir / "types.jsonl", dir / "out2");
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }),
             Contains("types.jsonl:2: key \"text\" holds a JSON number, not a string"));
  options.on_bad_line = deco::OnBadLine::Skip;
  const deco::PreprocessStats stats = deco::preprocess(*tok, options);
  CHECK(stats.skipped_lines == 2);
  CHECK(stats.tokens == 2);
}

TEST_CASE("preprocess: missing inputs, outputs and names are clear errors", "[tokenizer]") {
  TempDir dir;
  const auto tok = deco::make_tokenizer("byte", "");
  write_file(dir / "ok.jsonl", json_line("text", "fine"));
  deco::PreprocessOptions options = options_for(dir / "ok.jsonl", dir / "out");
  options.inputs.push_back(dir / "missing.jsonl");
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }),
             Contains("input file " + (dir / "missing.jsonl") + " does not exist"));
  options = options_for(dir / "ok.jsonl", dir / "no-dir/out");
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }),
             Contains("output directory") && Contains("no-dir"));
  options = options_for(dir / "ok.jsonl", dir / "out");
  options.workers = 0;
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }), Contains("workers"));
  options = options_for(dir.path.string(), dir / "out");
  CHECK_THAT(error_of([&] { deco::preprocess(*tok, options); }), Contains("is a directory"));
  CHECK_THAT(error_of([] { deco::parse_text_docs("sentence"); }),
             Contains("line, paragraph or file"));
  CHECK(dir.entries() == 1);
}

TEST_CASE("preprocess: vocabularies of 65500 and more are stored as int32", "[tokenizer]") {
  TempDir dir;
  const WideTokenizer tok;
  write_file(dir / "wide.txt", "ab\nc\n");
  deco::PreprocessOptions options = options_for(dir / "wide.txt", dir / "wide");
  options.append_eod = true;
  std::ostringstream log;
  options.log = &log;
  options.log_interval_s = 0.0;  // a progress line after every batch
  deco::preprocess(tok, options);
  const deco::IndexedDataset ds(dir / "wide");
  CHECK(ds.dtype() == deco::IndexDType::I32);
  CHECK(document(ds, 0) == std::vector<int32_t>{65500 + 'a', 65500 + 'b', 65756});
  CHECK(document(ds, 1) == std::vector<int32_t>{65500 + 'c', 65756});
  CHECK(fs::file_size(dir / "wide.bin") == 5 * 4);
  CHECK_THAT(log.str(), Contains("preprocess: 2 documents, 5 tokens, 100.0% of the input"));
  CHECK_THAT(log.str(), Contains("5 tokens as int32"));
}
