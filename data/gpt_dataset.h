// Megatron-LM's GPT dataset over one indexed dataset: which sequences form
// each split, and which tokens form sample k, reproduced exactly (same
// tokens, same order for the same seed, split and sequence length).
// Specification: ../shared/docs/megatron-data.md sections 2, 3 and 6;
// docs/data.md for users.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "data/indexed_dataset.h"
#include "data/sample_source.h"

namespace deco {

// ---------------------------------------------------------------- weights and splits

// Megatron's normalize(): w / numpy.sum(w), with numpy's pairwise summation
// so that the last bit agrees (it decides ties in blending and split edges).
std::vector<double> normalize_weights(const std::vector<double>& weights);

// Parses a split string of 1 to 3 non-negative numbers separated by ',' or
// '/' ("969,30,1", "99990/8/2", "1"); missing entries are 0. Returns the
// weights normalized to sum 1. Throws deco::Error for anything else.
std::array<double, 3> parse_split(const std::string& split);

// The sequence ids [begin, end) a split takes. `present` is false where the
// split's weight is 0 (Megatron builds no dataset); a present split may
// still be empty when rounding gives it no sequences.
struct SplitRange {
  bool present = false;
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Cumulative bookends {0, w0, w0+w1, w0+w1+w2} of normalized weights, summed
// left to right as Megatron does.
std::array<double, 4> split_bookends(const std::array<double, 3>& weights);

// Split i of N sequences: [round(b_i*N), round(b_{i+1}*N)) with Python's
// round (half to even).
std::array<SplitRange, 3> split_sequence_ranges(const std::string& split, int64_t num_sequences);

// ---------------------------------------------------------------- numpy's shuffle

// numpy.random.RandomState(seed).shuffle: MT19937 seeded like std::mt19937,
// and the legacy Fisher-Yates with masked rejection draws. std::shuffle and
// uniform_int_distribution give different orders.
class NumpyRandomState {
 public:
  explicit NumpyRandomState(uint32_t seed) : mt_(seed) {}

  // Uniform in [0, max]: numpy's random_interval. Draws 32 bits while max
  // fits them, else 64 bits made of two draws, the first one high.
  uint64_t interval(uint64_t max);

  template <typename T>
  void shuffle(T* data, int64_t n) {
    for (int64_t i = n - 1; i >= 1; --i) {
      const auto j = static_cast<int64_t>(interval(static_cast<uint64_t>(i)));
      std::swap(data[i], data[j]);
    }
  }

 private:
  std::mt19937 mt_;
};

// ---------------------------------------------------------------- epochs

// Section 3.1-3.2 of the specification for one GPT dataset.
struct GptEpochPlan {
  int64_t tokens_per_epoch = 0;          // T: tokens of the split's sequences
  int64_t num_epochs = 0;                // E: smallest E >= 1 with E*T >= Ns*s + 1
  bool separate_final_epoch = false;     // the last epoch is shuffled on its own
  int64_t samples_sans_final_epoch = 0;  // ((E-1)*T - 1) // s (0 when E == 1)
  int64_t samples_per_epoch = 0;         // (T - 1) // s
  int64_t num_rows = 0;                  // rows of the sample index: (E*T - 1) // s + 1
};
GptEpochPlan plan_gpt_epochs(int64_t tokens_per_epoch, int64_t num_samples, int64_t seq_length);

// ---------------------------------------------------------------- cached .npy arrays

// A .npy file mapped read-only: the index arrays of a large corpus are
// paged in on demand instead of read whole by every rank.
class MappedNpy {
 public:
  explicit MappedNpy(const std::string& path);
  ~MappedNpy();
  MappedNpy(const MappedNpy&) = delete;
  MappedNpy& operator=(const MappedNpy&) = delete;

  const std::string& path() const { return path_; }
  const std::string& descr() const { return descr_; }  // e.g. "<i4"
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const;
  // Element i (flat, C order) of an integer array, widened to int64.
  int64_t at(int64_t i) const {
    int64_t v = 0;
    const uint8_t* p = data_ + static_cast<size_t>(i) * itemsize_;
    switch (kind_) {
      case Kind::I4: { int32_t x; std::memcpy(&x, p, 4); v = x; break; }
      case Kind::U4: { uint32_t x; std::memcpy(&x, p, 4); v = x; break; }
      case Kind::I8: std::memcpy(&v, p, 8); break;
    }
    return v;
  }

