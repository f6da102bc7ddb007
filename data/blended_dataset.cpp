#include "data/blended_dataset.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

// Megatron's float64 arithmetic rounds each product before it is added to
// or subtracted from anything; an FMA, which GCC forms by itself when -march
// allows, rounds once and can flip a near-tie (which dataset a blend picks).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace deco {

int64_t blend_component_samples(int64_t size, double weight) {
  // Megatron: math.ceil(math.ceil(size * weight) * (1 + surplus)), surplus
  // 0.005, all in float64.
  const double target = std::ceil(static_cast<double>(size) * weight);
  return static_cast<int64_t>(std::ceil(target * (1.0 + 0.005)));
}

void build_blending_indices(const std::vector<double>& weights, int64_t size,
                            std::vector<int16_t>* dataset_index,
                            std::vector<int64_t>* dataset_sample_index) {
  DECO_ASSERT(!weights.empty() && weights.size() <= size_t{std::numeric_limits<int16_t>::max()},
              weights.size(), " datasets");
  dataset_index->assign(static_cast<size_t>(size), 0);
  dataset_sample_index->assign(static_cast<size_t>(size), 0);
  std::vector<int64_t> taken(weights.size(), 0);
  for (int64_t k = 0; k < size; ++k) {
    const double position = std::max(static_cast<double>(k), 1.0);
    size_t best = 0;
    double best_error = weights[0] * position - static_cast<double>(taken[0]);
    for (size_t i = 1; i < weights.size(); ++i) {
      const double error = weights[i] * position - static_cast<double>(taken[i]);
      if (error > best_error) {  // strict: ties stay with the lower index
        best_error = error;
        best = i;
      }
    }
    (*dataset_index)[static_cast<size_t>(k)] = static_cast<int16_t>(best);
    (*dataset_sample_index)[static_cast<size_t>(k)] = taken[best]++;
  }
}

BlendedDataset::BlendedDataset(std::vector<std::unique_ptr<GptDataset>> datasets,
                               std::vector<double> weights, int64_t size)
    : datasets_(std::move(datasets)), weights_(std::move(weights)) {
  DECO_ASSERT(!datasets_.empty() && datasets_.size() == weights_.size() && size >= 0,
              datasets_.size(), " datasets, ", weights_.size(), " weights, size ", size);
  sample_tokens_ = datasets_[0]->sample_tokens();
  for (const auto& d : datasets_)
    DECO_ASSERT(d->sample_tokens() == sample_tokens_, "blended datasets differ in sample length");
  build_blending_indices(weights_, size, &dataset_index_, &dataset_sample_index_);
  // The surplus makes this hold; check it here rather than at some later step.
  std::vector<int64_t> needed(datasets_.size(), 0);
  for (int64_t k = 0; k < size; ++k)
    needed[static_cast<size_t>(dataset_of(k))] = sample_of(k) + 1;
  for (size_t i = 0; i < datasets_.size(); ++i)
    if (needed[i] > datasets_[i]->size())
      fail(datasets_[i]->describe(), ": the blend of ", size, " samples takes ", needed[i],
           " samples from it, but it holds only ", datasets_[i]->size(),
           "; build it with more samples (blend_component_samples)");
}

void BlendedDataset::read(int64_t index, int32_t* out) const {
  if (index < 0 || index >= size())
    fail(describe(), ": sample ", index, " does not exist; the blend has ", size(), " samples");
  datasets_[static_cast<size_t>(dataset_of(index))]->read(sample_of(index), out);
}

std::string BlendedDataset::describe() const {
  std::string parts;
  for (size_t i = 0; i < datasets_.size(); ++i)
    parts += str(i ? "; " : "", "weight ", weights_[i], ": ", datasets_[i]->describe());
  return str("blend of ", datasets_.size(), " datasets, ", size(), " samples (", parts, ")");
}

}  // namespace deco
