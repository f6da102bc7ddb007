#include "data/megatron_data.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "core/error.h"
#include "core/file_io.h"
#include "data/blended_dataset.h"
#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"

namespace deco {
namespace {

constexpr Split kSplits[3] = {Split::Train, Split::Valid, Split::Test};

// What one split will be: nothing (with the reason), one GPT dataset, or a
// blend of one GPT dataset per prefix.
struct SplitPlan {
  std::string none_reason;                 // set when the split is null
  std::vector<GptDatasetSpec> components;  // one per prefix (one without blending)
  int64_t blend_size = 0;
};

void validate(const MegatronDataOptions& o) {
  if (o.data_path.empty()) fail("data_path is empty; name at least one corpus prefix");
  for (const auto& [weight, prefix] : o.data_path) {
    if (prefix.empty())
      fail("data_path has an empty prefix; name the corpus files without .bin/.idx");
    if (!std::isfinite(weight) || weight < 0)
      fail("data_path: the weight ", weight, " of ", prefix, " must be a finite number >= 0");
  }
  double total = 0;
  for (const auto& entry : o.data_path) total += entry.first;
  if (o.data_path.size() > 1 && total <= 0)
    fail("data_path: every weight is 0; give at least one corpus a positive weight");
  if (o.data_path.size() > 32767)
    fail("data_path names ", o.data_path.size(), " corpora; a blend takes at most 32767");
  parse_split(o.split);  // a bad split string is an error even where no split is requested
  if (o.seq_length < 1) fail("seq_length must be at least 1, not ", o.seq_length);
  if (o.seed > 0xFFFFFFFFull)
    fail("data seed ", o.seed, " is out of range: numpy.random.RandomState, whose order deco "
         "reproduces, takes seeds 0 .. 2^32-1");
  const int64_t requested[3] = {o.train_samples, o.valid_samples, o.test_samples};
  for (int i = 0; i < 3; ++i)
    if (requested[i] < 0)
      fail(split_name(kSplits[i]), " samples must be >= 0, not ", requested[i]);
}

SplitPlan plan_split(int split, int64_t requested, const MegatronDataOptions& o,
                     const std::vector<std::shared_ptr<const IndexedDataset>>& data,
                     const std::vector<double>& weights, const std::string& cache_dir) {
  SplitPlan plan;
  if (requested == 0) {
    plan.none_reason = "0 samples requested";
    return plan;
  }
  const bool blend = data.size() > 1;
  plan.blend_size = requested;
  for (size_t i = 0; i < data.size(); ++i) {
    const SplitRange range = split_sequence_ranges(o.split, data[i]->num_sequences())[split];
    if (!range.present) {
      plan.none_reason = str("its share of split \"", o.split, "\" is 0");
      plan.components.clear();
      return plan;
    }
    if (range.size() == 0) {
      plan.none_reason = str("split \"", o.split, "\" gives ", data[i]->prefix(), " no sequences: [",
                             range.begin, ", ", range.end, ") of its ", data[i]->num_sequences());
      plan.components.clear();
      return plan;
    }
    GptDatasetSpec spec;
    spec.cache_dir = cache_dir;
    spec.range = range;
    spec.num_samples = blend ? blend_component_samples(requested, weights[i]) : requested;
    spec.seq_length = o.seq_length;
    spec.seed = o.seed;
    plan.components.push_back(spec);
  }
  return plan;
}

// The largest token id of one .bin, cached next to the indices: scanning a
// large corpus takes minutes, and every rank of every run would repeat it.
// Keyed by the file's path, size and modification time.
std::string max_token_cache_key(const IndexedDataset& data) {
  const std::string bin =
      std::filesystem::absolute(data.prefix() + ".bin").lexically_normal().string();
  struct stat st {};
  if (::stat(bin.c_str(), &st) != 0) return "";
  return str("{\"bin\": \"", bin, "\", \"bytes\": ", st.st_size, ", \"mtime_ns\": ",
             static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
             ", \"dtype\": \"", index_dtype_name(data.dtype()), "\"}");
}

std::string max_token_cache_path(const std::string& cache_dir, const std::string& key) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(fnv1a64(key.data(), key.size())));
  return cache_dir + "/" + hex + "-max-token.txt";
}

