// core/caching_allocator.h: the policy, on host memory (the GPU uses the same
// code over cudaMalloc; tests/gpu checks that against cudaMemGetInfo).
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "core/caching_allocator.h"
#include "core/error.h"

using namespace deco;

namespace {

constexpr size_t MiB = 1 << 20;

// malloc behind a budget: a raw allocation beyond `limit` bytes in use fails,
// as cudaMalloc does when the device is full.
struct Backend {
  size_t limit = SIZE_MAX, in_use = 0;
  std::map<void*, size_t> blocks;
  int64_t calls = 0, failures = 0;

  CachingAllocator make(const std::string& hint = "lower the batch") {
    return CachingAllocator(
        [this](size_t n) -> void* {
          ++calls;
          if (in_use + n > limit) {
            ++failures;
            return nullptr;
          }
          void* p = std::aligned_alloc(4096, n);
          blocks[p] = n;
          in_use += n;
          return p;
        },
        [this](void* p) {
          in_use -= blocks.at(p);
          blocks.erase(p);
          std::free(p);
        },
        "test device", hint);
  }
};

}  // namespace

TEST_CASE("caching allocator: freed blocks are reused without new device allocations", "[allocator]") {
  Backend dev;
  {
    CachingAllocator a = dev.make();
    // A training step's pattern: the same sizes, allocated and freed, again and again.
    const size_t sizes[] = {3000, 700 * 1024, 5 * MiB, 64, 12 * MiB + 1};
    for (int step = 0; step < 5; ++step) {
      std::vector<void*> live;
      for (size_t s : sizes) live.push_back(a.allocate(s, MemoryCategory::Activations));
      for (void* p : live) a.free(p);
      a.check_invariants();
      if (step == 0) REQUIRE(a.stats().raw_allocations == 3);  // one small segment, two large ones
    }
    const AllocatorStats s = a.stats();
    CHECK(s.raw_allocations == 3);  // nothing new after the first step
    CHECK(s.allocations == 25);
    CHECK(s.frees == 25);
    CHECK(s.allocated == 0);
    CHECK(s.reserved == 2 * MiB + 6 * MiB + 14 * MiB);  // 12 MiB + 1 rounds to 512 B, then to 2 MiB
    CHECK(dev.in_use == s.reserved);                    // reserved is what the device really gave
    a.release_cached();
    CHECK(a.stats().reserved == 0);
    CHECK(dev.in_use == 0);
  }
}

TEST_CASE("caching allocator: rounding, alignment, pools, splitting and merging", "[allocator]") {
  Backend dev;
  CachingAllocator a = dev.make();
  void* p1 = a.allocate(1, MemoryCategory::Workspace);
  void* p2 = a.allocate(513, MemoryCategory::Workspace);
  CHECK(a.block_size(p1) == 512);
  CHECK(a.block_size(p2) == 1024);
  CHECK(reinterpret_cast<uintptr_t>(p1) % 512 == 0);
  CHECK(reinterpret_cast<uintptr_t>(p2) % 512 == 0);
  CHECK(static_cast<char*>(p2) == static_cast<char*>(p1) + 512);  // split from the same 2 MiB segment
  CHECK(a.stats().segments == 1);
  CHECK(a.stats().requested == 514);
  // A large request never comes from the small pool.
  void* big = a.allocate(3 * MiB, MemoryCategory::Parameters);
  CHECK(a.stats().segments == 2);
  CHECK(a.block_size(big) == 4 * MiB);  // its 4 MiB segment: the 1 MiB rest is not split off
  a.check_invariants();

  // Free the two small blocks: they merge back into one free block spanning
  // the segment, which release_cached() can then return.
  a.free(p1);
  a.check_invariants();
  a.free(p2);
  a.check_invariants();
  a.release_cached();
  CHECK(a.stats().segments == 1);  // the large segment is still in use
  CHECK(dev.in_use == 4 * MiB);    // 3 MiB rounded to its 4 MiB segment

  // Best fit: with free large blocks of 6 and 10 MiB, a 5 MiB request takes the 6.
  void* b6 = a.allocate(6 * MiB, MemoryCategory::Activations);
  void* b10 = a.allocate(10 * MiB, MemoryCategory::Activations);
  a.free(b6);
  a.free(b10);
  const int64_t raw = a.stats().raw_allocations;
  void* b5 = a.allocate(5 * MiB, MemoryCategory::Activations);
  CHECK(b5 == b6);
  CHECK(a.stats().raw_allocations == raw);
  CHECK(a.block_size(b5) == 6 * MiB);  // the 1 MiB rest is not worth splitting off in the large pool
  // A 2 MiB request from the 10 MiB block splits it (the rest, 8 MiB, stays free).
  void* b2 = a.allocate(2 * MiB, MemoryCategory::Activations);
  CHECK(b2 == b10);
  CHECK(a.block_size(b2) == 2 * MiB);
  void* b8 = a.allocate(8 * MiB, MemoryCategory::Activations);
  CHECK(static_cast<char*>(b8) == static_cast<char*>(b10) + 2 * MiB);
  CHECK(a.stats().raw_allocations == raw);
  a.check_invariants();
  for (void* p : {big, b5, b2, b8}) a.free(p);
  a.check_invariants();
}

