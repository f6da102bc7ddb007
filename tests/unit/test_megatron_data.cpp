// Megatron-LM data: the golden values of ../shared/docs/megatron-data.md
// (index bytes, split bookends, the toy GPT dataset's indices and samples,
// the blend order), round trips for every dtype, the index cache, the
// message of every corrupt-file check, and parity with NumPy's
// RandomState and an independent Python model of Megatron's index building.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/blended_dataset.h"
#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"
#include "data/megatron_data.h"
#include "data/npy.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using deco::test::TempDir;
using deco::test::error_of;
using deco::test::kPython;
using deco::test::run_command;
using namespace deco;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// The specification's toy corpus: uint16 documents [1,2,3], [4,5], [6,7,8,9].
void write_toy(const std::string& prefix) {
  IndexedDatasetBuilder builder(prefix, IndexDType::U16);
  const std::vector<std::vector<int32_t>> docs = {{1, 2, 3}, {4, 5}, {6, 7, 8, 9}};
  for (const auto& d : docs) builder.add_document(d.data(), static_cast<int64_t>(d.size()));
  builder.finalize();
}

template <typename T>
void put(std::string& bytes, size_t at, T v) {
  std::memcpy(&bytes[at], &v, sizeof v);
}

std::vector<int32_t> read_all(const IndexedDataset& data, int64_t sequence) {
  std::vector<int32_t> out(static_cast<size_t>(data.sequence_length(sequence)));
  data.read(sequence, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}

std::vector<int32_t> sample(const SampleSource& source, int64_t k) {
  std::vector<int32_t> out(static_cast<size_t>(source.sample_tokens()));
  source.read(k, out.data());
  return out;
}

bool have_numpy() {
  if (::access(kPython, X_OK) != 0) return false;
  int rc = 0;
  run_command(std::string(kPython) + " -c 'import numpy' 2>/dev/null", &rc);
  return rc == 0;
}

int64_t mtime_ns(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

GptDatasetSpec toy_spec(const std::string& cache_dir, uint64_t seed = 1234) {
  GptDatasetSpec spec;
  spec.cache_dir = cache_dir;
  spec.range = {true, 0, 3};
  spec.num_samples = 6;
  spec.seq_length = 2;
  spec.seed = seed;
  return spec;
}

}  // namespace

// ---------------------------------------------------------------- section 1: the file pair

TEST_CASE("megatron: the toy uint16 dataset is Megatron's 102-byte .idx and 18-byte .bin",
          "[megatron]") {
  TempDir dir;
  write_toy(dir / "toy");
  std::string idx;
  idx += std::string("MMIDIDX\0\0", 9);
  idx.append(34 - 9, '\0');
  put<uint64_t>(idx, 9, 1);   // version
  put<uint8_t>(idx, 17, 8);   // uint16
  put<uint64_t>(idx, 18, 3);  // S
  put<uint64_t>(idx, 26, 4);  // D
  auto append = [&](auto v) { idx.append(reinterpret_cast<const char*>(&v), sizeof v); };
  for (int32_t v : {3, 2, 4}) append(v);
  for (int64_t v : {0, 6, 10}) append(v);
  for (int64_t v : {0, 1, 2, 3}) append(v);
  REQUIRE(idx.size() == 102);
  CHECK(slurp(dir / "toy.idx") == idx);
  const std::string bin = slurp(dir / "toy.bin");
  REQUIRE(bin.size() == 18);
  for (int i = 0; i < 9; ++i) {
    CHECK(static_cast<uint8_t>(bin[2 * i]) == i + 1);
    CHECK(bin[2 * i + 1] == 0);
  }
  CHECK(dir.entries() == 2);  // no temporaries left behind

  IndexedDataset data(dir / "toy");
  CHECK(data.dtype() == IndexDType::U16);
  CHECK(data.num_sequences() == 3);
  CHECK(data.num_documents() == 3);
  CHECK(data.total_tokens() == 9);
  CHECK(data.document_indices() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(data.sequence_length(2) == 4);
  CHECK(read_all(data, 0) == std::vector<int32_t>{1, 2, 3});
  CHECK(read_all(data, 2) == std::vector<int32_t>{6, 7, 8, 9});
  int32_t middle[2];
  data.read(2, 1, 2, middle);
  CHECK(middle[0] == 7);
  CHECK(middle[1] == 8);
  CHECK(data.max_token() == 9);
  CHECK_THAT(error_of([&] { data.read(1, 1, 2, middle); }), Contains("outside sequence 1"));
}

TEST_CASE("megatron: every dtype code round-trips, with multi-sequence documents", "[megatron]") {
  TempDir dir;
  struct Case {
    IndexDType dtype;
    uint8_t code;
    int32_t largest;
  };
  const Case cases[] = {{IndexDType::U8, 1, 255},          {IndexDType::I8, 2, 127},
                        {IndexDType::I16, 3, 32767},       {IndexDType::I32, 4, 2147483647},
                        {IndexDType::I64, 5, 2147483647},  {IndexDType::F64, 6, 2147483647},
                        {IndexDType::F32, 7, 16777216},    {IndexDType::U16, 8, 65535}};
  for (const Case& c : cases) {
    INFO(index_dtype_name(c.dtype));
    const std::string prefix = dir / index_dtype_name(c.dtype);
    const std::vector<int32_t> a = {0, 1, 2}, b = {c.largest, 7}, e = {}, d = {5, 6, 7, 8};
    {
      IndexedDatasetBuilder builder(prefix, c.dtype);
      builder.add_sequence(a.data(), 3);  // document 0: three sequences, one empty
      builder.add_sequence(b.data(), 2);
      builder.add_sequence(e.data(), 0);
      builder.end_document();
      builder.add_document(d.data(), 4);  // document 1
      CHECK(builder.num_sequences() == 4);
      builder.finalize();
    }
    const std::string idx = slurp(prefix + ".idx");
    CHECK(static_cast<uint8_t>(idx[17]) == c.code);
    CHECK(idx.size() == 34 + 12 * 4 + 8 * 3);
    const int64_t item = static_cast<int64_t>(index_dtype_size(c.dtype));
    CHECK(static_cast<int64_t>(slurp(prefix + ".bin").size()) == 9 * item);
    IndexedDataset data(prefix);
    CHECK(data.dtype() == c.dtype);
    CHECK(data.num_sequences() == 4);
    CHECK(data.num_documents() == 2);
    CHECK(data.document_indices() == std::vector<int64_t>{0, 3, 4});
    CHECK(read_all(data, 0) == a);
    CHECK(read_all(data, 1) == b);
    CHECK(read_all(data, 2).empty());
    CHECK(read_all(data, 3) == d);
    CHECK(data.max_token() == c.largest);
  }
  CHECK(index_dtype_for_vocab(65499) == IndexDType::U16);
  CHECK(index_dtype_for_vocab(65500) == IndexDType::I32);
  CHECK(index_dtype_for_vocab(73448) == IndexDType::I32);
}

TEST_CASE("megatron: the builder refuses ids its dtype cannot hold and cleans up when not finalized",
          "[megatron]") {
  TempDir dir;
  {
    IndexedDatasetBuilder builder(dir / "u8", IndexDType::U8);
    const int32_t too_big[] = {3, 256};
    CHECK_THAT(error_of([&] { builder.add_sequence(too_big, 2); }),
               Contains("token id 256") && Contains("does not fit the dataset's dtype uint8"));
    const int32_t negative[] = {-1};
    CHECK_THAT(error_of([&] { builder.add_sequence(negative, 1); }), Contains("token id -1"));
    CHECK(dir.entries() == 1);  // the .bin temporary
  }
  CHECK(dir.entries() == 0);
  {  // a refused sequence leaves nothing behind in the files
    IndexedDatasetBuilder builder(dir / "skip", IndexDType::U8);
    const int32_t good[] = {1, 2}, bad[] = {3, 300};
    builder.add_document(good, 2);
    CHECK_THAT(error_of([&] { builder.add_document(bad, 2); }), Contains("token id 300"));
    builder.add_document(good, 2);
    builder.finalize();
  }
  const IndexedDataset skipped(dir / "skip");
  CHECK(skipped.num_sequences() == 2);
  CHECK(read_all(skipped, 1) == std::vector<int32_t>{1, 2});
  std::filesystem::remove(dir / "skip.idx");
  std::filesystem::remove(dir / "skip.bin");
  // A document left open is closed by finalize, so the file is valid.
  {
    IndexedDatasetBuilder builder(dir / "open", IndexDType::I32);
    const int32_t t[] = {4, 5};
    builder.add_sequence(t, 2);
    builder.finalize();
  }
  CHECK(IndexedDataset(dir / "open").document_indices() == std::vector<int64_t>{0, 1});
  CHECK_THAT(error_of([&] { IndexedDatasetBuilder(dir / "missing/x", IndexDType::U16); }),
             Contains("missing/x.bin") && Contains("exists and is writable"));
}

TEST_CASE("megatron: each corrupt index gives its own clear error naming the file", "[megatron]") {
  TempDir dir;
  write_toy(dir / "toy");
  const std::string idx = slurp(dir / "toy.idx"), bin = slurp(dir / "toy.bin");
  auto open_with = [&](const std::string& name, const std::string& idx_bytes,
                       const std::string& bin_bytes) {
    spit(dir / (name + ".idx"), idx_bytes);
    spit(dir / (name + ".bin"), bin_bytes);
    return error_of([&] { IndexedDataset data(dir / name); });
  };
  std::string b = idx;
  b[0] = 'X';
  CHECK_THAT(open_with("magic", b, bin),
             Contains("magic.idx: wrong magic (expected MMIDIDX\\0\\0 at byte 0)"));
  b = idx;
  put<uint64_t>(b, 9, 2);
  CHECK_THAT(open_with("version", b, bin),
             Contains("version.idx: version 2") && Contains("version 1"));
  b = idx;
  b[17] = 9;
  CHECK_THAT(open_with("dtype", b, bin), Contains("dtype.idx: unknown dtype code 9 at byte 17"));
  b = idx;
  b[17] = 0;
  CHECK_THAT(open_with("dtype0", b, bin), Contains("unknown dtype code 0"));
  CHECK_THAT(open_with("short_idx", idx.substr(0, 90), bin),
             Contains("short_idx.idx: truncated") && Contains("need"));
  CHECK_THAT(open_with("tiny_idx", idx.substr(0, 20), bin),
             Contains("tiny_idx.idx: truncated: 20 bytes, shorter than the 34-byte header"));
  CHECK_THAT(open_with("long_idx", idx + "abcd", bin), Contains("long_idx.idx: has 106 bytes"));
  CHECK_THAT(open_with("short_bin", idx, bin.substr(0, 16)),
             Contains("short_bin.bin: has 16 bytes") &&
                 Contains("(18 bytes); the .bin is truncated"));
  b = idx;
  put<int64_t>(b, 34 + 12 + 16, 1000);  // pointer of sequence 2
  CHECK_THAT(open_with("pointer_end", b, bin),
             Contains("pointer_end.idx: the pointer of sequence 2 is byte 1000") &&
                 Contains("past the end of") && Contains("pointer_end.bin (18 bytes)"));
  b = idx;
  put<int64_t>(b, 34 + 12 + 8, 4);  // pointer of sequence 1
  CHECK_THAT(open_with("pointer_len", b, bin),
             Contains("pointer_len.idx: the pointer of sequence 1 is byte 4") &&
                 Contains("the pointers are inconsistent with the lengths"));
  b = idx;
  put<int64_t>(b, 34 + 36 + 24, 2);  // last document index
  CHECK_THAT(open_with("docs", b, bin),
             Contains("docs.idx: the document indices end at 2, not at the sequence count 3"));
  b = idx;
  put<int64_t>(b, 34 + 36 + 8, 3);  // document indices 0, 3, 2, 3
  CHECK_THAT(open_with("order", b, bin), Contains("must not decrease"));
  b = idx;
  put<int32_t>(b, 34, -3);
  CHECK_THAT(open_with("negative", b, bin), Contains("sequence 0 has the negative length -3"));
  // Multimodal files carry one mode byte per sequence after the document indices.
  spit(dir / "mm.idx", idx + std::string(3, '\0'));
  spit(dir / "mm.bin", bin);
  CHECK(IndexedDataset(dir / "mm").num_sequences() == 3);
  CHECK_THAT(error_of([&] { IndexedDataset data(dir / "nothing"); }),
             Contains("cannot open") && Contains("nothing.idx"));
  CHECK_THAT(error_of([&] { IndexedDataset data(dir / "toy.bin"); }),
             Contains("toy.bin ends in its extension; give the dataset prefix, " + dir / "toy"));
  std::filesystem::remove(dir / "mm.bin");
  CHECK_THAT(error_of([&] { IndexedDataset data(dir / "mm"); }), Contains("mm.bin"));
}

TEST_CASE("megatron: tokens a dtype can store but that are no token ids fail when read",
          "[megatron]") {
  TempDir dir;
  write_toy(dir / "toy");
  std::string idx = slurp(dir / "toy.idx");
  idx[17] = 2;  // int8 with 18 bytes: 18 tokens
  put<int32_t>(idx, 34, 6);
  put<int32_t>(idx, 38, 4);
  put<int32_t>(idx, 42, 8);
  put<int64_t>(idx, 46, 0);
  put<int64_t>(idx, 54, 6);
  put<int64_t>(idx, 62, 10);
  std::string bin(18, '\1');
  bin[7] = static_cast<char>(-5);
  spit(dir / "neg.idx", idx);
  spit(dir / "neg.bin", bin);
  IndexedDataset data(dir / "neg");
  CHECK(read_all(data, 0) == std::vector<int32_t>(6, 1));
  CHECK_THAT(error_of([&] { read_all(data, 1); }),
             Contains("neg.bin: token 1 of sequence 1 is -5"));
}

// ---------------------------------------------------------------- section 2: splits

TEST_CASE("megatron: split strings, bookends and sequence ranges as Megatron computes them",
          "[megatron]") {
  CHECK(parse_split("969,30,1") == std::array<double, 3>{0.969, 0.03, 0.001});
  CHECK(split_bookends(parse_split("969,30,1")) == std::array<double, 4>{0, 0.969, 0.999, 1.0});
  CHECK(parse_split("99990,8,2") == std::array<double, 3>{0.9999, 0.00008, 0.00002});
  CHECK(split_bookends(parse_split("99990,8,2")) ==
        std::array<double, 4>{0, 0.9999, 0.99998, 1.0});
  CHECK(parse_split(" 98 / 2 ") == std::array<double, 3>{0.98, 0.02, 0.0});
  CHECK(parse_split("1") == std::array<double, 3>{1.0, 0.0, 0.0});
  CHECK(parse_split("0.5,0.25,0.25") == std::array<double, 3>{0.5, 0.25, 0.25});

  auto ranges = split_sequence_ranges("99990,8,2", 100000);
  CHECK((ranges[0].present && ranges[0].begin == 0 && ranges[0].end == 99990));
  CHECK((ranges[1].present && ranges[1].begin == 99990 && ranges[1].end == 99998));
  CHECK((ranges[2].present && ranges[2].begin == 99998 && ranges[2].end == 100000));
  ranges = split_sequence_ranges("969,30,1", 1000);
  CHECK((ranges[0].begin == 0 && ranges[0].end == 969 && ranges[1].begin == 969 &&
         ranges[1].end == 999 && ranges[2].begin == 999 && ranges[2].end == 1000));
  ranges = split_sequence_ranges("969,30,1", 100);  // round(96.9) = 97, round(99.9) = 100
  CHECK((ranges[0].end == 97 && ranges[1].begin == 97 && ranges[1].end == 100));
  CHECK((ranges[2].present && ranges[2].size() == 0));  // present but empty
  // Python's round() takes halves to even: 1.5 -> 2 but 2.5 -> 2.
  ranges = split_sequence_ranges("1,1", 3);
  CHECK((ranges[0].end == 2 && ranges[1].begin == 2 && ranges[1].end == 3 && !ranges[2].present));
  ranges = split_sequence_ranges("1,1", 5);
  CHECK((ranges[0].end == 2 && ranges[1].begin == 2 && ranges[1].end == 5));
  ranges = split_sequence_ranges("1", 7);
  CHECK((ranges[0].present && ranges[0].end == 7 && !ranges[1].present && !ranges[2].present));

  CHECK_THAT(error_of([] { parse_split("1,2,3,4"); }), Contains("has 4 entries; write at most 3"));
  CHECK_THAT(error_of([] { parse_split("90,x,1"); }), Contains("\"x\" is not a non-negative number"));
  CHECK_THAT(error_of([] { parse_split("90,-5,1"); }), Contains("\"-5\" is not"));
  CHECK_THAT(error_of([] { parse_split("90,,1"); }), Contains("\"\" is not"));
  CHECK_THAT(error_of([] { parse_split("0,0"); }), Contains("gives every split a share of 0"));
}

// ---------------------------------------------------------------- section 3: the GPT dataset

TEST_CASE("megatron: epochs and the separate-final-epoch rule", "[megatron]") {
  GptEpochPlan p = plan_gpt_epochs(9, 6, 2);  // the toy
  CHECK(p.tokens_per_epoch == 9);
  CHECK(p.num_epochs == 2);
  CHECK(p.separate_final_epoch);
  CHECK(p.samples_sans_final_epoch == 4);
  CHECK(p.samples_per_epoch == 4);
  CHECK(p.num_rows == 9);
  p = plan_gpt_epochs(9, 4, 2);  // 4*2+1 = 9 tokens: one epoch
  CHECK((p.num_epochs == 1 && !p.separate_final_epoch && p.num_rows == 5));
  p = plan_gpt_epochs(9, 5, 2);  // E=2, 5-4 = 1 < int(0.8*4) = 3
  CHECK((p.num_epochs == 2 && p.separate_final_epoch));
  p = plan_gpt_epochs(100, 90, 2);  // E=2, sans 49, per 49: 41 < int(39.2)? no
  CHECK((p.num_epochs == 2 && p.samples_sans_final_epoch == 49 && !p.separate_final_epoch));
  p = plan_gpt_epochs(100, 88, 2);  // 39 < 39? no
  CHECK(!p.separate_final_epoch);
  p = plan_gpt_epochs(100, 87, 2);  // 38 < 39: separate
  CHECK(p.separate_final_epoch);
  p = plan_gpt_epochs(1000, 0, 7);
  CHECK((p.num_epochs == 1 && p.num_rows == 999 / 7 + 1));
}

TEST_CASE("megatron: the toy GPT dataset's indices and samples match Megatron's golden values",
          "[megatron]") {
  TempDir dir;
  write_toy(dir / "toy");
  auto data = std::make_shared<const IndexedDataset>(dir / "toy");
  auto ds = open_gpt_dataset(data, toy_spec(dir / "cache"), true, {});
  CHECK(ds->plan().tokens_per_epoch == 9);
  CHECK(ds->plan().num_epochs == 2);
  CHECK(ds->plan().separate_final_epoch);
  CHECK(ds->size() == 8);
  CHECK(ds->sample_tokens() == 3);

  std::vector<int64_t> doc;
  for (int64_t i = 0; i < ds->document_index_size(); ++i) doc.push_back(ds->document_index(i));
  CHECK(doc == std::vector<int64_t>{0, 1, 2, 1, 2, 0});
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t r = 0; r <= ds->size(); ++r) rows.push_back(ds->sample_index(r));
  CHECK(rows == std::vector<std::pair<int64_t, int64_t>>{
                    {0, 0}, {0, 2}, {1, 1}, {2, 1}, {2, 3}, {3, 1}, {4, 1}, {4, 3}, {5, 1}});
  std::vector<int64_t> order;
  for (int64_t k = 0; k < ds->size(); ++k) order.push_back(ds->shuffle_index(k));
  CHECK(order == std::vector<int64_t>{3, 2, 1, 0, 6, 4, 7, 5});

  // The token stream 123|45|6789|45|6789|123 cut every 2 tokens, rows in shuffled order.
  const std::vector<std::vector<int32_t>> expected = {{7, 8, 9}, {5, 6, 7}, {3, 4, 5}, {1, 2, 3},
                                                      {7, 8, 9}, {9, 4, 5}, {9, 1, 2}, {5, 6, 7}};
  for (int64_t k = 0; k < 8; ++k) CHECK(sample(*ds, k) == expected[static_cast<size_t>(k)]);
  CHECK_THAT(error_of([&] { sample(*ds, 8); }), Contains("sample 8 does not exist"));
  // The cache holds exactly what Megatron's would: int32, int32 pairs, uint32.
  const std::string stem = ds->cache_stem();
  CHECK(read_npy(stem + "-document_index.npy").descr == "<i4");
  CHECK(read_npy(stem + "-sample_index.npy").shape == std::vector<int64_t>{9, 2});
  CHECK(read_npy(stem + "-shuffle_index.npy").descr == "<u4");
}

TEST_CASE("megatron: the index cache is built once, keyed by the description, and loaded after",
          "[megatron]") {
  TempDir dir;
  write_toy(dir / "toy");
  auto data = std::make_shared<const IndexedDataset>(dir / "toy");
  const GptDatasetSpec spec = toy_spec(dir / "cache");
  const std::string stem = gpt_cache_stem(*data, spec);
  CHECK(stem.rfind(dir / "cache/", 0) == 0);
  CHECK(stem.size() == (dir / "cache/").size() + 16 + 4);

  // Another rank that loads before the indices exist is told why.
  CHECK_THAT(error_of([&] { GptDataset ds(data, spec); }),
             Contains("-gpt-description.json") && Contains("is missing"));
  std::vector<std::string> events;
  auto first = open_gpt_dataset(data, spec, true, [&] { events.push_back("barrier"); });
  CHECK(events == std::vector<std::string>{"barrier"});
  const std::string files[] = {"-document_index.npy", "-sample_index.npy", "-shuffle_index.npy",
                               "-description.json"};
  std::vector<int64_t> times;
  for (const auto& f : files) times.push_back(mtime_ns(stem + f));
  CHECK(slurp(stem + "-description.json") == gpt_cache_description(*data, spec));
  CHECK_THAT(gpt_cache_description(*data, spec),
             Contains("\"seed\": 1234") && Contains("\"num_samples\": 6") &&
                 Contains("\"seq_length\": 2") && Contains("\"split_begin\": 0") &&
                 Contains("/toy\""));

  CHECK_FALSE(build_gpt_dataset_cache(*data, spec));  // second build: nothing to do
  auto loaded = open_gpt_dataset(data, spec, false, [&] { events.push_back("barrier"); });
  for (size_t i = 0; i < 4; ++i) CHECK(mtime_ns(stem + files[i]) == times[i]);
  for (int64_t k = 0; k < 8; ++k) CHECK(sample(*loaded, k) == sample(*first, k));
  CHECK(dir.entries() == 3);  // toy.idx, toy.bin, cache/

  // Every input of the order changes the key.
  GptDatasetSpec other = spec;
  other.seed = 1235;
  CHECK(gpt_cache_stem(*data, other) != stem);
  CHECK(build_gpt_dataset_cache(*data, other));
  auto reseeded = open_gpt_dataset(data, other, false, {});
  std::vector<int64_t> order;
  for (int64_t k = 0; k < reseeded->size(); ++k) order.push_back(reseeded->shuffle_index(k));
  CHECK(order != std::vector<int64_t>{3, 2, 1, 0, 6, 4, 7, 5});
  other = spec;
  other.num_samples = 7;
  CHECK(gpt_cache_stem(*data, other) != stem);
  other = spec;
  other.seq_length = 3;
  CHECK(gpt_cache_stem(*data, other) != stem);
  other = spec;
  other.range = {true, 1, 3};
  CHECK(gpt_cache_stem(*data, other) != stem);
  CHECK(std::distance(std::filesystem::directory_iterator(dir / "cache"),
                      std::filesystem::directory_iterator()) == 8);

  // A deleted array is rebuilt; a corrupt one is refused with the fix.
  std::filesystem::remove(stem + "-sample_index.npy");
  CHECK(build_gpt_dataset_cache(*data, spec));
  const std::vector<uint32_t> bad = {3, 2, 1, 0, 6, 4, 7, 99};
  write_npy(stem + "-shuffle_index.npy", "<u4", {8}, bad.data());
  auto broken = open_gpt_dataset(data, spec, false, {});
  CHECK(sample(*broken, 0) == std::vector<int32_t>{7, 8, 9});
  CHECK_THAT(error_of([&] { sample(*broken, 7); }),
             Contains("is corrupt: shuffle index 7 is 99") && Contains("so the indices are rebuilt"));
  write_npy(stem + "-shuffle_index.npy", "<u4", {7}, bad.data());
  CHECK_THAT(error_of([&] { GptDataset ds(data, spec); }),
             Contains("the shuffle index should be uint32 or int64 of shape (8,)"));
  const std::vector<int32_t> bad_doc = {0, 1, 2, 1, 2, 7};
  write_npy(stem + "-shuffle_index.npy", "<u4", {8}, bad.data());
  write_npy(stem + "-document_index.npy", "<i4", {6}, bad_doc.data());
  CHECK_THAT(error_of([&] { sample(*open_gpt_dataset(data, spec, false, {}), 6); }),
             Contains("document index 5 is sequence 7, outside the split [0, 3)"));
}

TEST_CASE("megatron: GPT dataset options a user can get wrong are refused", "[megatron]") {
  TempDir dir;
  write_toy(dir / "toy");
  const IndexedDataset data(dir / "toy");
  GptDatasetSpec spec = toy_spec(dir / "cache");
  spec.range = {true, 1, 1};
  CHECK_THAT(error_of([&] { build_gpt_dataset_cache(data, spec); }),
             Contains("split range [1, 1) holds no sequences"));
  spec = toy_spec(dir / "cache", uint64_t{1} << 32);
  CHECK_THAT(error_of([&] { build_gpt_dataset_cache(data, spec); }),
             Contains("data seed 4294967296 is out of range"));
  spec = toy_spec(dir / "cache");
  spec.seq_length = 0;
  CHECK_THAT(error_of([&] { build_gpt_dataset_cache(data, spec); }),
             Contains("seq_length must be at least 1"));
}

// ---------------------------------------------------------------- section 4: blending

TEST_CASE("megatron: blending order and component sizes match Megatron's golden values",
          "[megatron]") {
  std::vector<int16_t> which;
  std::vector<int64_t> index;
  build_blending_indices({0.7, 0.3}, 10, &which, &index);
  CHECK(which == std::vector<int16_t>{0, 1, 0, 0, 1, 0, 0, 1, 0, 0});
  CHECK(index == std::vector<int64_t>{0, 0, 1, 2, 1, 3, 4, 2, 5, 6});
  // Ties go to the lowest index.
  build_blending_indices({0.5, 0.5}, 4, &which, &index);
  CHECK(which == std::vector<int16_t>{0, 1, 0, 1});
  CHECK(blend_component_samples(10, 0.7) == 8);
  CHECK(blend_component_samples(10, 0.3) == 4);
  CHECK(blend_component_samples(1000, 0.25) == 252);
  CHECK(blend_component_samples(7, 1.0 / 3.0) == 4);
  CHECK(blend_component_samples(10, 0.0) == 0);
  CHECK(normalize_weights({7, 3}) == std::vector<double>{0.7, 0.3});
}

TEST_CASE("megatron: build_megatron_datasets with one corpus and with a blend of two",
          "[megatron]") {
  TempDir dir;
  // Corpus a: 40 documents of 5..16 tokens with ids < 100; corpus b: 30 documents, ids 100..
  for (int corpus = 0; corpus < 2; ++corpus) {
    IndexedDatasetBuilder builder(dir / (corpus == 0 ? "a" : "b"), IndexDType::U16);
    for (int d = 0; d < (corpus == 0 ? 40 : 30); ++d) {
      std::vector<int32_t> tokens(static_cast<size_t>(5 + (d * 7) % 12));
      for (size_t t = 0; t < tokens.size(); ++t)
        tokens[t] = static_cast<int32_t>(corpus * 100 + (d * 3 + static_cast<int>(t)) % 97);
      builder.add_document(tokens.data(), static_cast<int64_t>(tokens.size()));
    }
    builder.finalize();
  }
  MegatronDataOptions o;
  o.data_path = {{1.0, dir / "a"}};
  o.split = "90,10";
  o.seq_length = 8;
  o.train_samples = 50;
  o.valid_samples = 12;
  o.test_samples = 5;
  int barriers = 0;
  o.barrier = [&] { ++barriers; };
  MegatronDatasets one = build_megatron_datasets(o);
  CHECK(barriers == 1);
  REQUIRE(one.train);
  REQUIRE(one.valid);
  CHECK(one.test == nullptr);
  CHECK_THAT(one.description, Contains("test: none (its share of split \"90,10\" is 0)"));
  CHECK(one.max_token == 96);
  CHECK(one.max_token_file == dir / "a.bin");
  CHECK(std::filesystem::is_directory(dir / "index-cache"));
  const auto& train = dynamic_cast<const GptDataset&>(*one.train);
  CHECK(train.spec().num_samples == 50);  // exactly as requested: no blending surplus
  CHECK((train.spec().range.begin == 0 && train.spec().range.end == 36));
  CHECK(train.sample_tokens() == 9);
  const auto& valid = dynamic_cast<const GptDataset&>(*one.valid);
  CHECK((valid.spec().range.begin == 36 && valid.spec().range.end == 40));

  // Another rank loads what rank 0 built, and sees the same samples.
  o.build_indices = false;
  MegatronDatasets again = build_megatron_datasets(o);
  CHECK(barriers == 2);
  for (int64_t k = 0; k < 50; ++k) CHECK(sample(*again.train, k) == sample(*one.train, k));
  CHECK(again.max_token == 96);

  o.data_path = {{3.0, dir / "a"}, {1.0, dir / "b"}};
  o.build_indices = true;
  o.valid_samples = 0;
  MegatronDatasets two = build_megatron_datasets(o);
  CHECK(two.valid == nullptr);
  CHECK_THAT(two.description, Contains("valid: none (0 samples requested)"));
  CHECK(two.max_token == 196);
  CHECK(two.max_token_file == dir / "b.bin");
  const auto& blend = dynamic_cast<const BlendedDataset&>(*two.train);
  CHECK(blend.size() == 50);
  CHECK(blend.dataset(0).spec().num_samples == 39);  // ceil(ceil(37.5) * 1.005)
  CHECK(blend.dataset(1).spec().num_samples == 14);  // ceil(ceil(12.5) * 1.005)
  std::vector<int16_t> which;
  std::vector<int64_t> index;
  build_blending_indices({0.75, 0.25}, 50, &which, &index);
  int from_b = 0;
  for (int64_t k = 0; k < 50; ++k) {
    CHECK(blend.dataset_of(k) == which[static_cast<size_t>(k)]);
    const auto tokens = sample(blend, k);
    const auto i = static_cast<size_t>(k);
    CHECK(tokens == sample(blend.dataset(which[i]), index[i]));
    from_b += tokens[0] >= 100;
  }
  CHECK(from_b == 13);  // corpus b's samples, told apart by their ids: 0.25 * 50 rounded up

  o.split = "985,15";  // valid: a gets [round(39.4), 40), b [round(29.55), 30) = nothing
  o.valid_samples = 4;
  MegatronDatasets empty = build_megatron_datasets(o);
  CHECK(empty.valid == nullptr);
  CHECK_THAT(empty.description,
             Contains("valid: none (split \"985,15\" gives " + dir / "b" +
                      " no sequences: [30, 30) of its 30)"));

  o.split = "90,10,x";
  CHECK_THAT(error_of([&] { build_megatron_datasets(o); }), Contains("\"x\" is not a non-negative"));
  o.split = "90,10";
  o.data_path = {{1.0, dir / "missing"}};
  CHECK_THAT(error_of([&] { build_megatron_datasets(o); }), Contains("missing.idx"));
  o.data_path = {{-1.0, dir / "a"}};
  CHECK_THAT(error_of([&] { build_megatron_datasets(o); }), Contains("must be a finite number >= 0"));
  o.data_path = {};
  CHECK_THAT(error_of([&] { build_megatron_datasets(o); }), Contains("data_path is empty"));
}

// ---------------------------------------------------------------- parity with NumPy and Megatron

TEST_CASE("megatron: the shuffle and draws equal numpy.random.RandomState's", "[megatron]") {
  if (!have_numpy()) {
    WARN("skipped: " << kPython << " with numpy is not available");
    return;
  }
  TempDir dir;
  // Each line: seed, the two stage sizes a and n, then RandomState(seed)
  // shuffling arange(a) and arange(a, n), then 5 draws of randint(0, 2^33+5]
  // (numpy's masked 64-bit draw) and 5 of randint(0, 1000].
  const std::string script = R"(
import sys, numpy as np
for seed, a, n in [(1234, 1, 1), (1234, 2, 2), (0, 10, 10), (1234, 97, 97), (7, 1000, 1000),
                   (4294967295, 5000, 65537), (1234, 4, 8), (99, 300, 1000)]:
    rs = np.random.RandomState(seed)
    first = np.arange(a, dtype=np.uint32); rs.shuffle(first)
    second = np.arange(a, n, dtype=np.uint32); rs.shuffle(second)
    big = rs.randint(0, 2**33 + 6, size=5, dtype=np.int64)
    small = rs.randint(0, 1001, size=5, dtype=np.int64)
    print(seed, a, n, *first, *second, *big, *small)
)";
  spit(dir / "shuffle.py", script);
  int rc = 0;
  const std::string out = run_command(std::string(kPython) + " " + (dir / "shuffle.py"), &rc);
  REQUIRE(rc == 0);
  std::istringstream lines(out);
  int cases = 0;
  for (std::string line; std::getline(lines, line); ++cases) {
    std::istringstream in(line);
    uint64_t seed;
    int64_t a, n;
    in >> seed >> a >> n;
    INFO("seed " << seed << " a " << a << " n " << n);
    std::vector<int64_t> expected(static_cast<size_t>(n) + 10), ours(static_cast<size_t>(n));
    for (auto& v : expected) in >> v;
    REQUIRE(in);
    NumpyRandomState rng(static_cast<uint32_t>(seed));
    for (int64_t i = 0; i < n; ++i) ours[static_cast<size_t>(i)] = i;
    rng.shuffle(ours.data(), a);
    rng.shuffle(ours.data() + a, n - a);
    const uint64_t big = (uint64_t{1} << 33) + 5;
    for (int i = 0; i < 5; ++i) ours.push_back(static_cast<int64_t>(rng.interval(big)));
    for (int i = 0; i < 5; ++i) ours.push_back(static_cast<int64_t>(rng.interval(1000)));
    CHECK(ours == expected);
  }
  CHECK(cases == 8);
}