// Returns the cached value, or scans (and, on the building rank, caches).
int64_t max_token_of(const IndexedDataset& data, const std::string& cache_dir, bool write) {
  const std::string key = max_token_cache_key(data);
  const std::string path = max_token_cache_path(cache_dir, key);
  std::ifstream in(path);
  std::string line;
  int64_t value = 0;
  if (in && std::getline(in, line) && line == key && (in >> value)) return value;
  value = data.max_token();
  if (write) write_file_atomic(path, key + "\n" + std::to_string(value) + "\n");
  return value;
}

}  // namespace

MegatronDatasets build_megatron_datasets(const MegatronDataOptions& options) {
  validate(options);
  const std::string cache_dir = options.cache_dir.empty()
                                    ? parent_dir(options.data_path[0].second) + "/index-cache"
                                    : options.cache_dir;
  // A prefix named twice is opened (and scanned for its largest id) once.
  std::map<std::string, std::shared_ptr<const IndexedDataset>> opened;
  std::vector<std::shared_ptr<const IndexedDataset>> data, unique;
  std::vector<double> raw_weights;
  for (const auto& [weight, prefix] : options.data_path) {
    auto& slot = opened[prefix];
    if (!slot) {
      slot = std::make_shared<const IndexedDataset>(prefix);
      unique.push_back(slot);
    }
    data.push_back(slot);
    raw_weights.push_back(weight);
  }
  const std::vector<double> weights =
      data.size() > 1 ? normalize_weights(raw_weights) : std::vector<double>{1.0};
  const int64_t requested[3] = {options.train_samples, options.valid_samples, options.test_samples};
  std::vector<SplitPlan> plans;
  for (int i = 0; i < 3; ++i)
    plans.push_back(plan_split(i, requested[i], options, data, weights, cache_dir));

  if (options.build_indices) {
    std::error_code ec;
    std::filesystem::create_directories(cache_dir, ec);
    if (ec)
      fail("cannot create the index cache directory ", cache_dir, ": ", ec.message(),
           "; set the data cache path to a writable directory");
    for (const SplitPlan& plan : plans)
      for (size_t i = 0; i < plan.components.size(); ++i)
        build_gpt_dataset_cache(*data[i], plan.components[i]);
  }
  // The building rank fills the max-token cache before the barrier, so the
  // others find it instead of scanning every corpus themselves.
  std::vector<int64_t> max_tokens;
  if (options.build_indices)
    for (const auto& dataset : unique) max_tokens.push_back(max_token_of(*dataset, cache_dir, true));
  if (options.barrier) options.barrier();
  if (!options.build_indices)
    for (const auto& dataset : unique) max_tokens.push_back(max_token_of(*dataset, cache_dir, false));

  MegatronDatasets out;
  std::unique_ptr<SampleSource>* slots[3] = {&out.train, &out.valid, &out.test};
  out.description = str("Megatron data: ", unique.size(), unique.size() == 1 ? " corpus" : " corpora",
                        ", split \"", options.split, "\", seq_length ", options.seq_length,
                        ", seed ", options.seed, ", index cache ", cache_dir, "\n");
  for (int s = 0; s < 3; ++s) {
    const SplitPlan& plan = plans[static_cast<size_t>(s)];
    if (!plan.none_reason.empty()) {
      out.description += str("  ", split_name(kSplits[s]), ": none (", plan.none_reason, ")\n");
      out.empty_reason[s] = plan.none_reason;
      continue;
    }
    std::vector<std::unique_ptr<GptDataset>> parts;
    for (size_t i = 0; i < plan.components.size(); ++i)
      parts.push_back(std::make_unique<GptDataset>(data[i], plan.components[i]));
    if (parts.size() == 1)
      *slots[s] = std::move(parts[0]);
    else
      *slots[s] = std::make_unique<BlendedDataset>(std::move(parts), weights, plan.blend_size);
    out.description += str("  ", split_name(kSplits[s]), ": ", (*slots[s])->describe(), "\n");
  }

  for (size_t i = 0; i < unique.size(); ++i)
    if (max_tokens[i] > out.max_token) {
      out.max_token = max_tokens[i];
      out.max_token_file = unique[i]->prefix() + ".bin";
    }
  return out;
}

}  // namespace deco
