#include "core/profile.h"

#include <chrono>
#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "core/stream.h"

#ifdef DECO_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace deco::profile {
namespace {

using Clock = std::chrono::steady_clock;

thread_local int open_regions = 0;

// One region's record: its name and either two events or two clock readings.
struct Span {
  const char* name = nullptr;
  int depth = 0;
  void* start = nullptr;
  void* stop = nullptr;
  Clock::time_point t0, t1;
};

struct State {
  std::mutex mutex;
  bool on = false;
  Device device = Device::CPU;
  std::vector<Span> spans;
  std::vector<void*> free_events;  // recycled cudaEvent_t
};
State& state() {
  static State* s = new State;  // never destroyed: events outlive static teardown order concerns
  return *s;
}

#ifdef DECO_WITH_CUDA
void* take_event(State& s) {
  if (!s.free_events.empty()) {
    void* e = s.free_events.back();
    s.free_events.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  check_cuda(cudaEventCreate(&e), "cudaEventCreate");
  return e;
}
void record(void* event) {
  check_cuda(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(cuda_current_stream())),
             "cudaEventRecord");
}
#endif

}  // namespace

void enable(bool on, Device device) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.on = false;
  }
  collect();  // drops (and recycles) what an earlier recording left
  std::lock_guard<std::mutex> lock(s.mutex);
  s.on = on;
  s.device = device;
#ifndef DECO_WITH_CUDA
  if (on && device == Device::CUDA) fail("profiling GPU work needs the CUDA backend; this deco binary has none.");
#endif
}

bool enabled() { return state().on; }

void Region::begin(const char* name) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.on) return;
  Span span;
  span.name = name;
  span.depth = open_regions++;
#ifdef DECO_WITH_CUDA
  if (s.device == Device::CUDA) {
    span.start = take_event(s);
    span.stop = take_event(s);
    record(span.start);
  }
#endif
  if (s.device == Device::CPU) span.t0 = Clock::now();
  index_ = static_cast<int64_t>(s.spans.size());
  s.spans.push_back(span);
}

void Region::end() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  --open_regions;
  if (index_ >= static_cast<int64_t>(s.spans.size())) return;  // collected in between
  Span& span = s.spans[static_cast<size_t>(index_)];
#ifdef DECO_WITH_CUDA
  if (span.stop != nullptr) record(span.stop);
#endif
  if (span.stop == nullptr) span.t1 = Clock::now();
}

std::vector<Entry> collect() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::vector<Entry> out;
  std::unordered_map<std::string, size_t> where;
  for (Span& span : s.spans) {
    double seconds = 0;
#ifdef DECO_WITH_CUDA
    if (span.start != nullptr) {
      float ms = 0;
      check_cuda(cudaEventSynchronize(static_cast<cudaEvent_t>(span.stop)), "cudaEventSynchronize");
      check_cuda(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(span.start), static_cast<cudaEvent_t>(span.stop)),
                 "cudaEventElapsedTime");
      seconds = ms * 1e-3;
      s.free_events.push_back(span.start);
      s.free_events.push_back(span.stop);
    }
#endif
    if (span.start == nullptr) seconds = std::chrono::duration<double>(span.t1 - span.t0).count();
    auto [it, fresh] = where.emplace(span.name, out.size());
    if (fresh) out.push_back(Entry{span.name, 0, 0, span.depth});
    out[it->second].seconds += seconds;
    ++out[it->second].calls;
  }
  s.spans.clear();
  return out;
}

}  // namespace deco::profile
