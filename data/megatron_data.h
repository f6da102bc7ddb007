// The one entry point the trainer uses for Megatron-LM data: corpora as
// (weight, prefix) pairs, a split string, sequence length, seed and the
// number of samples each split must provide; returns the train, valid and
// test sample sources in exactly Megatron's order. Users' guide: docs/data.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/sample_source.h"

namespace deco {

struct MegatronDataOptions {
  std::vector<std::pair<double, std::string>> data_path;  // (weight, prefix); weights need not sum to 1
  std::string split = "969,30,1";
  std::string cache_dir;          // empty: <dir of first prefix>/index-cache
  int64_t seq_length = 0;
  uint64_t seed = 1234;
  // Requested samples per split (section 4's formulas are computed by the caller).
  int64_t train_samples = 0, valid_samples = 0, test_samples = 0;
  bool build_indices = true;      // rank 0 builds; others load
  std::function<void()> barrier;  // may be empty
};

struct MegatronDatasets {
  std::unique_ptr<SampleSource> train, valid, test;  // null when a split is empty
  std::string description;    // one line per split: what it holds, or why it is null
  std::string empty_reason[3];  // train, valid, test: why the split is null ("" when it is not)
  int64_t max_token = -1;     // the largest token id in any .bin (-1: no tokens at all)
  std::string max_token_file; // the .bin holding it
};

// One prefix: its GPT datasets with exactly the requested sample counts
// (Megatron's --data-path PREFIX without a weight). Several: each prefix's
// GPT dataset gets ceil(ceil(N*w_i)*1.005) samples and a greedy blend of N
// samples interleaves them. A split is null when its share of the split
// string is 0, when 0 samples are requested, or when a corpus's range for
// it holds no sequences (the description says which).
// With build_indices the missing index caches are built, then barrier() is
// called; without, barrier() is called first. Then every rank loads the
// caches. Throws deco::Error for bad options and bad files.
MegatronDatasets build_megatron_datasets(const MegatronDataOptions& options);

}  // namespace deco