 private:
  enum class Kind { I4, U4, I8 };
  std::string path_, descr_;
  std::vector<int64_t> shape_;
  Kind kind_ = Kind::I8;
  size_t itemsize_ = 8;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
};

// ---------------------------------------------------------------- the dataset

struct GptDatasetSpec {
  std::string cache_dir;    // where the index arrays are cached (created; empty: ".")
  SplitRange range;         // the split's sequence ids
  int64_t num_samples = 0;  // Ns: samples requested (the dataset may hold more)
  int64_t seq_length = 0;   // s: each sample is s + 1 tokens
  uint64_t seed = 1234;     // numpy.random.RandomState's seed: 0 .. 2^32-1
};

// The cache's canonical description of `spec` over `data` (JSON text): what
// the index arrays depend on, including a fingerprint of the split's
// sequence lengths so a replaced corpus is not matched with stale indices.
std::string gpt_cache_description(const IndexedDataset& data, const GptDatasetSpec& spec);
// "<cache_dir>/<16 hex digits of FNV-1a 64 of the description>-gpt"; the
// files are that plus "-document_index.npy", "-sample_index.npy",
// "-shuffle_index.npy" and "-description.json" (written last).
std::string gpt_cache_stem(const IndexedDataset& data, const GptDatasetSpec& spec);

// Builds and writes the three index arrays unless a complete cache for this
// description is already there. Returns true when it built them. Each file
// is written atomically, and the description last, so a crash never leaves
// a cache that looks complete.
bool build_gpt_dataset_cache(const IndexedDataset& data, const GptDatasetSpec& spec);

// Samples of one split of one corpus, in Megatron's order. Loads (maps) the
// cached index arrays, which must exist: see open_gpt_dataset.
class GptDataset final : public SampleSource {
 public:
  GptDataset(std::shared_ptr<const IndexedDataset> data, const GptDatasetSpec& spec);

  int64_t sample_tokens() const override { return spec_.seq_length + 1; }
  // Sample `index` < size(): the tokens of shuffled row shuffle_index(index).
  void read(int64_t index, int32_t* out) const override;
  std::string describe() const override;

  int64_t size() const { return plan_.num_rows - 1; }  // >= the requested num_samples
  const GptEpochPlan& plan() const { return plan_; }
  const GptDatasetSpec& spec() const { return spec_; }
  const std::string& cache_stem() const { return stem_; }
  const IndexedDataset& data() const { return *data_; }

  // The index arrays (section 3.3), for inspection and tests.
  int64_t document_index_size() const { return document_index_->numel(); }
  int64_t document_index(int64_t i) const { return document_index_->at(i); }
  std::pair<int64_t, int64_t> sample_index(int64_t row) const {
    return {sample_index_->at(2 * row), sample_index_->at(2 * row + 1)};
  }
  int64_t shuffle_index(int64_t i) const { return shuffle_index_->at(i); }

 private:
  void check_arrays() const;
  [[noreturn]] void corrupt(const std::string& what) const;

  std::shared_ptr<const IndexedDataset> data_;
  GptDatasetSpec spec_;
  GptEpochPlan plan_;
  std::string stem_;
  std::unique_ptr<MappedNpy> document_index_, sample_index_, shuffle_index_;
};

// Megatron's "built by rank 0, the others wait, then everyone loads": with
// build = true the cache is built if missing, then barrier() (if set) is
// called; with build = false barrier() is called first. Then the dataset is
// loaded. Single process: build = true and no barrier.
std::unique_ptr<GptDataset> open_gpt_dataset(std::shared_ptr<const IndexedDataset> data,
                                             const GptDatasetSpec& spec, bool build,
                                             const std::function<void()>& barrier);

// FNV-1a 64 of bytes, continuing from `hash` (the cache keys).
uint64_t fnv1a64(const void* bytes, size_t size, uint64_t hash = 0xCBF29CE484222325ull);

}  // namespace deco
