// A caching allocator for device memory: blocks freed by the training loop
// are kept and handed out again, so after the first step no call reaches
// cudaMalloc/cudaFree (which synchronize the device and cost tens of
// microseconds to milliseconds each). Every allocation is tagged with what it
// holds (parameters, gradients, optimizer state, activations, workspace), so
// the start-up memory report adds up to what is really allocated.
//
// The policy, in the spirit of PyTorch's CUDA caching allocator:
//  - sizes are rounded up to 512 bytes (which also aligns every block for
//    vectorized and tensor-core loads);
//  - requests up to 1 MiB come from 2 MiB segments (the small pool), larger
//    ones from segments of their own size rounded to 2 MiB (the large pool),
//    so small short-lived blocks do not fragment the large ones;
//  - a request takes the smallest free block of its pool that fits (best
//    fit); a block larger than needed is split when the rest is worth
//    keeping (>= 512 bytes in the small pool, > 1 MiB in the large one);
//  - a freed block merges with free neighbours of its segment;
//  - when the raw allocator is out of memory, every fully free segment is
//    returned to it and the request retried once; then a deco::Error reports
//    what is allocated, per category.
// The raw allocator is a parameter: cudaMalloc/cudaFree on the GPU, malloc
// in the CPU tests that check the policy (tests/unit/test_caching_allocator.cpp).
//
// Blocks are not tied to streams. Where work on two streams may overlap
// (core/stream.h's SideStream), frees are held back from fork to join
// (hold_frees): a block one stream freed is handed out again only once
// both streams are ordered after its last use.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace deco {

enum class MemoryCategory : uint8_t { Parameters, Gradients, OptimizerState, Activations, Workspace, Other };
constexpr size_t kMemoryCategories = 6;
const char* memory_category_name(MemoryCategory category);

// What new device allocations on this thread hold, for as long as a scope
// lives: { MemoryCategoryScope s(MemoryCategory::Gradients); ... }.
MemoryCategory current_memory_category();
class MemoryCategoryScope {
 public:
  explicit MemoryCategoryScope(MemoryCategory category);
  ~MemoryCategoryScope();
  MemoryCategoryScope(const MemoryCategoryScope&) = delete;
  MemoryCategoryScope& operator=(const MemoryCategoryScope&) = delete;

 private:
  MemoryCategory previous_;
};

struct AllocatorStats {
  size_t allocated = 0;       // bytes in live blocks (rounded sizes)
  size_t requested = 0;       // bytes the live allocations asked for
  size_t reserved = 0;        // bytes of the segments held from the raw allocator
  size_t peak_allocated = 0, peak_reserved = 0;
  int64_t allocations = 0, frees = 0;  // calls to allocate/free
  int64_t raw_allocations = 0, raw_frees = 0;  // calls that reached the raw allocator
  int64_t cache_flushes = 0;  // out-of-memory retries that returned cached segments first
  std::array<size_t, kMemoryCategories> by_category{};       // live bytes per category
  std::array<size_t, kMemoryCategories> peak_by_category{};  // the most each category held
  int64_t segments = 0;
  size_t held = 0;  // bytes freed while frees are held, still counted in allocated
};

class CachingAllocator {
 public:
  using RawAlloc = std::function<void*(size_t)>;  // nullptr when out of memory
  using RawFree = std::function<void(void*)>;

  static constexpr size_t kRound = 512;
  static constexpr size_t kSmallRequest = 1 << 20;   // up to this: the small pool
  static constexpr size_t kSmallSegment = 2 << 20;   // its segments
  static constexpr size_t kLargeRound = 2 << 20;     // large segments are multiples of this

  // `device` names the memory in messages ("GPU 0"); `oom_hint` ends the
  // out-of-memory message (what the user can change).
  CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, std::string device, std::string oom_hint);
  // Returns every segment to the raw allocator.
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes, MemoryCategory category);
  void* allocate(size_t bytes) { return allocate(bytes, current_memory_category()); }
  // `ptr` must come from allocate() and not be freed yet (checked).
  void free(void* ptr);
  // Returns fully free segments to the raw allocator; live blocks stay.
  void release_cached();
  // While work on two streams may overlap, a block freed by one could be
  // handed to the other's next allocation while a kernel queued on the
  // first still reads it. Between hold_frees() and the matching
  // release_held_frees() (they nest) free() only records the pointer: the
  // block stays allocated until the last release frees it for real.
  void hold_frees();
  void release_held_frees();
  // Off (DECO_CUDA_NO_MEMORY_CACHING=1 for the GPU's): every allocation is
  // a segment of its own, of exactly the bytes asked for (its block still
  // counts rounded to 512), returned to the raw allocator when freed, so a
  // memory checker (compute-sanitizer, the CUDA emulator's guard pages and
  // poison) sees each block's own bounds and fresh, uninitialized memory
  // where a reused block would hold old values. Slow: for checking only.
  void set_caching(bool caching);
  bool caching() const;
  // Waits until the device has finished all queued work (cudaDeviceSynchronize
  // on the GPU). When set, running out of memory while frees are held
  // waits and frees the held blocks before the retry, instead of failing
  // with memory the streams are done with.
  void set_synchronize(std::function<void()> synchronize);

  AllocatorStats stats() const;
  void reset_peaks();  // peaks restart from the current values
  // The rounded size of a live block (what it counts for in the stats).
  size_t block_size(const void* ptr) const;
  // Internal consistency (blocks tile their segments, free blocks are merged
  // and indexed, the stats add up); for tests. Throws on a violation.
  void check_invariants() const;

 private:
  struct Block;
  struct BySize {
    bool operator()(const Block* a, const Block* b) const;
  };
  using FreeSet = std::set<Block*, BySize>;

  Block* find_free(FreeSet& pool, size_t size);
  // raw_bytes: what to ask the raw allocator for, if not segment_bytes.
  Block* new_segment(size_t segment_bytes, bool small, size_t request, MemoryCategory category,
                     size_t raw_bytes = 0);
  void split(Block* block, size_t size, FreeSet& pool, bool small);
  void release_cached_locked();
  void add_live(Block* block, size_t requested, MemoryCategory category);
  void free_locked(void* ptr);
  void free_held_locked();  // every held block, for real

  RawAlloc raw_alloc_;
  RawFree raw_free_;
  std::string device_, oom_hint_;
  mutable std::mutex mutex_;
  FreeSet small_free_, large_free_;
  std::unordered_map<const void*, Block*> live_;
  std::map<const char*, Block*> segments_;  // segment start -> its first block
  int hold_depth_ = 0;
  bool caching_ = true;
  std::function<void()> synchronize_;
  std::unordered_set<const void*> held_;  // freed while frees are held
  AllocatorStats stats_;
};

// A table of an allocator's stats: live bytes and peak per category, then
// allocated, reserved (what the device really gave), the cache's share of it,
// and raw allocation counts; `device_total` > 0 adds the share of the device.
std::string memory_report(const AllocatorStats& stats, size_t device_total = 0);

// Host memory (Device::CPU buffers) is not cached, but is counted the same
// way, per category of the allocating thread's MemoryCategoryScope: live and
// peak bytes as requested (allocated = requested, reserved unused), and the
// allocation and free counts. What the CPU backend's memory figures and the
// activation-memory tests read.
AllocatorStats host_memory_stats();
void reset_host_memory_peaks();  // peaks restart from the current values

}  // namespace deco
