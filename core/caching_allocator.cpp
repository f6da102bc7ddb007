#include "core/caching_allocator.h"

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "core/error.h"

namespace deco {

namespace {

thread_local MemoryCategory current_category = MemoryCategory::Other;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace

const char* memory_category_name(MemoryCategory category) {
  switch (category) {
    case MemoryCategory::Parameters: return "parameters";
    case MemoryCategory::Gradients: return "gradients";
    case MemoryCategory::OptimizerState: return "optimizer state";
    case MemoryCategory::Activations: return "activations";
    case MemoryCategory::Workspace: return "workspace";
    case MemoryCategory::Other: return "other";
  }
  return "?";
}

MemoryCategory current_memory_category() { return current_category; }

MemoryCategoryScope::MemoryCategoryScope(MemoryCategory category) : previous_(current_category) {
  current_category = category;
}

MemoryCategoryScope::~MemoryCategoryScope() { current_category = previous_; }

struct CachingAllocator::Block {
  char* ptr = nullptr;
  size_t size = 0;
  bool small = false;
  bool free = true;
  Block* prev = nullptr;  // neighbours within the segment
  Block* next = nullptr;
  size_t requested = 0;
  MemoryCategory category = MemoryCategory::Other;
};

bool CachingAllocator::BySize::operator()(const Block* a, const Block* b) const {
  return std::tie(a->size, a->ptr) < std::tie(b->size, b->ptr);
}

CachingAllocator::CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, std::string device, std::string oom_hint)
    : raw_alloc_(std::move(raw_alloc)), raw_free_(std::move(raw_free)), device_(std::move(device)),
      oom_hint_(std::move(oom_hint)) {}

CachingAllocator::~CachingAllocator() {
  for (auto& [start, first] : segments_) {
    raw_free_(const_cast<char*>(start));
    for (Block* b = first; b != nullptr;) {
      Block* next = b->next;
      delete b;
      b = next;
    }
  }
}

CachingAllocator::Block* CachingAllocator::find_free(FreeSet& pool, size_t size) {
  Block probe;
  probe.size = size;
  probe.ptr = nullptr;
  const auto it = pool.lower_bound(&probe);
  if (it == pool.end()) return nullptr;
  Block* b = *it;
  pool.erase(it);
  return b;
}

CachingAllocator::Block* CachingAllocator::new_segment(size_t segment_bytes, bool small, size_t request,
                                                       MemoryCategory category, size_t raw_bytes) {
  if (raw_bytes == 0) raw_bytes = segment_bytes;
  void* ptr = raw_alloc_(raw_bytes);
  if (ptr == nullptr) {
    // Out of memory: give back what the cache holds and try once more.
    ++stats_.cache_flushes;
    if (!held_.empty() && synchronize_) {
      // Frees held while two streams overlap are safe to reuse once the
      // device has finished everything queued: wait for it, then free them.
      synchronize_();
      free_held_locked();
    }
    release_cached_locked();
    ptr = raw_alloc_(raw_bytes);
  }
  if (ptr == nullptr) {
    std::string held;
    for (size_t c = 0; c < kMemoryCategories; ++c)
      if (stats_.by_category[c] > 0)
        held += str(held.empty() ? "" : ", ", memory_category_name(static_cast<MemoryCategory>(c)), " ",
                    gib(stats_.by_category[c]));
    fail("out of memory on ", device_, ": allocating ", request, " bytes for ", memory_category_name(category),
         " with ", gib(stats_.allocated), " in use (", held.empty() ? "nothing" : held, ") and ",
         gib(stats_.reserved), " reserved; ", oom_hint_);
  }
  ++stats_.raw_allocations;
  ++stats_.segments;
  stats_.reserved += segment_bytes;
  stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
  Block* b = new Block;
  b->ptr = static_cast<char*>(ptr);
  b->size = segment_bytes;
  b->small = small;
  segments_[b->ptr] = b;
  return b;
}

void CachingAllocator::split(Block* block, size_t size, FreeSet& pool, bool small) {
  const size_t rest = block->size - size;
  if (small ? rest < kRound : rest <= kSmallRequest) return;  // too small to be worth a block
  Block* tail = new Block;
  tail->ptr = block->ptr + size;
  tail->size = rest;
  tail->small = small;
  tail->prev = block;
  tail->next = block->next;
  if (block->next) block->next->prev = tail;
  block->next = tail;
  block->size = size;
  pool.insert(tail);
}

void CachingAllocator::add_live(Block* block, size_t requested, MemoryCategory category) {
  block->free = false;
  block->requested = requested;
  block->category = category;
  live_[block->ptr] = block;
  ++stats_.allocations;
  stats_.allocated += block->size;
  stats_.requested += requested;
  stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
  const size_t c = static_cast<size_t>(category);
  stats_.by_category[c] += block->size;
  stats_.peak_by_category[c] = std::max(stats_.peak_by_category[c], stats_.by_category[c]);
}

void* CachingAllocator::allocate(size_t bytes, MemoryCategory category) {
  std::lock_guard<std::mutex> lock(mutex_);
  const size_t size = round_up(std::max<size_t>(bytes, 1), kRound);
  const bool small = size <= kSmallRequest;
  FreeSet& pool = small ? small_free_ : large_free_;
  Block* b = caching_ ? find_free(pool, size) : nullptr;
  // Without caching, a segment of its own, of the bytes asked for: its end
  // (where the raw allocator's bounds check sits) is the block's own.
  if (b == nullptr && !caching_) b = new_segment(size, small, bytes, category, std::max<size_t>(bytes, 1));
  if (b == nullptr) b = new_segment(small ? kSmallSegment : round_up(size, kLargeRound), small, bytes, category);
  split(b, size, pool, small);
  add_live(b, bytes, category);
  return b->ptr;
}

void CachingAllocator::free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = live_.find(ptr);
  DECO_ASSERT(it != live_.end() && held_.count(ptr) == 0,
              "free of a pointer the caching allocator did not hand out (or freed twice)");
  if (hold_depth_ > 0) {
    held_.insert(ptr);
    stats_.held += it->second->size;
    return;
  }
  free_locked(ptr);
}