TEST_CASE("caching allocator: statistics per category and peaks", "[allocator]") {
  Backend dev;
  CachingAllocator a = dev.make();
  void* w = a.allocate(4 * MiB, MemoryCategory::Parameters);
  void* g = a.allocate(4 * MiB, MemoryCategory::Gradients);
  void* m;
  {
    MemoryCategoryScope scope(MemoryCategory::OptimizerState);
    m = a.allocate(8 * MiB);  // the scope's category
    CHECK(current_memory_category() == MemoryCategory::OptimizerState);
  }
  CHECK(current_memory_category() == MemoryCategory::Other);
  void* act = a.allocate(10 * MiB, MemoryCategory::Activations);
  AllocatorStats s = a.stats();
  CHECK(s.by_category[size_t(MemoryCategory::Parameters)] == 4 * MiB);
  CHECK(s.by_category[size_t(MemoryCategory::Gradients)] == 4 * MiB);
  CHECK(s.by_category[size_t(MemoryCategory::OptimizerState)] == 8 * MiB);
  CHECK(s.by_category[size_t(MemoryCategory::Activations)] == 10 * MiB);
  CHECK(s.allocated == 26 * MiB);
  a.free(act);
  s = a.stats();
  CHECK(s.by_category[size_t(MemoryCategory::Activations)] == 0);
  CHECK(s.peak_by_category[size_t(MemoryCategory::Activations)] == 10 * MiB);
  CHECK(s.peak_allocated == 26 * MiB);
  CHECK(s.allocated == 16 * MiB);
  a.reset_peaks();
  CHECK(a.stats().peak_allocated == 16 * MiB);
  const std::string report = memory_report(a.stats(), 80 * 1024 * MiB);
  CHECK(report.find("optimizer state") != std::string::npos);
  CHECK(report.find("0.008 GiB") != std::string::npos);   // 8 MiB of optimizer state
  CHECK(report.find("= allocated") != std::string::npos);
  CHECK(report.find("device total") != std::string::npos);
  for (void* p : {w, g, m}) a.free(p);
}

