// Data-parallel gradient reduction in buckets that start while the backward
// pass is still running (parallel.overlap_grad_reduce), as Megatron-LM's
// distributed data parallel does.
//
// Each region of the flat gradient buffer (dense parameters over the
// data-parallel group, routed experts over the expert-data-parallel group;
// a group of one is skipped) is cut into contiguous buckets of about
// parallel.ddp_bucket_size elements. A bucket's all-reduce starts as soon as
// every parameter overlapping it has its gradient (Model's grad units come
// in backward order: head, last layer ... first layer, embedding), so the
// reductions of the later layers run while the earlier layers still compute:
// on a GPU, NCCL on its own stream beside the compute stream; on the CPU,
// MPI's non-blocking all-reduce, advanced at every unit. Every rank of a
// group starts the same buckets in the same order (same layout, same units).
// finish() waits for all of them; the sums are then what one all-reduce per
// region gives (the same elements, summed over the same ranks).
//
// With the distributed optimizer (reduce_to_owners), each region's group
// of G ranks owns it in G equal contiguous shards, rank g the g-th (as
// Trainer::shard_context lays them out); buckets are also cut at the shard
// boundaries, and each is reduced to its owner only (reduce_async), which
// moves what a reduce-scatter of the region moves. Only the owners' shards
// then hold sums; the rest of the buffer is left unspecified.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/params.h"
#include "parallel/comm.h"

namespace deco {

class GradReducer {
 public:
  // `grads` is the flat gradient buffer of `layout`; bucket_elements > 0.
  GradReducer(const ParamLayout& layout, const Tensor& grads, Communicator& dense_group, Communicator& expert_group,
              int64_t bucket_elements, bool reduce_to_owners = false);
  ~GradReducer();

  // The backward pass finished `unit`'s gradients: start every bucket that
  // is now complete, and let the ones in flight progress.
  void on_grads_ready(int64_t unit);
  // Starts what has not started (everything, when no backward reported)
  // and waits for every bucket; then resets for the next step.
  void finish();

  struct BucketInfo {
    int64_t begin, end;  // flat element range
    std::string group;
    int64_t owner;  // reduce_to_owners: the group rank it is reduced to; -1: all-reduced
  };
  std::vector<BucketInfo> buckets() const;
  // The last finished step: bucket indices in the order they started, and
  // how many had started by each unit's report (in report order).
  const std::vector<size_t>& start_order() const { return last_order_; }
  const std::vector<size_t>& started_at_units() const { return last_started_at_units_; }

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;
    Communicator* group = nullptr;
    int64_t owner = -1;          // the group rank it is reduced to, or -1: all-reduced
    std::vector<int64_t> units;  // the grad units of the parameters overlapping it
    int64_t waiting = 0;         // of those, not reported yet this step
    std::unique_ptr<PendingCollective> request;
  };
  void start(size_t bucket);

  Tensor grads_;
  std::vector<Bucket> buckets_;
  std::map<int64_t, std::vector<size_t>> by_unit_;  // unit -> the buckets it feeds
  std::vector<size_t> start_order_, started_at_units_;  // this step so far
  std::vector<size_t> last_order_, last_started_at_units_;
};

// Megatron-LM's default bucket size (--ddp-bucket-size unset): max(40M, 1M x data-parallel size) elements.
int64_t default_bucket_elements(int64_t data_parallel_size);

}  // namespace deco
