#include "data/loader.h"

#include <chrono>

namespace deco {

DataLoader::DataLoader(const SampleSource& source, const BatchPlan& plan, int64_t consumed_samples,
                       int64_t prefetch)
    : source_(source),
      plan_(plan),
      next_consumed_(consumed_samples),
      slots_(static_cast<size_t>(prefetch < 1 ? 1 : prefetch)) {
  worker_ = std::thread([this] { produce(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_.notify_all();
  worker_.join();
}

void DataLoader::produce() {
  const int64_t capacity = static_cast<int64_t>(slots_.size());
  std::vector<int32_t> batch;
  for (;;) {
    try {
      plan_.load(source_, next_consumed_, next_micro_, batch);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::current_exception();
      ready_.notify_all();
      return;
    }
    if (++next_micro_ == plan_.micro_batches_per_step()) {
      next_micro_ = 0;
      next_consumed_ += plan_.global_batch();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    space_.wait(lock, [&] { return stop_ || tail_ - head_ < capacity; });
    if (stop_) return;
    slots_[static_cast<size_t>(tail_ % capacity)].swap(batch);
    ++tail_;
    ready_.notify_one();
  }
}

const std::vector<int32_t>& DataLoader::next() {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait(lock, [&] { return head_ < tail_ || error_; });
  if (head_ == tail_ && error_) std::rethrow_exception(error_);
  current_.swap(slots_[static_cast<size_t>(head_ % static_cast<int64_t>(slots_.size()))]);
  ++head_;
  lock.unlock();
  space_.notify_one();
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return current_;
}

}  // namespace deco
