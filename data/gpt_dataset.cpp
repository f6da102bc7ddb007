#include "data/gpt_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "core/error.h"
#include "core/file_io.h"
#include "data/npy.h"

// Megatron's float64 arithmetic rounds each product before it is added to
// or subtracted from anything; an FMA, which GCC forms by itself when -march
// allows, rounds once and can flip a near-tie (which dataset a blend picks).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace deco {
namespace {

// ---------------------------------------------------------------- numpy.sum

// numpy's pairwise summation (the float64 add reduction), block of 128 and
// 8 partial sums; it rounds differently from a left-to-right sum once there
// are 8 or more terms.
double pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double sum = -0.0;
    for (int64_t i = 0; i < n; ++i) sum += a[i];
    return sum;
  }
  if (n <= 128) {
    double r[8];
    for (int k = 0; k < 8; ++k) r[k] = a[k];
    int64_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (int k = 0; k < 8; ++k) r[k] += a[i + k];
    double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) sum += a[i];
    return sum;
  }
  int64_t half = n / 2;
  half -= half % 8;
  return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

// ---------------------------------------------------------------- splits

// One entry of a split string: digits with at most one '.', like the
// numbers Megatron's pattern [.0-9]+ picks out.
bool parse_split_number(const std::string& text, double* out) {
  int digits = 0, dots = 0;
  for (char c : text) {
    if (c >= '0' && c <= '9') ++digits;
    else if (c == '.') ++dots;
    else return false;
  }
  if (digits == 0 || dots > 1) return false;
  *out = std::strtod(text.c_str(), nullptr);
  return std::isfinite(*out);
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// ---------------------------------------------------------------- index construction

// The split's sequences, tiled over `epochs` and shuffled in place.
void tile_and_shuffle(int32_t* out, int64_t begin, int64_t count, int64_t epochs,
                      NumpyRandomState& rng) {
  for (int64_t e = 0; e < epochs; ++e)
    for (int64_t i = 0; i < count; ++i) out[e * count + i] = static_cast<int32_t>(begin + i);
  rng.shuffle(out, epochs * count);
}

// Section 3.3a: one shuffle of all epochs, or the first E-1 epochs and then
// the last epoch on its own.
std::vector<int32_t> build_document_index(const SplitRange& range, const GptEpochPlan& plan,
                                          NumpyRandomState& rng) {
  const int64_t count = range.size(), epochs = plan.num_epochs;
  std::vector<int32_t> doc(static_cast<size_t>(epochs * count));
  if (!plan.separate_final_epoch) {
    tile_and_shuffle(doc.data(), range.begin, count, epochs, rng);
  } else {
    tile_and_shuffle(doc.data(), range.begin, count, epochs - 1, rng);
    tile_and_shuffle(doc.data() + (epochs - 1) * count, range.begin, count, 1, rng);
  }
  return doc;
}

// Section 3.5 (Megatron's helpers.cpp build_sample_idx with the extra
// token): row r is where sample r starts, as (position in the document
// index, token offset); sample r ends at row r+1 inclusive.
template <typename T>
std::vector<T> build_sample_index(const IndexedDataset& data, const std::vector<int32_t>& doc,
                                  const GptEpochPlan& plan, int64_t seq_length) {
  std::vector<T> rows(static_cast<size_t>(2 * plan.num_rows));
  const auto last = static_cast<int64_t>(doc.size()) - 1;
  int64_t d = 0, offset = 0;
  rows[0] = 0;
  rows[1] = 0;
  for (int64_t r = 1; r < plan.num_rows; ++r) {
    int64_t remaining = seq_length + 1;
    while (remaining != 0) {
      const int64_t length = data.sequence_length(doc[static_cast<size_t>(d)]) - offset;
      remaining -= length;
      if (remaining <= 0) {
        offset += remaining + length - 1;
        remaining = 0;
      } else if (d == last) {
        // Only reachable when the last sample would be partial, which the
        // row count excludes; kept for parity with Megatron's loop.
        offset = data.sequence_length(doc[static_cast<size_t>(d)]) - 1;
        break;
      } else {
        ++d;
        offset = 0;
      }
    }
    rows[static_cast<size_t>(2 * r)] = static_cast<T>(d);
    rows[static_cast<size_t>(2 * r + 1)] = static_cast<T>(offset);
  }
  return rows;
}

// Section 3.3c: arange(n) shuffled, or [0, sans) and [sans, n) shuffled
// separately when the final epoch is separate.
template <typename T>
std::vector<T> build_shuffle_index(int64_t first, int64_t total, NumpyRandomState& rng) {
  std::vector<T> out(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) out[static_cast<size_t>(i)] = static_cast<T>(i);
  rng.shuffle(out.data(), first);
  rng.shuffle(out.data() + first, total - first);
  return out;
}

// ---------------------------------------------------------------- cache files

struct SplitStats {
  int64_t tokens = 0;
  uint64_t fingerprint = 0;  // FNV-1a 64 of the split's lengths as little-endian int32
};

SplitStats split_stats(const IndexedDataset& data, const SplitRange& range) {
  SplitStats stats;
  stats.fingerprint = fnv1a64(nullptr, 0);
  for (int64_t i = range.begin; i < range.end; ++i) {
    const int32_t length = data.sequence_length(i);
    stats.tokens += length;
    stats.fingerprint = fnv1a64(&length, sizeof length, stats.fingerprint);
  }
  return stats;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string description_path(const std::string& stem) { return stem + "-description.json"; }

// Every spec value a user can get wrong, checked before any work.
void validate_spec(const IndexedDataset& data, const GptDatasetSpec& spec) {
  const std::string& p = data.prefix();
  DECO_ASSERT(spec.range.present && spec.range.begin >= 0 && spec.range.begin <= spec.range.end &&
                  spec.range.end <= data.num_sequences(),
              "split range [", spec.range.begin, ", ", spec.range.end, ") of ", data.num_sequences());
  if (spec.range.size() == 0)
    fail(p, ": the split range [", spec.range.begin, ", ", spec.range.end, ") holds no sequences; "
            "give this split a larger share or use a larger corpus");
  if (spec.seq_length < 1)
    fail(p, ": seq_length must be at least 1 for a GPT dataset, not ", spec.seq_length);
  if (spec.num_samples < 0 || spec.num_samples > (int64_t{1} << 62) / spec.seq_length)
    fail(p, ": cannot build ", spec.num_samples, " samples of length ", spec.seq_length,
         "; the number of samples must be in [0, 2^62 / seq_length]");
  if (spec.seed > 0xFFFFFFFFull)
    fail("data seed ", spec.seed, " is out of range: numpy.random.RandomState, whose order deco "
         "reproduces, takes seeds 0 .. 2^32-1");
}

}  // namespace

// ---------------------------------------------------------------- public helpers

uint64_t fnv1a64(const void* bytes, size_t size, uint64_t hash) {
  const auto* p = static_cast<const uint8_t*>(bytes);
  for (size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 0x100000001B3ull;
  return hash;
}

std::vector<double> normalize_weights(const std::vector<double>& weights) {
  // numpy's add reduction starts from the identity 0.0 and adds the
  // pairwise sum of all elements.
  const double total = 0.0 + pairwise_sum(weights.data(), static_cast<int64_t>(weights.size()));
  std::vector<double> out(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) out[i] = weights[i] / total;
  return out;
}

std::array<double, 3> parse_split(const std::string& split) {
  std::vector<double> values;
  size_t start = 0;
  while (true) {
    const size_t sep = split.find_first_of(",/", start);
    const std::string item = trim(split.substr(start, sep == std::string::npos ? sep : sep - start));
    double v = 0.0;
    if (!parse_split_number(item, &v))
      fail("split \"", split, "\": \"", item, "\" is not a non-negative number; write 1 to 3 "
           "shares for train, valid and test separated by ',' or '/', e.g. \"969,30,1\"");
    values.push_back(v);
    if (sep == std::string::npos) break;
    start = sep + 1;
  }
  if (values.size() > 3)
    fail("split \"", split, "\" has ", values.size(), " entries; write at most 3 (train, valid, "
         "test), e.g. \"969,30,1\"");
  values.resize(3, 0.0);
  if (values[0] + values[1] + values[2] <= 0.0)
    fail("split \"", split, "\" gives every split a share of 0; give at least one a positive "
         "share, e.g. \"969,30,1\"");
  const std::vector<double> w = normalize_weights(values);
  return {w[0], w[1], w[2]};
}

std::array<double, 4> split_bookends(const std::array<double, 3>& w) {
  std::array<double, 4> b{0.0, 0.0, 0.0, 0.0};
  for (int i = 0; i < 3; ++i) b[i + 1] = b[i] + w[i];
  return b;
}

std::array<SplitRange, 3> split_sequence_ranges(const std::string& split, int64_t num_sequences) {
  const std::array<double, 4> b = split_bookends(parse_split(split));
  const auto n = static_cast<double>(num_sequences);
  std::array<SplitRange, 3> ranges;
  for (int i = 0; i < 3; ++i) {
    // Megatron drops a split whose bookends coincide, i.e. whose weight is 0.
    ranges[i].present = b[i + 1] - b[i] != 0.0;
    if (!ranges[i].present) continue;
    // nearbyint in the default rounding mode rounds half to even, as Python's round().
    ranges[i].begin = static_cast<int64_t>(std::nearbyint(b[i] * n));
    ranges[i].end = static_cast<int64_t>(std::nearbyint(b[i + 1] * n));
  }
  return ranges;
}

uint64_t NumpyRandomState::interval(uint64_t max) {
  if (max == 0) return 0;
  uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  uint64_t value;
  if (max <= 0xFFFFFFFFull) {
    do value = static_cast<uint64_t>(mt_()) & mask;
    while (value > max);
  } else {
    do {
      const uint64_t high = mt_();
      value = ((high << 32) | static_cast<uint64_t>(mt_())) & mask;
    } while (value > max);
  }
  return value;
}

GptEpochPlan plan_gpt_epochs(int64_t tokens_per_epoch, int64_t num_samples, int64_t seq_length) {
  DECO_ASSERT(tokens_per_epoch > 0 && num_samples >= 0 && seq_length > 0, "T ", tokens_per_epoch,
              " Ns ", num_samples, " s ", seq_length);
  GptEpochPlan plan;
  const int64_t t = tokens_per_epoch, s = seq_length;
  plan.tokens_per_epoch = t;
  const int64_t needed = num_samples * s + 1;  // the extra token closes the last sample
  plan.num_epochs = std::max<int64_t>(1, (needed + t - 1) / t);
  plan.samples_per_epoch = (t - 1) / s;
  if (plan.num_epochs > 1) {
    plan.samples_sans_final_epoch = ((plan.num_epochs - 1) * t - 1) / s;
    const int64_t from_final_epoch = num_samples - plan.samples_sans_final_epoch;
    // Python's int(0.80 * per): the product in float64, truncated.
    const auto threshold = static_cast<int64_t>(0.80 * static_cast<double>(plan.samples_per_epoch));
    plan.separate_final_epoch = from_final_epoch < threshold;
  }
  plan.num_rows = (plan.num_epochs * t - 1) / s + 1;
  return plan;
}

// ---------------------------------------------------------------- MappedNpy

namespace {

// The value text after `'key':` in a .npy header dict, up to the next
// top-level ',' or '}'.
std::string header_value(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) return "";
  size_t i = at + key.size() + 3, depth = 0;
  const size_t start = i;
  for (; i < header.size(); ++i) {
    const char c = header[i];
    if (c == '(') ++depth;
    else if (c == ')') --depth;
    else if ((c == ',' || c == '}') && depth == 0) break;
  }
  return trim(header.substr(start, i - start));
}

bool parse_shape(const std::string& text, std::vector<int64_t>* shape) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') return false;
  shape->clear();
  std::string item;
  for (size_t i = 1; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ',' || c == ')') {
      item = trim(item);
      if (!item.empty()) {
        if (item.find_first_not_of("0123456789") != std::string::npos || item.size() > 18)
          return false;
        shape->push_back(std::stoll(item));
      }
      item.clear();
    } else {
      item += c;
    }
  }
  return true;
}

}  // namespace

