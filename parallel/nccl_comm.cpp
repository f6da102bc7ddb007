#include "parallel/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/stream.h"
#include "parallel/collective_args.h"
#include "parallel/mpi_runtime.h"

namespace deco {
namespace {

// A failed NCCL or CUDA call leaves the group's ranks at different points of
// a collective, so it ends the job (after aborting the NCCL communicator,
// which releases peers blocked on this rank's kernels) instead of throwing.
[[noreturn]] void end_job(ncclComm_t comm, const std::string& message) {
  if (comm != nullptr) ncclCommAbort(comm);
  abort_job(message, 1);
}

void nccl_check(ncclResult_t status, const char* call, const char* file, int line, ncclComm_t comm,
                const std::string& group) {
  if (status == ncclSuccess) return;
  const char* detail = comm != nullptr ? ncclGetLastError(comm) : "";
  end_job(comm, str("NCCL error at ", file, ":", line, ": ", call, " on the ", group, " group returned '",
                    ncclGetErrorString(status), "'", (detail && *detail ? str(" (", detail, ")") : ""),
                    "; rerun with NCCL_DEBUG=WARN for NCCL's account, and check the GPUs (nvidia-smi) and "
                    "the network between the nodes."));
}

void cuda_check(cudaError_t status, const char* call, const char* file, int line, ncclComm_t comm,
                const std::string& group) {
  if (status == cudaSuccess) return;
  end_job(comm, str("CUDA error at ", file, ":", line, ": ", call, " for the ", group, " group returned '",
                    cudaGetErrorString(status), "'; check the GPU's state with nvidia-smi."));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
  }
  internal_error(__FILE__, __LINE__, "NcclComm: unknown dtype");
}

// cudaEventQuery, without leaving its "not ready" behind as the thread's
// last error: CUDA runtimes have recorded it there, and every kernel launch
// is checked with cudaGetLastError, so the first launch after a collective
// that was still running when polled would fail with "device not ready"
// (PyTorch clears it the same way). A different error waiting there is
// returned instead, not swallowed.
cudaError_t query_event(cudaEvent_t event) {
  const cudaError_t state = cudaEventQuery(event);
  if (state != cudaErrorNotReady) return state;
  const cudaError_t last = cudaGetLastError();
  return last == cudaSuccess || last == cudaErrorNotReady ? cudaErrorNotReady : last;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclMax; }

char* byte_ptr(const Tensor& t, int64_t element) {
  return static_cast<char*>(t.raw()) + static_cast<size_t>(element) * dtype_size(t.dtype());
}

class NcclComm final : public Communicator {
 public:
  NcclComm(ncclComm_t comm, int64_t rank, int64_t size, std::string name, cudaStream_t compute_stream,
           NcclStream stream);
  ~NcclComm() override;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int64_t rank() const override { return rank_; }
  int64_t size() const override { return size_; }
  std::string name() const override { return name_; }

  void all_reduce(const Tensor& x, ReduceOp op) override;
  void reduce_scatter(const Tensor& out, const Tensor& in) override;
  void all_gather(const Tensor& out, const Tensor& in) override;
  void all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                  const std::vector<int64_t>& send_counts) override;
  void broadcast(const Tensor& x, int64_t root) override;
  void barrier() override;
  std::unique_ptr<PendingCollective> all_reduce_async(const Tensor& x, ReduceOp op) override;
  std::unique_ptr<PendingCollective> reduce_async(const Tensor& x, int64_t root) override;

  // Polls `event` (recorded on the stream after `collective`) until it has
  // completed, checking NCCL's asynchronous errors and the timeout.
  void poll(cudaEvent_t event, const char* collective);
  // One look at `event`: true once it has completed, false while not; an
  // error ends the job (aborting the communicator) instead of hiding it.
  bool reached(cudaEvent_t event) {
    const cudaError_t state = query_event(event);
    if (state == cudaErrorNotReady) return false;
    cuda_check(state, "cudaEventQuery(event)", __FILE__, __LINE__, comm_, name_);
    return true;
  }

 private:
  // The communicator's stream waits for the work queued so far on the compute stream.
  void after_compute();
  // Host tensors pass through device buffers: `stage` returns the device
  // view of `t` (copying host data in when `copy_in`), `unstage` copies a
  // staged result back after the collective has completed.
  Tensor stage(const Tensor& t, Buffer& staging, bool copy_in);
  void unstage(const Tensor& host, const Tensor& staged);
  // Blocks until everything enqueued on the stream has completed, polling
  // for NCCL errors and the collective timeout.
  void wait(const char* collective);
  // What an async collective just enqueued returns: an event after it on the stream.
  std::unique_ptr<PendingCollective> pending(const char* collective);

