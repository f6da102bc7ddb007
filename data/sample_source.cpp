#include "data/sample_source.h"

#include "core/error.h"

namespace deco {

const char* split_name(Split split) {
  switch (split) {
    case Split::Train: return "train";
    case Split::Valid: return "valid";
    case Split::Test: return "test";
  }
  return "?";
}

BatchPlan::BatchPlan(int64_t micro_batch, int64_t global_batch, int64_t dp_size, int64_t dp_rank)
    : micro_batch_(micro_batch), global_batch_(global_batch), dp_size_(dp_size), dp_rank_(dp_rank) {
  DECO_ASSERT(micro_batch > 0 && dp_size > 0 && global_batch % (micro_batch * dp_size) == 0,
              "the config validation guarantees divisibility");
}

int64_t BatchPlan::first_sample(int64_t consumed, int64_t micro) const {
  return consumed + micro * micro_batch_ * dp_size_ + dp_rank_ * micro_batch_;
}

void BatchPlan::load(const SampleSource& source, int64_t consumed, int64_t micro,
                     std::vector<int32_t>& out) const {
  const int64_t len = source.sample_tokens();
  out.resize(static_cast<size_t>(micro_batch_ * len));
  const int64_t first = first_sample(consumed, micro);
  for (int64_t i = 0; i < micro_batch_; ++i) source.read(first + i, out.data() + i * len);
}

}  // namespace deco