MappedNpy::MappedNpy(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size < 10) {
    ::close(fd);
    fail(path, " is not a .npy file (too short)");
  }
  map_size_ = static_cast<size_t>(st.st_size);
  void* p = ::mmap(nullptr, map_size_, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot memory-map ", path, ": ", std::strerror(err));
  map_ = static_cast<const uint8_t*>(p);
  try {
    if (std::memcmp(map_, "\x93NUMPY", 6) != 0 || map_[6] < 1 || map_[6] > 3 || map_[7] != 0)
      fail(path, " is not a NumPy .npy file of version 1.0, 2.0 or 3.0");
    const size_t len_bytes = map_[6] == 1 ? 2 : 4;
    size_t header_len = 0;
    for (size_t i = 0; i < len_bytes; ++i) header_len |= size_t{map_[8 + i]} << (8 * i);
    const size_t data_at = 8 + len_bytes + header_len;
    if (data_at > map_size_) fail(path, " is truncated inside its .npy header");
    const std::string header(reinterpret_cast<const char*>(map_) + 8 + len_bytes, header_len);
    descr_ = header_value(header, "descr");
    if (descr_.size() >= 2) descr_ = descr_.substr(1, descr_.size() - 2);  // strip the quotes
    if (descr_ == "<i4") kind_ = Kind::I4, itemsize_ = 4;
    else if (descr_ == "<u4") kind_ = Kind::U4, itemsize_ = 4;
    else if (descr_ == "<i8") kind_ = Kind::I8, itemsize_ = 8;
    else fail(path, ": dtype '", descr_, "' is not one of the index dtypes <i4, <u4, <i8");
    if (!parse_shape(header_value(header, "shape"), &shape_))
      fail(path, ": the .npy header has no readable shape");
    int long_dims = 0;
    for (int64_t d : shape_) long_dims += d > 1;
    if (header_value(header, "fortran_order") != "False" && long_dims > 1)
      fail(path, ": the array is in Fortran order; index arrays are C-ordered");
    const uint64_t bytes = static_cast<uint64_t>(numel()) * itemsize_;
    if (bytes != map_size_ - data_at)
      fail(path, ": the .npy header describes ", bytes, " bytes of data but ", map_size_ - data_at,
           " follow it; the file is truncated or corrupt");
    data_ = map_ + data_at;
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    throw;
  }
}

