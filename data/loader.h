// Feeds the trainer its micro-batches in Megatron's order (BatchPlan),
// reading the next ones on a background thread while the model computes,
// so training never waits on the data unless the reads are slower than the
// steps.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "data/sample_source.h"

namespace deco {

class DataLoader {
 public:
  // Starts after `consumed_samples` (0 for a fresh run; the saved count when
  // resuming) and keeps up to `prefetch` micro-batches ready.
  DataLoader(const SampleSource& source, const BatchPlan& plan, int64_t consumed_samples,
             int64_t prefetch = 4);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next micro-batch, int32 [micro_batch, seq_length + 1], valid until
  // the next call. Blocks while it is not ready; rethrows a read error.
  const std::vector<int32_t>& next();
  // Seconds next() has spent blocked so far (the time training waited for data).
  double wait_seconds() const { return wait_seconds_; }

 private:
  void produce();

  const SampleSource& source_;
  const BatchPlan plan_;
  int64_t next_consumed_;  // consumed count of the step the producer is on
  int64_t next_micro_ = 0;
  std::vector<std::vector<int32_t>> slots_;  // a ring of prefetched micro-batches
  int64_t head_ = 0, tail_ = 0;              // consumer takes slot head_, producer fills tail_
  std::vector<int32_t> current_;             // what next() returned last
  std::mutex mutex_;
  std::condition_variable ready_, space_;
  bool stop_ = false;
  std::exception_ptr error_;
  double wait_seconds_ = 0.0;
  std::thread worker_;
};

}  // namespace deco
