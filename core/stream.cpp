#include "core/stream.h"

#include "core/caching_allocator.h"
#include "core/error.h"
#include "core/tensor.h"

#ifdef DECO_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace deco {
namespace {

thread_local void* current_stream = nullptr;

#ifdef DECO_WITH_CUDA
// `waiter` waits for the work queued on `signaler` so far, through `event`.
void order_after(void* waiter, void* event, void* signaler) {
  check_cuda(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(signaler)), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter), static_cast<cudaEvent_t>(event), 0),
             "cudaStreamWaitEvent");
}
#endif

}  // namespace

void* cuda_current_stream() { return current_stream; }

CudaStreamScope::CudaStreamScope(void* stream) : previous_(current_stream) { current_stream = stream; }
CudaStreamScope::~CudaStreamScope() { current_stream = previous_; }

#ifdef DECO_WITH_CUDA

SideStream::SideStream() {
  cudaStream_t s = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  stream_ = s;
  cudaEvent_t e = nullptr;
  check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  fork_event_ = e;
  check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
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
  order_after(stream_, fork_event_, origin_);
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
  order_after(origin_, join_event_, stream_);
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
