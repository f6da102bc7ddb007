// Megatron-LM's blend of several GPT datasets (specification:
// ../shared/docs/megatron-data.md section 4): a deterministic greedy
// interleaving that keeps each dataset's share of the samples so far as
// close as possible to its weight. No randomness; each component keeps its
// own shuffled order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/gpt_dataset.h"
#include "data/sample_source.h"

namespace deco {

// Samples to build for a component of weight w (normalized) in a blend of
// `size`: ceil(ceil(size * w) * 1.005), Megatron's 0.5% surplus.
int64_t blend_component_samples(int64_t size, double weight);

// For k < size: the dataset i maximizing w_i * max(k, 1) - count_i (ties to
// the lowest i) and its next sample count_i. Weights as given (normalized).
void build_blending_indices(const std::vector<double>& weights, int64_t size,
                            std::vector<int16_t>* dataset_index,
                            std::vector<int64_t>* dataset_sample_index);

class BlendedDataset final : public SampleSource {
 public:
  // `weights` are the normalized blend weights (normalize_weights), one per
  // dataset; each dataset must hold every sample the blend takes from it.
  BlendedDataset(std::vector<std::unique_ptr<GptDataset>> datasets, std::vector<double> weights,
                 int64_t size);

  int64_t sample_tokens() const override { return sample_tokens_; }
  void read(int64_t index, int32_t* out) const override;
  std::string describe() const override;

  int64_t size() const { return static_cast<int64_t>(dataset_index_.size()); }
  int dataset_of(int64_t index) const { return dataset_index_[static_cast<size_t>(index)]; }
  int64_t sample_of(int64_t index) const { return dataset_sample_index_[static_cast<size_t>(index)]; }
  const GptDataset& dataset(int i) const { return *datasets_[static_cast<size_t>(i)]; }
  int num_datasets() const { return static_cast<int>(datasets_.size()); }

 private:
  std::vector<std::unique_ptr<GptDataset>> datasets_;
  std::vector<double> weights_;
  int64_t sample_tokens_ = 0;
  std::vector<int16_t> dataset_index_;         // [size] which dataset sample k comes from
  std::vector<int64_t> dataset_sample_index_;  // [size] and which of its samples
};

}  // namespace deco