MappedNpy::~MappedNpy() { ::munmap(const_cast<uint8_t*>(map_), map_size_); }

int64_t MappedNpy::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

// ---------------------------------------------------------------- cache

namespace {

// What a cache is keyed by, computed in one pass over the split's lengths.
struct CacheInfo {
  SplitStats stats;
  std::string description, stem;
};

CacheInfo cache_info(const IndexedDataset& data, const GptDatasetSpec& spec) {
  CacheInfo info;
  info.stats = split_stats(data, spec.range);
  const std::string prefix =
      std::filesystem::absolute(std::filesystem::path(data.prefix())).lexically_normal().string();
  info.description =
      str("{\"format\": \"deco Megatron GPTDataset indices 1\", \"prefix\": ", json_string(prefix),
          ", \"sequences_in_file\": ", data.num_sequences(), ", \"split_begin\": ",
          spec.range.begin, ", \"split_end\": ", spec.range.end, ", \"split_tokens\": ",
          info.stats.tokens, ", \"split_lengths_fnv1a64\": \"", hex64(info.stats.fingerprint),
          "\", \"num_samples\": ", spec.num_samples, ", \"seq_length\": ", spec.seq_length,
          ", \"seed\": ", spec.seed, ", \"add_extra_token\": true}\n");
  const std::string dir = spec.cache_dir.empty() ? "." : spec.cache_dir;
  info.stem = dir + "/" + hex64(fnv1a64(info.description.data(), info.description.size())) + "-gpt";
  return info;
}

}  // namespace