void CachingAllocator::set_synchronize(std::function<void()> synchronize) {
  std::lock_guard<std::mutex> lock(mutex_);
  synchronize_ = std::move(synchronize);
}

void CachingAllocator::hold_frees() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++hold_depth_;
}

void CachingAllocator::release_held_frees() {
  std::lock_guard<std::mutex> lock(mutex_);
  DECO_ASSERT(hold_depth_ > 0, "release_held_frees without hold_frees");
  if (--hold_depth_ > 0) return;
  free_held_locked();
}

void CachingAllocator::free_held_locked() {
  for (const void* ptr : held_) free_locked(const_cast<void*>(ptr));
  held_.clear();
  stats_.held = 0;
}

void CachingAllocator::free_locked(void* ptr) {
  const auto it = live_.find(ptr);
  Block* b = it->second;
  live_.erase(it);
  ++stats_.frees;
  stats_.allocated -= b->size;
  stats_.requested -= b->requested;
  stats_.by_category[static_cast<size_t>(b->category)] -= b->size;
  b->free = true;
  b->requested = 0;
  FreeSet& pool = b->small ? small_free_ : large_free_;
  // Merge with free neighbours of the same segment.
  auto absorb = [](Block* left, Block* right) {  // right, left's free neighbour, joins left
    left->size += right->size;
    left->next = right->next;
    if (right->next) right->next->prev = left;
    delete right;
  };
  if (b->prev && b->prev->free) {
    Block* p = b->prev;
    pool.erase(p);
    absorb(p, b);
    b = p;
  }
  if (b->next && b->next->free) {
    pool.erase(b->next);
    absorb(b, b->next);
  }
  pool.insert(b);
  if (!caching_) release_cached_locked();  // b spans its segment: back to the raw allocator
}

void CachingAllocator::set_caching(bool caching) {
  std::lock_guard<std::mutex> lock(mutex_);
  caching_ = caching;
  if (!caching_) release_cached_locked();
}

bool CachingAllocator::caching() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return caching_;
}