  ncclComm_t comm_;
  int64_t rank_, size_;
  std::string name_;
  cudaStream_t compute_;  // where the inputs are produced
  NcclStream owned_;      // the (non-blocking) stream it enqueues on: its own, or shared
  cudaStream_t stream_;   // owned_.get()
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  Buffer staging_in_, staging_out_;  // device memory for host tensors
};

#define DECO_NCCL_CALL(call) nccl_check((call), #call, __FILE__, __LINE__, comm_, name_)
#define DECO_CUDA_CALL(call) cuda_check((call), #call, __FILE__, __LINE__, comm_, name_)

NcclComm::NcclComm(ncclComm_t comm, int64_t rank, int64_t size, std::string name, cudaStream_t compute_stream,
                   NcclStream stream)
    : comm_(comm),
      rank_(rank),
      size_(size),
      name_(std::move(name)),
      compute_(compute_stream),
      owned_(stream ? std::move(stream) : make_nccl_stream()),
      stream_(owned_.get()) {
  // Timing is not needed, and an event without it is cheaper to record.
  DECO_CUDA_CALL(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  DECO_CUDA_CALL(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
}

NcclComm::~NcclComm() {
  // Destructors do not end the job: errors here would surface at the next call.
  if (done_ != nullptr) cudaEventDestroy(done_);
  if (ready_ != nullptr) cudaEventDestroy(ready_);
  ncclCommDestroy(comm_);
  // owned_ destroys the stream after this, when no other communicator shares it.
}

void NcclComm::after_compute() {
  // The legacy stream's work, or (nullptr) the calling thread's current stream's.
  DECO_CUDA_CALL(cudaEventRecord(ready_, compute_ ? compute_ : static_cast<cudaStream_t>(cuda_current_stream())));
  DECO_CUDA_CALL(cudaStreamWaitEvent(stream_, ready_, 0));
}

Tensor NcclComm::stage(const Tensor& t, Buffer& staging, bool copy_in) {
  if (t.device() == Device::CUDA) return t;
  staging.ensure(t.dtype(), Device::CUDA, Shape{t.numel()});
  // A buffer ensure() allocated (possibly at the old address) is zero-filled
  // on the calling thread's current stream (core/stream.h), which this
  // non-blocking stream does not wait for by itself: wait for it every time
  // (host tensors are the slow path anyway).
  DECO_CUDA_CALL(cudaEventRecord(ready_, static_cast<cudaStream_t>(cuda_current_stream())));
  DECO_CUDA_CALL(cudaStreamWaitEvent(stream_, ready_, 0));
  if (copy_in && t.numel() > 0)
    DECO_CUDA_CALL(cudaMemcpyAsync(staging.tensor().raw(), t.raw(), t.nbytes(), cudaMemcpyHostToDevice, stream_));
  return staging.tensor();
}

void NcclComm::unstage(const Tensor& host, const Tensor& staged) {
  if (host.device() == Device::CUDA || host.numel() == 0) return;
  // After wait(): the stream is idle, so this synchronous copy cannot hang.
  DECO_CUDA_CALL(cudaMemcpyAsync(host.raw(), staged.raw(), host.nbytes(), cudaMemcpyDeviceToHost, stream_));
  DECO_CUDA_CALL(cudaStreamSynchronize(stream_));
}

void NcclComm::wait(const char* collective) {
  DECO_CUDA_CALL(cudaEventRecord(done_, stream_));
  poll(done_, collective);
}

void NcclComm::poll(cudaEvent_t event, const char* collective) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    // NCCL's asynchronous error before the event: one that NCCL reports is
    // never passed over because the stream's work completed anyway.
    ncclResult_t async_error = ncclSuccess;
    DECO_NCCL_CALL(ncclCommGetAsyncError(comm_, &async_error));
    if (async_error != ncclSuccess && async_error != ncclInProgress)
      nccl_check(async_error, collective, __FILE__, __LINE__, comm_, name_);
    if (reached(event)) return;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double timeout = collective_timeout();
    if (timeout > 0 && waited >= timeout) end_job(comm_, stalled_collective_message(collective, name_, waited));
    // Spin for the first 20 ms (the expert exchange and gradient buckets
    // take microseconds to milliseconds, several times per layer, on the
    // step's critical path: a sleep's overshoot would add to each), then
    // poll at 50 us to leave the core to others.
    if (waited < 0.02)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclComm::all_reduce(const Tensor& x, ReduceOp op) {
  after_compute();
  const Tensor dx = stage(x, staging_in_, true);
  DECO_NCCL_CALL(ncclAllReduce(dx.raw(), dx.raw(), static_cast<size_t>(dx.numel()), nccl_type(dx.dtype()),
                               nccl_op(op), comm_, stream_));
  wait("all_reduce");
  unstage(x, dx);
}

// An all_reduce_async or reduce_async in flight: the event after it on the communicator's stream.
class NcclPending final : public PendingCollective {
 public:
  NcclPending(NcclComm* comm, cudaEvent_t done, const char* collective)
      : comm_(comm), done_(done), collective_(collective) {}
  ~NcclPending() override {
    // Never leave NCCL writing into memory that may be reused: wait, but
    // against the collective timeout (poll ends the job past it) rather
    // than without a bound; an error it reports is swallowed here (the
    // destructor may run while another one unwinds).
    if (!waited_) {
      try {
        comm_->poll(done_, collective_);
      } catch (...) {
      }
    }
    cudaEventDestroy(done_);
  }
  void wait() override {
    if (!waited_) comm_->poll(done_, collective_);
    waited_ = true;
  }
  bool test() override {
    if (waited_) return true;
    waited_ = comm_->reached(done_);
    return waited_;
  }

 private:
  NcclComm* comm_;
  cudaEvent_t done_;
  const char* collective_;
  bool waited_ = false;
};

std::unique_ptr<PendingCollective> NcclComm::all_reduce_async(const Tensor& x, ReduceOp op) {
  if (x.device() != Device::CUDA) return Communicator::all_reduce_async(x, op);  // staged: blocking
  after_compute();
  DECO_NCCL_CALL(ncclAllReduce(x.raw(), x.raw(), static_cast<size_t>(x.numel()), nccl_type(x.dtype()), nccl_op(op),
                               comm_, stream_));
  return pending("all_reduce");
}

std::unique_ptr<PendingCollective> NcclComm::pending(const char* collective) {
  cudaEvent_t done = nullptr;
  DECO_CUDA_CALL(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  DECO_CUDA_CALL(cudaEventRecord(done, stream_));
  return std::make_unique<NcclPending>(this, done, collective);
}

std::unique_ptr<PendingCollective> NcclComm::reduce_async(const Tensor& x, int64_t root) {
  if (x.device() != Device::CUDA) return Communicator::reduce_async(x, root);  // staged: a blocking all-reduce
  DECO_ASSERT(root >= 0 && root < size_, "reduce_async: root ", root, " of a group of ", size_);
  after_compute();
  DECO_NCCL_CALL(ncclReduce(x.raw(), x.raw(), static_cast<size_t>(x.numel()), nccl_type(x.dtype()), ncclSum,
                            static_cast<int>(root), comm_, stream_));
  return pending("reduce");
}

void NcclComm::reduce_scatter(const Tensor& out, const Tensor& in) {
  after_compute();
  check_chunked_args(*this, "reduce_scatter", in, out);
  const Tensor din = stage(in, staging_in_, true);
  const Tensor dout = stage(out, staging_out_, false);
  DECO_NCCL_CALL(ncclReduceScatter(din.raw(), dout.raw(), static_cast<size_t>(out.numel()),
                                   nccl_type(out.dtype()), ncclSum, comm_, stream_));
  wait("reduce_scatter");
  unstage(out, dout);
}

void NcclComm::all_gather(const Tensor& out, const Tensor& in) {
  after_compute();
  check_chunked_args(*this, "all_gather", out, in);
  const Tensor din = stage(in, staging_in_, true);
  const Tensor dout = stage(out, staging_out_, false);
  DECO_NCCL_CALL(ncclAllGather(din.raw(), dout.raw(), static_cast<size_t>(in.numel()), nccl_type(in.dtype()),
                               comm_, stream_));
  wait("all_gather");
  unstage(out, dout);
}

void NcclComm::all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                          const std::vector<int64_t>& send_counts) {
  after_compute();
  check_all_to_all_args(*this, out, recv_counts, in, send_counts);
  const Tensor din = stage(in, staging_in_, true);
  const Tensor dout = stage(out, staging_out_, false);
  const ncclDataType_t type = nccl_type(in.dtype());
  // NCCL has no all-to-all-v: point-to-point pairs in one group, which NCCL
  // schedules together (a rank's pair with itself included).
  DECO_NCCL_CALL(ncclGroupStart());
  int64_t send_at = 0, recv_at = 0;
  for (int64_t p = 0; p < size_; ++p) {
    const int64_t send_n = send_counts[static_cast<size_t>(p)], recv_n = recv_counts[static_cast<size_t>(p)];
    if (send_n > 0)
      DECO_NCCL_CALL(ncclSend(byte_ptr(din, send_at), static_cast<size_t>(send_n), type, static_cast<int>(p),
                              comm_, stream_));
    if (recv_n > 0)
      DECO_NCCL_CALL(ncclRecv(byte_ptr(dout, recv_at), static_cast<size_t>(recv_n), type, static_cast<int>(p),
                              comm_, stream_));
    send_at += send_n;
    recv_at += recv_n;
  }
  DECO_NCCL_CALL(ncclGroupEnd());
  wait("all_to_all");
  unstage(out, dout);
}

void NcclComm::broadcast(const Tensor& x, int64_t root) {
  after_compute();
  check_root_arg(*this, root);
  const Tensor dx = stage(x, staging_in_, true);
  DECO_NCCL_CALL(ncclBroadcast(dx.raw(), dx.raw(), static_cast<size_t>(dx.numel()), nccl_type(dx.dtype()),
                               static_cast<int>(root), comm_, stream_));
  wait("broadcast");
  unstage(x, dx);
}

void NcclComm::barrier() {
  // NCCL has no barrier: an all-reduce of one element that every rank must
  // join, waited for.
  staging_out_.ensure(DType::I32, Device::CUDA, Shape{1});
  after_compute();  // after ensure(): its zero fill, on the legacy stream, is waited for too
  DECO_NCCL_CALL(ncclAllReduce(staging_out_.tensor().raw(), staging_out_.tensor().raw(), 1, ncclInt32, ncclSum,
                               comm_, stream_));
  wait("barrier");
}

}  // namespace

NcclStream make_nccl_stream() {
  // Non-blocking: a blocking stream would synchronize with the legacy
  // default stream and serialize every collective with the compute kernels.
  cudaStream_t stream = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags(&stream)",
             __FILE__, __LINE__, nullptr, "NCCL");
  return NcclStream(stream, [](cudaStream_t s) { cudaStreamDestroy(s); });
}