std::string gpt_cache_description(const IndexedDataset& data, const GptDatasetSpec& spec) {
  return cache_info(data, spec).description;
}

std::string gpt_cache_stem(const IndexedDataset& data, const GptDatasetSpec& spec) {
  return cache_info(data, spec).stem;
}

bool build_gpt_dataset_cache(const IndexedDataset& data, const GptDatasetSpec& spec) {
  validate_spec(data, spec);
  const CacheInfo info = cache_info(data, spec);
  const std::string& stem = info.stem;
  if (read_text(description_path(stem)) == info.description &&
      exists(stem + "-document_index.npy") &&
      exists(stem + "-sample_index.npy") && exists(stem + "-shuffle_index.npy"))
    return false;

  if (!spec.cache_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(spec.cache_dir, ec);
    if (ec)
      fail("cannot create the index cache directory ", spec.cache_dir, ": ", ec.message(),
           "; choose a writable cache directory");
  }
  const GptEpochPlan plan = plan_gpt_epochs(info.stats.tokens, spec.num_samples, spec.seq_length);
  NumpyRandomState rng(static_cast<uint32_t>(spec.seed));
  const std::vector<int32_t> doc = build_document_index(spec.range, plan, rng);
  write_npy(stem + "-document_index.npy", "<i4", {static_cast<int64_t>(doc.size())}, doc.data());

  // Positions in the document index must fit; offsets always do (lengths are int32).
  if (static_cast<int64_t>(doc.size()) <= std::numeric_limits<int32_t>::max()) {
    const auto rows = build_sample_index<int32_t>(data, doc, plan, spec.seq_length);
    write_npy(stem + "-sample_index.npy", "<i4", {plan.num_rows, 2}, rows.data());
  } else {
    const auto rows = build_sample_index<int64_t>(data, doc, plan, spec.seq_length);
    write_npy(stem + "-sample_index.npy", "<i8", {plan.num_rows, 2}, rows.data());
  }

  const int64_t total = plan.num_rows - 1;
  const int64_t first = plan.separate_final_epoch ? plan.samples_sans_final_epoch : total;
  if (total < int64_t{0xFFFFFFFF} - 1) {  // Megatron's switch from uint32 to int64
    const auto shuffle = build_shuffle_index<uint32_t>(first, total, rng);
    write_npy(stem + "-shuffle_index.npy", "<u4", {total}, shuffle.data());
  } else {
    const auto shuffle = build_shuffle_index<int64_t>(first, total, rng);
    write_npy(stem + "-shuffle_index.npy", "<i8", {total}, shuffle.data());
  }
  write_file_atomic(description_path(stem), info.description);
  return true;
}