TEST_CASE("megatron: normalized weights equal numpy's, pairwise summation included", "[megatron]") {
  if (!have_numpy()) {
    WARN("skipped: " << kPython << " with numpy is not available");
    return;
  }
  TempDir dir;
  // Each line: n, n weights, the n weights normalized by numpy; sizes around
  // numpy's blocks of 8 and 128 (exact hex floats both ways).
  spit(dir / "norm.py", R"(
import numpy as np
for n in [1, 3, 7, 8, 9, 15, 16, 17, 100, 128, 129, 200, 300, 1000]:
    w = np.random.RandomState(n).uniform(0.001, 10.0, size=n)
    print(n, *[x.hex() for x in w.tolist()], *[x.hex() for x in (w / np.sum(w)).tolist()])
)");
  int rc = 0;
  const std::string out = run_command(std::string(kPython) + " " + (dir / "norm.py"), &rc);
  REQUIRE(rc == 0);
  std::istringstream lines(out);
  int cases = 0;
  for (std::string line; std::getline(lines, line); ++cases) {
    std::istringstream in(line);
    int n;
    in >> n;
    std::vector<double> w;
    std::string hex;
    for (int i = 0; i < n; ++i) {
      in >> hex;
      w.push_back(std::strtod(hex.c_str(), nullptr));
    }
    const std::vector<double> ours = normalize_weights(w);
    for (int i = 0; i < n; ++i) {
      in >> hex;
      INFO("n " << n << " i " << i);
      CHECK(ours[static_cast<size_t>(i)] == std::strtod(hex.c_str(), nullptr));
    }
  }
  CHECK(cases == 14);
}