NcclLaunchOrder nccl_launch_order(int version, const char* user_setting) {
  constexpr int kImplicitOrderSince = 22600;  // NCCL 2.26.0
  if (version < kImplicitOrderSince) return NcclLaunchOrder::SharedStream;  // the variable means nothing there
  // Parsed as NCCL parses its integer variables (strtoll, base 0: "08" is 0 there).
  if (user_setting != nullptr && *user_setting != '\0' && std::strtoll(user_setting, nullptr, 0) == 0)
    return NcclLaunchOrder::SharedStream;  // the user turned it off: order them ourselves
  return NcclLaunchOrder::Implicit;
}

int nccl_runtime_version() {
  int version = 0;
  nccl_check(ncclGetVersion(&version), "ncclGetVersion(&version)", __FILE__, __LINE__, nullptr, "NCCL");
  return version;
}

std::string nccl_version_string(int version) {
  // Codes since 2.9 are major * 10000 + minor * 100 + patch; before, major * 1000 + minor * 100 + patch.
  const int major = version >= 10000 ? version / 10000 : version / 1000;
  const int minor = version >= 10000 ? version / 100 % 100 : version / 100 % 10;
  return str(major, ".", minor, ".", version % 100);
}

void use_nccl_launch_order(NcclLaunchOrder order) {
  // Overwriting: a user's non-zero value means the same, and an empty one
  // (which setenv without overwrite would keep) means 0 to NCCL.
  if (order == NcclLaunchOrder::Implicit) setenv("NCCL_LAUNCH_ORDER_IMPLICIT", "1", 1);
}