// ---------------------------------------------------------------- GptDataset

GptDataset::GptDataset(std::shared_ptr<const IndexedDataset> data, const GptDatasetSpec& spec)
    : data_(std::move(data)), spec_(spec) {
  validate_spec(*data_, spec_);
  const CacheInfo info = cache_info(*data_, spec_);
  stem_ = info.stem;
  plan_ = plan_gpt_epochs(info.stats.tokens, spec_.num_samples, spec_.seq_length);
  if (read_text(description_path(stem_)) != info.description)
    fail("the index cache ", description_path(stem_), " for ", data_->prefix(), " is missing or "
         "describes another dataset; the indices must be built first (by the rank that builds "
         "them, before the others load)");
  document_index_ = std::make_unique<MappedNpy>(stem_ + "-document_index.npy");
  sample_index_ = std::make_unique<MappedNpy>(stem_ + "-sample_index.npy");
  shuffle_index_ = std::make_unique<MappedNpy>(stem_ + "-shuffle_index.npy");
  check_arrays();
}

// Shapes and dtypes against the plan; values are checked where read.
void GptDataset::check_arrays() const {
  const int64_t docs = plan_.num_epochs * spec_.range.size();
  if (document_index_->descr() != "<i4" || document_index_->shape() != std::vector<int64_t>{docs})
    corrupt(str("the document index should be int32 of shape (", docs, ",)"));
  const std::string& rows = sample_index_->descr();
  if ((rows != "<i4" && rows != "<i8") ||
      sample_index_->shape() != std::vector<int64_t>{plan_.num_rows, 2})
    corrupt(str("the sample index should be int32 or int64 of shape (", plan_.num_rows, ", 2)"));
  const std::string& order = shuffle_index_->descr();
  if ((order != "<u4" && order != "<i8") || shuffle_index_->shape() != std::vector<int64_t>{size()})
    corrupt(str("the shuffle index should be uint32 or int64 of shape (", size(), ",)"));
}