TEST_CASE("megatron: indices and samples equal an independent Python model of Megatron's code",
          "[megatron]") {
  if (!have_numpy()) {
    WARN("skipped: " << kPython << " with numpy is not available");
    return;
  }
  TempDir dir;
  {  // 60 documents of 1..40 tokens (uint16 ids), some of two sequences
    IndexedDatasetBuilder builder(dir / "corpus", IndexDType::U16);
    uint32_t x = 12345;
    for (int d = 0; d < 60; ++d) {
      for (int part = 0; part < (d % 7 == 3 ? 2 : 1); ++part) {
        x = x * 1103515245u + 12345u;
        std::vector<int32_t> tokens(1 + (x >> 16) % 40);
        for (auto& t : tokens) t = static_cast<int32_t>((x = x * 1103515245u + 12345u) >> 17);
        builder.add_sequence(tokens.data(), static_cast<int64_t>(tokens.size()));
      }
      builder.end_document();
    }
    builder.finalize();
  }
  auto data = std::make_shared<const IndexedDataset>(dir / "corpus");
  struct Case {
    int64_t begin, end, samples, seq_length;
    uint64_t seed;
  };
  const Case cases[] = {{0, 60, 10, 8, 1234},   {0, 66, 400, 16, 1234}, {5, 50, 260, 7, 3},
                        {10, 20, 45, 4, 99},    {0, 66, 25, 32, 0},    {30, 66, 120, 5, 4242}};
  std::string manifest;
  int separate = 0, multi = 0, single = 0;
  for (size_t i = 0; i < std::size(cases); ++i) {
    const Case& c = cases[i];
    GptDatasetSpec spec;
    spec.cache_dir = dir / "cache";
    spec.range = {true, c.begin, c.end};
    spec.num_samples = c.samples;
    spec.seq_length = c.seq_length;
    spec.seed = c.seed;
    auto ds = open_gpt_dataset(data, spec, true, {});
    separate += ds->plan().separate_final_epoch;
    multi += ds->plan().num_epochs > 1 && !ds->plan().separate_final_epoch;
    single += ds->plan().num_epochs == 1;
    std::vector<int32_t> samples;
    for (int64_t k = 0; k < ds->size(); ++k) {
      const auto s = sample(*ds, k);
      samples.insert(samples.end(), s.begin(), s.end());
    }
    const std::string samples_path = dir / ("samples" + std::to_string(i) + ".npy");
    write_npy(samples_path, "<i4", {ds->size(), c.seq_length + 1}, samples.data());
    manifest += str(ds->cache_stem(), " ", samples_path, " ", c.begin, " ", c.end, " ", c.samples,
                    " ", c.seq_length, " ", c.seed, "\n");
  }
  CHECK(separate >= 1);  // every branch of the epoch rule is exercised
  CHECK(multi >= 1);
  CHECK(single >= 1);
  spit(dir / "manifest.txt", manifest);
  // Written from the specification, independently of the C++ code.
  spit(dir / "megatron_model.py", R"(
import sys, numpy as np
prefix, manifest = sys.argv[1], sys.argv[2]
raw = open(prefix + '.idx', 'rb').read()
S = int.from_bytes(raw[18:26], 'little')
lengths = np.frombuffer(raw, dtype='<i4', count=S, offset=34).astype(np.int64)
pointers = np.frombuffer(raw, dtype='<i8', count=S, offset=34 + 4 * S)
tokens = np.fromfile(prefix + '.bin', dtype='<u2')

def shuffled_epochs(begin, end, epochs, rs):
    ids = np.tile(np.arange(begin, end, dtype=np.int32), epochs)
    rs.shuffle(ids)
    return ids

def megatron(begin, end, ns, s, seed):
    T = int(lengths[begin:end].sum())
    E = 1
    while E * T < ns * s + 1:
        E += 1
    separate, sans = False, 0
    if E > 1:
        sans = ((E - 1) * T - 1) // s
        separate = (ns - sans) < int(0.80 * ((T - 1) // s))
    rs = np.random.RandomState(seed)
    if separate:
        doc = np.concatenate([shuffled_epochs(begin, end, E - 1, rs),
                              shuffled_epochs(begin, end, 1, rs)])
    else:
        doc = shuffled_epochs(begin, end, E, rs)
    rows = (E * T - 1) // s + 1
    sample = np.zeros((rows, 2), dtype=np.int64)
    d, off = 0, 0
    for r in range(1, rows):
        need = s + 1
        while need != 0:
            left = lengths[doc[d]] - off
            need -= left
            if need <= 0:
                off += need + left - 1
                need = 0
            elif d == len(doc) - 1:
                off = lengths[doc[d]] - 1
                break
            else:
                d, off = d + 1, 0
        sample[r] = (d, off)
    n = rows - 1
    first = sans if separate else n
    order = np.arange(first, dtype=np.uint32)
    rs.shuffle(order)
    if first < n:
        rest = np.arange(first, n, dtype=np.uint32)
        rs.shuffle(rest)
        order = np.concatenate([order, rest])
    return doc, sample, order

def text(seq, a, b):
    start = pointers[seq] // 2
    return tokens[start + a:start + b]

bad = 0
for line in open(manifest):
    stem, samples_path, begin, end, ns, s, seed = line.split()
    doc, sample, order = megatron(int(begin), int(end), int(ns), int(s), int(seed))
    got_doc = np.load(stem + '-document_index.npy')
    got_sample = np.load(stem + '-sample_index.npy')
    got_order = np.load(stem + '-shuffle_index.npy')
    ok = (got_doc.dtype == np.int32 and np.array_equal(got_doc, doc) and
          np.array_equal(got_sample, sample) and got_order.dtype == np.uint32 and
          np.array_equal(got_order, order))
    got = np.load(samples_path)
    for k in range(len(order)):
        r = order[k]
        (d0, o0), (d1, o1) = sample[r], sample[r + 1]
        if d0 == d1:
            want = text(doc[d0], o0, o1 + 1)
        else:
            parts = [text(doc[d0], o0, lengths[doc[d0]])]
            parts += [text(doc[d], 0, lengths[doc[d]]) for d in range(d0 + 1, d1)]
            parts.append(text(doc[d1], 0, o1 + 1))
            want = np.concatenate(parts)
        ok = ok and np.array_equal(got[k], want)
    print(stem, 'OK' if ok else 'MISMATCH', len(order))
    bad += not ok
sys.exit(1 if bad else 0)
)");
  int rc = 0;
  const std::string out = run_command(std::string(kPython) + " " + (dir / "megatron_model.py") +
                                          " " + (dir / "corpus") + " " + (dir / "manifest.txt"),
                                      &rc);
  INFO(out);
  CHECK(rc == 0);
  std::istringstream lines(out);
  int ok = 0;
  for (std::string line; std::getline(lines, line);) ok += line.find(" OK ") != std::string::npos;
  CHECK(ok == static_cast<int>(std::size(cases)));
}

TEST_CASE("megatron: a dataset written by NumPy the way Megatron's writer does is read back",
          "[megatron]") {
  if (!have_numpy()) {
    WARN("skipped: " << kPython << " with numpy is not available");
    return;
  }
  TempDir dir;
  // int32 tokens; document 0 is two sequences, document 1 one.
  spit(dir / "write.py", R"(
import struct, sys, numpy as np
prefix = sys.argv[1]
seqs = [np.array([70000, 1, 2], dtype=np.int32), np.array([5], dtype=np.int32),
        np.array([9, 8, 7, 6], dtype=np.int32)]
with open(prefix + '.bin', 'wb') as f:
    for s in seqs:
        f.write(s.tobytes(order='C'))
lengths = np.array([len(s) for s in seqs], dtype=np.int32)
pointers = np.concatenate([[0], np.cumsum(lengths * 4)[:-1]]).astype(np.int64)
docs = np.array([0, 2, 3], dtype=np.int64)
with open(prefix + '.idx', 'wb') as f:
    f.write(b'MMIDIDX\x00\x00')
    f.write(struct.pack('<Q', 1))
    f.write(struct.pack('<B', 4))
    f.write(struct.pack('<Q', len(lengths)))
    f.write(struct.pack('<Q', len(docs)))
    f.write(lengths.tobytes(order='C'))
    f.write(pointers.tobytes(order='C'))
    f.write(docs.tobytes(order='C'))
)");
  int rc = 0;
  run_command(std::string(kPython) + " " + (dir / "write.py") + " " + (dir / "py"), &rc);
  REQUIRE(rc == 0);
  IndexedDataset data(dir / "py");
  CHECK(data.dtype() == IndexDType::I32);
  CHECK(data.num_sequences() == 3);
  CHECK(data.num_documents() == 2);
  CHECK(data.document_indices() == std::vector<int64_t>{0, 2, 3});
  CHECK(read_all(data, 0) == std::vector<int32_t>{70000, 1, 2});
  CHECK(read_all(data, 1) == std::vector<int32_t>{5});
  CHECK(read_all(data, 2) == std::vector<int32_t>{9, 8, 7, 6});
  CHECK(data.max_token() == 70000);
  // deco's writer produces the same bytes from the same sequences.
  {
    IndexedDatasetBuilder builder(dir / "ours", IndexDType::I32);
    for (int64_t i = 0; i < 3; ++i) {
      const auto tokens = read_all(data, i);
      builder.add_sequence(tokens.data(), static_cast<int64_t>(tokens.size()));
      if (i != 0) builder.end_document();
    }
    builder.finalize();
  }
  CHECK(slurp(dir / "ours.idx") == slurp(dir / "py.idx"));
  CHECK(slurp(dir / "ours.bin") == slurp(dir / "py.bin"));
}