void CachingAllocator::release_cached_locked() {
  for (auto it = segments_.begin(); it != segments_.end();) {
    Block* b = it->second;
    if (b->free && b->next == nullptr) {  // one free block spanning the whole segment
      (b->small ? small_free_ : large_free_).erase(b);
      raw_free_(b->ptr);
      ++stats_.raw_frees;
      --stats_.segments;
      stats_.reserved -= b->size;
      delete b;
      it = segments_.erase(it);
    } else {
      ++it;
    }
  }
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peaks() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated = stats_.allocated;
  stats_.peak_reserved = stats_.reserved;
  stats_.peak_by_category = stats_.by_category;
}

size_t CachingAllocator::block_size(const void* ptr) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = live_.find(ptr);
  DECO_ASSERT(it != live_.end(), "not a live block of this allocator");
  return it->second->size;
}

void CachingAllocator::check_invariants() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t reserved = 0, allocated = 0, free_blocks = 0, live_blocks = 0;
  std::array<size_t, kMemoryCategories> by_category{};
  for (const auto& [start, first] : segments_) {
    DECO_ASSERT(first->prev == nullptr && first->ptr == start, "a segment starts with its first block");
    for (const Block* b = first; b != nullptr; b = b->next) {
      reserved += b->size;
      DECO_ASSERT(b->size % kRound == 0 && b->size > 0, "block sizes are positive multiples of ", kRound);
      DECO_ASSERT(b->small == first->small, "a segment's blocks share its pool");
      if (b->next) {
        DECO_ASSERT(b->next->prev == b && b->ptr + b->size == b->next->ptr, "blocks tile their segment");
        DECO_ASSERT(!(b->free && b->next->free), "free neighbours are merged");
      }
      const FreeSet& pool = b->small ? small_free_ : large_free_;
      if (b->free) {
        ++free_blocks;
        DECO_ASSERT(pool.count(const_cast<Block*>(b)) == 1, "every free block is in its pool");
      } else {
        ++live_blocks;
        allocated += b->size;
        by_category[static_cast<size_t>(b->category)] += b->size;
        DECO_ASSERT(live_.count(b->ptr) == 1, "every live block is indexed");
      }
    }
  }
  DECO_ASSERT(free_blocks == small_free_.size() + large_free_.size(), "the pools hold only free blocks");
  DECO_ASSERT(live_blocks == live_.size(), "the index holds only live blocks");
  DECO_ASSERT(reserved == stats_.reserved && allocated == stats_.allocated && by_category == stats_.by_category,
              "the stats add up: reserved ", reserved, " vs ", stats_.reserved, ", allocated ", allocated, " vs ",
              stats_.allocated);
  DECO_ASSERT(static_cast<int64_t>(segments_.size()) == stats_.segments, "segment count");
}

std::string memory_report(const AllocatorStats& s, size_t device_total) {
  std::string out;
  char line[160];
  auto row = [&](const char* name, size_t bytes, size_t peak) {
    std::snprintf(line, sizeof(line), "  %-16s %14s   (peak %s)\n", name, gib(bytes).c_str(), gib(peak).c_str());
    out += line;
  };
  for (size_t c = 0; c < kMemoryCategories; ++c)
    row(memory_category_name(static_cast<MemoryCategory>(c)), s.by_category[c], s.peak_by_category[c]);
  row("= allocated", s.allocated, s.peak_allocated);
  row("reserved", s.reserved, s.peak_reserved);
  std::snprintf(line, sizeof(line), "  %-16s %14s   (reserved but free, reused before asking the device)\n",
                "cached", gib(s.reserved - s.allocated).c_str());
  out += line;
  if (device_total > 0) {
    std::snprintf(line, sizeof(line), "  %-16s %14s   (reserved: %.1f%%)\n", "device total", gib(device_total).c_str(),
                  100.0 * static_cast<double>(s.reserved) / static_cast<double>(device_total));
    out += line;
  }
  std::snprintf(line, sizeof(line), "  %-16s %14lld   (%lld returned; %lld allocations served in all)\n",
                "device mallocs", static_cast<long long>(s.raw_allocations), static_cast<long long>(s.raw_frees),
                static_cast<long long>(s.allocations));
  out += line;
  return out;
}

}  // namespace deco