void GptDataset::corrupt(const std::string& what) const {
  fail("the index cache ", stem_, "-*.npy is corrupt: ", what, "; delete ", stem_,
       "-* so the indices are rebuilt");
}

void GptDataset::read(int64_t index, int32_t* out) const {
  if (index < 0 || index >= size())
    fail(describe(), ": sample ", index, " does not exist; the dataset has ", size(), " samples");
  const int64_t row = shuffle_index(index);
  if (row < 0 || row >= size()) corrupt(str("shuffle index ", index, " is ", row));
  const auto [d0, o0] = sample_index(row);
  const auto [d1, o1] = sample_index(row + 1);
  const int64_t docs = document_index_size();
  if (d0 < 0 || d1 < d0 || d1 >= docs)
    corrupt(str("sample index rows ", row, " and ", row + 1, " are (", d0, ", ", o0, ") and (", d1,
                ", ", o1, ")"));
  // Tokens [o0, o1] inclusive across documents d0..d1: [o0:] of the first,
  // whole middle ones, [:o1+1] of the last.
  const int64_t want = sample_tokens();
  int64_t written = 0;
  for (int64_t d = d0; d <= d1; ++d) {
    const int64_t sequence = document_index(d);
    if (sequence < spec_.range.begin || sequence >= spec_.range.end)
      corrupt(str("document index ", d, " is sequence ", sequence, ", outside the split [",
                  spec_.range.begin, ", ", spec_.range.end, ")"));
    const int64_t length = data_->sequence_length(sequence);
    const int64_t begin = d == d0 ? o0 : 0;
    const int64_t end = d == d1 ? o1 + 1 : length;
    if (begin < 0 || end < begin || end > length || written + (end - begin) > want)
      corrupt(str("sample index rows ", row, " and ", row + 1, " select tokens outside sequence ",
                  sequence));
    data_->read(sequence, begin, end - begin, out + written);
    written += end - begin;
  }
  if (written != want)
    corrupt(str("sample index rows ", row, " and ", row + 1, " select ", written, " tokens, not ",
                want));
}

std::string GptDataset::describe() const {
  return str("Megatron GPT dataset ", data_->prefix(), " sequences [", spec_.range.begin, ", ",
             spec_.range.end, ") (", plan_.tokens_per_epoch, " tokens), ", size(),
             size() == 1 ? " sample of " : " samples of ",
             sample_tokens(), " tokens over ", plan_.num_epochs,
             plan_.num_epochs == 1 ? " epoch" : " epochs",
             plan_.separate_final_epoch ? " (last shuffled separately)" : "", ", seed ", spec_.seed);
}

std::unique_ptr<GptDataset> open_gpt_dataset(std::shared_ptr<const IndexedDataset> data,
                                             const GptDatasetSpec& spec, bool build,
                                             const std::function<void()>& barrier) {
  if (build) build_gpt_dataset_cache(*data, spec);
  if (barrier) barrier();
  return std::make_unique<GptDataset>(std::move(data), spec);
}

}  // namespace deco
