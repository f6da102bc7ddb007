#include "core/stream.h"

#include "core/caching_allocator.h"
#include "core/error.h"
#include "core/tensor.h"

#ifdef DECO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace deco {
namespace {

thread_local void* current_stream = nullptr;

#ifdef DECO_WITH_CUDA
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    fail("CUDA ", what, " failed: ", cudaGetErrorString(status),
         ". Rerun with CUDA_LAUNCH_BLOCKING=1 to see which kernel failed before it.");
}
#endif

}  // namespace

void* cuda_current_stream() { return current_stream; }

CudaStreamScope::CudaStreamScope(void* stream) : previous_(current_stream) { current_stream = stream; }
CudaStreamScope::~CudaStreamScope() { current_stream = previous_; }

#ifdef DECO_WITH_CUDA

SideStream::SideStream() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  stream_ = s;
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  fork_event_ = e;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  join_event_ = e;
}

SideStream::~SideStream() {
  try {
    join();
  } catch (...) {  // an error of earlier GPU work; the run is ending with its own message
  }
  cudaEventDestroy(static_cast<cudaEvent_t>(fork_event_));
  cudaEventDestroy(static_cast<cudaEvent_t>(join_event_));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void SideStream::fork() {
  DECO_ASSERT(!forked_, "SideStream::fork while a fork is open");
  origin_ = current_stream;
  check(cudaEventRecord(static_cast<cudaEvent_t>(fork_event_), static_cast<cudaStream_t>(origin_)),
        "cudaEventRecord");
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_), static_cast<cudaEvent_t>(fork_event_), 0),
        "cudaStreamWaitEvent");
  cuda_caching_allocator()->hold_frees();
  forked_ = true;
}

void SideStream::join() {
  if (!forked_) return;
  forked_ = false;
  // The hold ends whatever the CUDA calls do (an error of earlier work
  // surfaces here and is thrown after it).
  struct Release {
    ~Release() { cuda_caching_allocator()->release_held_frees(); }
  } release;
  check(cudaEventRecord(static_cast<cudaEvent_t>(join_event_), static_cast<cudaStream_t>(stream_)),
        "cudaEventRecord");
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(origin_), static_cast<cudaEvent_t>(join_event_), 0),
        "cudaStreamWaitEvent");
  // Every block freed since fork() was last used by work that what the
  // origin stream queues from now on waits for; the side stream queues
  // nothing more until the next fork(), which waits for the origin's work.
}

SideStream& thread_side_stream() {
  // Never destroyed: at exit the CUDA context goes away with its streams,
  // and cudaStreamDestroy from a destructor could run after the runtime's teardown.
  thread_local SideStream* side = new SideStream;
  return *side;
}

#else

SideStream& thread_side_stream() {
  fail("a second CUDA stream needs the CUDA backend; this deco binary was built without CUDA.");
}

SideStream::SideStream() {
  fail("a second CUDA stream needs the CUDA backend; this deco binary was built without CUDA.");
}
SideStream::~SideStream() = default;
void SideStream::fork() {}
void SideStream::join() {}

#endif

}  // namespace deco