std::unique_ptr<Communicator> make_nccl_comm(Communicator& bootstrap, int device, cudaStream_t compute_stream,
                                             NcclStream stream) {
  const std::string group = bootstrap.name();
  cuda_check(cudaSetDevice(device), "cudaSetDevice(device)", __FILE__, __LINE__, nullptr, group);
  // The unique id is 128 opaque bytes; they travel as int32 words because
  // Communicator has no byte dtype.
  ncclUniqueId id{};
  static_assert(sizeof(id) % sizeof(int32_t) == 0, "ncclUniqueId is a whole number of int32 words");
  std::vector<int32_t> words(sizeof(id) / sizeof(int32_t));
  if (bootstrap.rank() == 0) {
    nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId(&id)", __FILE__, __LINE__, nullptr, group);
    std::memcpy(words.data(), &id, sizeof(id));
  }
  bootstrap.broadcast(Tensor(words.data(), DType::I32, Device::CPU, Shape{static_cast<int64_t>(words.size())}), 0);
  std::memcpy(&id, words.data(), sizeof(id));
  // Blocks until every rank has joined; they all have just passed the
  // broadcast above, which the watchdog guards.
  ncclComm_t comm = nullptr;
  nccl_check(ncclCommInitRank(&comm, static_cast<int>(bootstrap.size()), id, static_cast<int>(bootstrap.rank())),
             "ncclCommInitRank(&comm, size, id, rank)", __FILE__, __LINE__, nullptr, group);
  return std::make_unique<NcclComm>(comm, bootstrap.rank(), bootstrap.size(), group, compute_stream,
                                    std::move(stream));
}

}  // namespace deco
