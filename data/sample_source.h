// Where training samples come from, and the order a rank consumes them in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deco {

enum class Split { Train, Valid, Test };
const char* split_name(Split split);

// A dataset of fixed-length samples: sample i is seq_length + 1 tokens
// (inputs are the first seq_length, targets the last seq_length).
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t sample_tokens() const = 0;  // seq_length + 1
  // Writes sample `index` into out[sample_tokens()]. Deterministic.
  virtual void read(int64_t index, int32_t* out) const = 0;
  virtual std::string describe() const = 0;
};

// Megatron-LM's consumption order. The optimizer step that starts after
// `consumed` samples uses samples [consumed, consumed + global_batch). They
// are taken in chunks of micro_batch x dp_size; data-parallel rank r reads
// its own micro_batch-sized slice of each chunk, one chunk per micro-batch.
class BatchPlan {
 public:
  BatchPlan(int64_t micro_batch, int64_t global_batch, int64_t dp_size, int64_t dp_rank);
  int64_t micro_batches_per_step() const { return global_batch_ / (micro_batch_ * dp_size_); }
  int64_t micro_batch() const { return micro_batch_; }
  int64_t global_batch() const { return global_batch_; }
  // Index of the first sample of micro-batch `micro` of the step that starts at `consumed`.
  int64_t first_sample(int64_t consumed, int64_t micro) const;
  // Reads that micro-batch as int32 [micro_batch, sample_tokens] into out (resized).
  void load(const SampleSource& source, int64_t consumed, int64_t micro, std::vector<int32_t>& out) const;

 private:
  int64_t micro_batch_, global_batch_, dp_size_, dp_rank_;
};

}  // namespace deco