TEST_CASE("caching allocator: out of memory returns the cache, then reports what is held", "[allocator]") {
  Backend dev;
  dev.limit = 16 * MiB;
  CachingAllocator a = dev.make("lower training.micro_batch_size or set training.recompute: full.");
  void* p = a.allocate(6 * MiB, MemoryCategory::Activations);
  void* q = a.allocate(6 * MiB, MemoryCategory::Activations);
  a.free(q);  // 6 MiB cached, 12 MiB held from the device
  // 8 MiB does not fit in the 6 MiB block nor beside the 12 MiB: the cache is
  // returned and the request retried, successfully.
  void* r = a.allocate(8 * MiB, MemoryCategory::Parameters);
  CHECK(a.stats().cache_flushes == 1);
  CHECK(dev.in_use == 14 * MiB);
  a.check_invariants();
  // Now nothing can be returned: a clear error, and the allocator still works.
  try {
    a.allocate(4 * MiB, MemoryCategory::Gradients);
    FAIL("expected an out-of-memory error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("out of memory on test device") != std::string::npos);
    CHECK(msg.find("for gradients") != std::string::npos);
    CHECK(msg.find("activations 0.006 GiB") != std::string::npos);
    CHECK(msg.find("parameters 0.008 GiB") != std::string::npos);
    CHECK(msg.find("training.micro_batch_size") != std::string::npos);
  }
  a.check_invariants();
  a.free(p);
  a.free(r);
  void* s = a.allocate(4 * MiB, MemoryCategory::Gradients);  // fits in a cached block now
  a.free(s);
  a.check_invariants();
}

TEST_CASE("caching allocator: random traffic keeps blocks disjoint and the books balanced", "[allocator]") {
  Backend dev;
  CachingAllocator a = dev.make();
  std::mt19937_64 rng(7);
  std::map<char*, size_t> live;  // pointer -> requested size
  for (int i = 0; i < 4000; ++i) {
    if (live.empty() || rng() % 100 < 55) {
      const size_t n = rng() % 4 == 0 ? 1 + rng() % (20 * MiB) : 1 + rng() % (64 * 1024);
      char* p = static_cast<char*>(a.allocate(n, static_cast<MemoryCategory>(rng() % kMemoryCategories)));
      // Disjoint from every live block (checked against its neighbours in address order).
      const auto next = live.lower_bound(p);
      if (next != live.end()) REQUIRE(p + n <= next->first);
      if (next != live.begin()) REQUIRE(std::prev(next)->first + std::prev(next)->second <= p);
      std::memset(p, 0xab, std::min<size_t>(n, 256));  // the memory is really there
      live[p] = n;
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      a.free(it->first);
      live.erase(it);
    }
    if (i % 200 == 0) a.check_invariants();
  }
  for (auto& [p, n] : live) a.free(p);
  a.check_invariants();
  const AllocatorStats s = a.stats();
  CHECK(s.allocated == 0);
  CHECK(s.requested == 0);
  // The cache serves most requests: this traffic (seed 7) reaches the device
  // 111 times for 2245 requests (measured); without a cache it would be every
  // time. A quarter leaves room for policy changes, not for a cache that stops caching.
  CHECK(s.raw_allocations < s.allocations / 4);
  CHECK(dev.in_use == s.reserved);
  a.release_cached();
  CHECK(dev.in_use == 0);
}

TEST_CASE("caching allocator: frees held while two streams overlap are reused only after the release",
          "[allocator]") {
  Backend dev;
  CachingAllocator a = dev.make();
  void* before = a.allocate(4096, MemoryCategory::Workspace);
  a.free(before);  // freed before the fork: reusable inside it
  a.hold_frees();
  void* inside = a.allocate(4096, MemoryCategory::Workspace);
  CHECK(inside == before);
  void* big = a.allocate(8 * MiB, MemoryCategory::Activations);
  a.free(inside);
  a.free(big);
  // Held: still allocated, and never handed out again, to either size class.
  AllocatorStats s = a.stats();
  CHECK(s.allocated == 4096 + 8 * MiB);
  CHECK(s.held == 4096 + 8 * MiB);
  CHECK(s.frees == 1);
  a.check_invariants();
  void* again = a.allocate(4096, MemoryCategory::Workspace);
  void* again_big = a.allocate(8 * MiB, MemoryCategory::Activations);
  CHECK(again != inside);
  CHECK(again_big != big);
  CHECK_THROWS_AS(a.free(inside), std::logic_error);  // a held pointer freed twice is still a double free
  // Nested holds release at the outermost release only.
  a.hold_frees();
  a.release_held_frees();
  CHECK(a.stats().held == 4096 + 8 * MiB);
  a.release_held_frees();
  s = a.stats();
  CHECK(s.held == 0);
  CHECK(s.allocated == 4096 + 8 * MiB);  // again and again_big
  CHECK(s.frees == 3);
  a.check_invariants();
  // Released: the held blocks serve the next requests.
  void* reused = a.allocate(4096, MemoryCategory::Workspace);
  CHECK(reused == inside);
  a.free(reused);
  a.free(again);
  a.free(again_big);
  CHECK_THROWS_AS(a.release_held_frees(), std::logic_error);  // no hold open
  CHECK(a.stats().allocated == 0);
  a.check_invariants();
}

TEST_CASE("caching allocator: out of memory while frees are held waits for the device and frees them",
          "[allocator]") {
  Backend dev;
  dev.limit = 12 * MiB;
  CachingAllocator a = dev.make();
  int syncs = 0;
  a.hold_frees();
  void* first = a.allocate(8 * MiB, MemoryCategory::Activations);
  a.free(first);  // held: its 8 MiB segment cannot serve the next request yet
  // Without a way to wait for the device, the held memory stays held: out of memory.
  CHECK_THROWS_AS(a.allocate(8 * MiB, MemoryCategory::Activations), deco::Error);
  a.set_synchronize([&] { ++syncs; });
  void* second = a.allocate(8 * MiB, MemoryCategory::Activations);
  CHECK(syncs == 1);
  CHECK(dev.in_use <= dev.limit);  // the held block's memory, freed after the wait and given again
  CHECK(a.stats().held == 0);
  a.check_invariants();
  a.free(second);  // still inside the hold: held again
  CHECK(a.stats().held == 8 * MiB);
  a.release_held_frees();
  CHECK(a.stats().allocated == 0);
  a.check_invariants();
}

// core/tensor.h's HostStaging on host tensors (copied at once); the device
// side (pinned memory, an event) is checked by tests/gpu (host_staging).
#include "core/tensor.h"

TEST_CASE("HostStaging: the fetched tensors' values, and a larger fetch after a smaller one", "[core]") {
  HostStaging staging;
  Buffer counts(DType::I64, Device::CPU, Shape{5}), stats(DType::F64, Device::CPU, Shape{3});
  for (int64_t i = 0; i < 5; ++i) counts.data<int64_t>()[i] = 10 * i + 1;
  for (int64_t i = 0; i < 3; ++i) stats.data<double>()[i] = 0.5 + i;
  staging.fetch({&counts.tensor(), &stats.tensor()});
  counts.data<int64_t>()[0] = -7;  // host tensors are copied at fetch: later writes do not show
  staging.wait();
  for (int64_t i = 0; i < 5; ++i) CHECK(staging.data<int64_t>(0)[i] == 10 * i + 1);
  for (int64_t i = 0; i < 3; ++i) CHECK(staging.data<double>(1)[i] == 0.5 + i);
  CHECK_THROWS(staging.data<double>(2));  // only two tensors were fetched
  Buffer big(DType::F64, Device::CPU, Shape{1000});
  for (int64_t i = 0; i < 1000; ++i) big.data<double>()[i] = static_cast<double>(i) / 3.0;
  staging.fetch({&big.tensor()});
  staging.wait();
  for (int64_t i = 0; i < 1000; ++i) CHECK(staging.data<double>(0)[i] == static_cast<double>(i) / 3.0);
}

TEST_CASE("caching allocator: with caching off every block is its own device allocation, freed at once",
          "[allocator]") {
  Backend dev;
  {
    CachingAllocator a = dev.make();
    void* cached = a.allocate(3000, MemoryCategory::Activations);
    a.free(cached);
    REQUIRE(dev.blocks.size() == 1);  // the small pool's 2 MiB segment, kept
    a.set_caching(false);             // hands it back
    CHECK(dev.blocks.empty());
    // Each block its own raw allocation, of the bytes asked for (counted
    // rounded to 512, as ever).
    const size_t sizes[] = {3000, 700 * 1024, 5 * MiB + 1, 64};
    const int64_t calls_before = dev.calls;
    for (int step = 0; step < 3; ++step) {
      std::vector<void*> live;
      for (size_t s : sizes) {
        live.push_back(a.allocate(s, MemoryCategory::Activations));
        CHECK(dev.blocks.at(live.back()) == s);
        CHECK(a.block_size(live.back()) == (s + 511) / 512 * 512);
      }
      CHECK(dev.blocks.size() == 4);
      a.check_invariants();
      // Held frees (two streams overlapping) stay allocated until released.
      a.hold_frees();
      a.free(live[0]);
      CHECK(dev.blocks.count(live[0]) == 1);
      a.release_held_frees();
      CHECK(dev.blocks.count(live[0]) == 0);
      for (size_t i = 1; i < live.size(); ++i) a.free(live[i]);
      CHECK(dev.blocks.empty());
      a.check_invariants();
    }
    CHECK(dev.calls - calls_before == 12);
    const AllocatorStats s = a.stats();
    CHECK(s.allocated == 0);
    CHECK(s.reserved == 0);
  }
  CHECK(dev.in_use == 0);
}
