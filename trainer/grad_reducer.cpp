#include "trainer/grad_reducer.h"

#include <algorithm>

#include "model/model.h"

namespace deco {

int64_t default_bucket_elements(int64_t data_parallel_size) {
  return std::max<int64_t>(40'000'000, 1'000'000 * data_parallel_size);
}

GradReducer::GradReducer(const ParamLayout& layout, const Tensor& grads, Communicator& dense_group,
                         Communicator& expert_group, int64_t bucket_elements, bool reduce_to_owners)
    : grads_(grads) {
  DECO_ASSERT(bucket_elements > 0, "bucket size ", bucket_elements);
  DECO_ASSERT(grads.numel() == layout.total_numel(), "GradReducer: the gradient buffer and the layout differ");
  struct Region {
    int64_t begin, end;
    Communicator* group;
  };
  const Region regions[] = {{0, layout.dense_numel(), &dense_group},
                            {layout.dense_numel(), layout.total_numel(), &expert_group}};
  for (const Region& r : regions) {
    if (r.group->size() == 1 || r.begin == r.end) continue;
    // Pieces reduced as one: the region, or each owner's shard of it.
    const int64_t pieces = reduce_to_owners ? r.group->size() : 1;
    for (int64_t piece = 0; piece < pieces; ++piece) {
      const FlatRange owned = equal_shard({r.begin, r.end}, pieces, piece);
      for (int64_t b = owned.begin; b < owned.end; b += bucket_elements) {
        Bucket bucket;
        bucket.begin = b;
        bucket.end = std::min(owned.end, b + bucket_elements);
        bucket.group = r.group;
        bucket.owner = reduce_to_owners ? piece : -1;
        buckets_.push_back(std::move(bucket));
      }
    }
  }
  // Which units each bucket waits for: those of the parameters it overlaps.
  for (const ParamSpec& spec : layout.specs()) {
    const int64_t begin = spec.offset, end = spec.offset + spec.shape.numel();
    const int64_t unit = grad_unit_of(spec.name);
    for (size_t i = 0; i < buckets_.size(); ++i) {
      Bucket& b = buckets_[i];
      if (b.end <= begin || end <= b.begin) continue;
      if (std::find(b.units.begin(), b.units.end(), unit) != b.units.end()) continue;
      b.units.push_back(unit);
      by_unit_[unit].push_back(i);
    }
  }
  for (Bucket& b : buckets_) b.waiting = static_cast<int64_t>(b.units.size());
}

GradReducer::~GradReducer() = default;  // a request in flight completes in its destructor

std::vector<GradReducer::BucketInfo> GradReducer::buckets() const {
  std::vector<BucketInfo> out;
  for (const Bucket& b : buckets_) out.push_back({b.begin, b.end, b.group->name(), b.owner});
  return out;
}

void GradReducer::start(size_t i) {
  Bucket& b = buckets_[i];
  const Tensor x = grads_.slice(b.begin, b.end);
  b.request = b.owner >= 0 ? b.group->reduce_async(x, b.owner) : b.group->all_reduce_async(x, ReduceOp::Sum);
  start_order_.push_back(i);
}

void GradReducer::on_grads_ready(int64_t unit) {
  // (A bucket holding only padding waits for no unit: finish() starts it.)
  const auto it = by_unit_.find(unit);
  if (it != by_unit_.end())
    for (size_t i : it->second)
      if (--buckets_[i].waiting == 0) start(i);
  for (const Bucket& b : buckets_)
    if (b.request) b.request->test();
  started_at_units_.push_back(start_order_.size());
}

void GradReducer::finish() {
  for (size_t i = 0; i < buckets_.size(); ++i)
    if (!buckets_[i].request) start(i);
  for (Bucket& b : buckets_) {
    b.request->wait();
    b.request.reset();
    b.waiting = static_cast<int64_t>(b.units.size());
  }
  last_order_ = start_order_;
  last_started_at_units_ = started_at_units_;
  start_order_.clear();
  started_at_units_.clear();
}

}  // namespace deco
