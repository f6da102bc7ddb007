// Where a training step's time goes, region by region, for `deco bench
// --profile`. A Region names a span of the work queued on the current
// stream (core/stream.h): on a GPU two CUDA events recorded there, read
// after the step (no region waits for the GPU, so the step runs as it
// would); on the CPU, whose ops return when done, the wall clock. Off by
// default, when a Region costs one branch. Regions nest: a region's time
// includes its children's, and the report is per name, summed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace deco::profile {

// Starts (or stops) recording, for work on `device`; clears what was recorded.
void enable(bool on, Device device = Device::CPU);
bool enabled();

class Region {
 public:
  explicit Region(const char* name) {
    if (enabled()) begin(name);
  }
  ~Region() {
    if (index_ >= 0) end();
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

 private:
  void begin(const char* name);
  void end();
  int64_t index_ = -1;
};

struct Entry {
  std::string name;
  double seconds = 0;  // summed over the region's calls
  int64_t calls = 0;
  int depth = 0;  // regions open around its first call (for indenting a report)
};
// The regions recorded since enable() or the last collect(), in the order
// their names first began; waits for the GPU's events. Clears the record.
// Call it with no region open (between steps).
std::vector<Entry> collect();

}  // namespace deco::profile
