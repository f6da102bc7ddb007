// Which CUDA stream GPU work is queued on, and a second stream to run work
// beside it.
//
// Every kernel launch, cuBLAS/cuBLASLt call, memset and copy of the CUDA
// backend goes to cuda_current_stream(): the legacy default stream unless a
// CudaStreamScope on the calling thread names another. Code that runs ops
// does not pass streams around; it opens a scope.
//
// SideStream is how work forks onto a second stream and joins back:
//
//   side.fork();       // the side stream waits for what the current stream has queued
//   {
//     CudaStreamScope on_side(side.stream());
//     ...               // queued on the side stream, running beside what follows
//   }
//   ...                 // queued on the current stream
//   side.join();        // the current stream waits for everything queued on the side
//
// From fork() to join() the CUDA caching allocator holds back frees
// (CachingAllocator::hold_frees), so neither stream's allocations are handed
// a block the other stream's queued kernels may still use. Within the
// region, the two streams' work must touch disjoint memory, or memory only
// read by both; and memory one stream allocates there must not be passed
// to the other before the join. The DECO layer's shared expert is the one user
// (model/deco_ffn.cpp, model.moe_shared_expert_overlap).
#pragma once

namespace deco {

// A cudaStream_t (nullptr: the legacy default stream) as an opaque pointer,
// so code without CUDA headers can hold one.
void* cuda_current_stream();

class CudaStreamScope {
 public:
  explicit CudaStreamScope(void* stream);
  ~CudaStreamScope();
  CudaStreamScope(const CudaStreamScope&) = delete;
  CudaStreamScope& operator=(const CudaStreamScope&) = delete;

 private:
  void* previous_;
};

class SideStream {
 public:
  // A non-blocking stream (it does not synchronize with the legacy default
  // stream) and two events, on the calling thread's current GPU. Needs the
  // CUDA backend.
  SideStream();
  ~SideStream();  // joins a fork left open
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  // The side stream waits for the work queued so far on the current stream
  // (which join() will make wait in turn). At most one fork is open.
  void fork();
  // The stream that forked waits for all work queued on the side stream;
  // frees are handed back to the allocator. Does nothing when not forked.
  void join();
  bool forked() const { return forked_; }
  void* stream() const { return stream_; }

 private:
  void* stream_ = nullptr;
  void* fork_event_ = nullptr;
  void* join_event_ = nullptr;
  void* origin_ = nullptr;  // the stream that forked
  bool forked_ = false;
};

// The calling thread's side stream, created on first use and kept for the
// process lifetime (each stream also gets its own cuBLAS handle and
// cuBLASLt workspace, so one per thread rather than one per layer).
SideStream& thread_side_stream();

}  // namespace deco
