#include "parallel/mpi_comm.h"

#include <algorithm>
#include <climits>

#include "core/error.h"
#include "parallel/collective_args.h"
#include "parallel/mpi_runtime.h"

namespace deco {
namespace {

// A failed MPI call leaves the group in an unknown state (some ranks may be
// inside the collective, others not), so it ends the job rather than throw.
void check_mpi(int status, const char* call, const char* file, int line, const std::string& group) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(status, text, &length);
  abort_job(str("MPI error at ", file, ":", line, ": ", call, " on the ", group, " group returned '",
                std::string(text, static_cast<size_t>(length)),
                "'; another rank or the network between the nodes has probably failed (see the other "
                "ranks' errors)."),
            1);
}

#define DECO_MPI_CHECK(call) check_mpi((call), #call, __FILE__, __LINE__, name_)

// The MPI type of a reduction's elements.
MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::BF16: break;
  }
  internal_error(__FILE__, __LINE__,
                 "MpiComm cannot reduce bfloat16 host tensors (MPI has no bfloat16 type); keep host "
                 "buffers in float32, or reduce device tensors through NcclComm");
}

// The MPI type of elements a collective only moves: bfloat16 travels as its 16 bits.
MPI_Datatype mpi_move_type(DType dtype) { return dtype == DType::BF16 ? MPI_UINT16_T : mpi_type(dtype); }

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX; }

void require_host(const Tensor& t, const char* collective) {
  DECO_ASSERT(t.device() == Device::CPU, collective, ": MpiComm moves host memory; CUDA tensors go through "
              "NcclComm (parallel/nccl_comm.h)");
}

// MPI counts and displacements are ints (Open MPI 4 has no large-count
// calls), so larger exchanges must be split by the caller.
int int_count(int64_t n, const char* collective) {
  DECO_ASSERT(n >= 0 && n <= INT_MAX, collective, ": ", n, " elements exceed MPI's count limit of 2^31 - 1; "
              "split the exchange");
  return static_cast<int>(n);
}

// Elements per MPI call for collectives over one contiguous buffer, which
// are split below MPI's int count limit (a large model's gradient buffer
// may exceed it).
constexpr int64_t kMaxChunk = int64_t{1} << 30;

char* byte_ptr(const Tensor& t, int64_t element) {
  return static_cast<char*>(t.raw()) + static_cast<size_t>(element) * dtype_size(t.dtype());
}

}  // namespace

MpiComm::MpiComm(MPI_Comm comm, std::string name)
    : comm_(comm), name_(std::move(name)), watchdog_name_(intern_group_name(name_)) {
  DECO_ASSERT(comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL, "MpiComm owns its communicator");
  int rank = 0, size = 0;
  DECO_MPI_CHECK(MPI_Comm_rank(comm_, &rank));
  DECO_MPI_CHECK(MPI_Comm_size(comm_, &size));
  rank_ = rank;
  size_ = size;
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm_);  // after MPI_Finalize there is nothing left to free
}

std::unique_ptr<MpiComm> MpiComm::world(const std::string& name) {
  MPI_Comm dup = MPI_COMM_NULL;
  CollectiveWait wait("MPI_Comm_dup", intern_group_name(name));
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &dup), "MPI_Comm_dup(MPI_COMM_WORLD, &dup)", __FILE__, __LINE__, name);
  return std::make_unique<MpiComm>(dup, name);
}

std::unique_ptr<MpiComm> MpiComm::split(int color, int key, const std::string& name) const {
  MPI_Comm sub = MPI_COMM_NULL;
  CollectiveWait wait("MPI_Comm_split", watchdog_name_);
  DECO_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_unique<MpiComm>(sub, name);
}

void MpiComm::all_reduce(const Tensor& x, ReduceOp op) {
  require_host(x, "all_reduce");
  const MPI_Datatype type = mpi_type(x.dtype());
  CollectiveWait wait("all_reduce", watchdog_name_);
  for (int64_t begin = 0; begin < x.numel(); begin += kMaxChunk) {
    const int count = static_cast<int>(std::min(kMaxChunk, x.numel() - begin));
    DECO_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, byte_ptr(x, begin), count, type, mpi_op(op), comm_));
  }
}

namespace {

class MpiPending final : public PendingCollective {
 public:
  MpiPending(std::vector<MPI_Request> requests, const char* collective, const char* group, std::string name)
      : requests_(std::move(requests)), collective_(collective), group_(group), name_(std::move(name)) {}
  ~MpiPending() override {
    // An abandoned request (an exception unwinding the step) must not be
    // left for MPI to write into freed memory: complete it first.
    if (!done_) MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  void wait() override {
    if (done_) return;
    CollectiveWait wait(collective_, group_);
    DECO_MPI_CHECK(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
    done_ = true;
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    DECO_MPI_CHECK(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag, MPI_STATUSES_IGNORE));
    done_ = flag != 0;
    return done_;
  }

 private:
  std::vector<MPI_Request> requests_;
  const char* collective_;  // "all_reduce", "reduce": what the watchdog names
  const char* group_;
  std::string name_;  // for DECO_MPI_CHECK's message
  bool done_ = false;
};

// A non-blocking collective over x in chunks of at most kMaxChunk elements
// (MPI counts are int): issue(first element, count, request) per chunk.
template <typename Issue> std::vector<MPI_Request> start_chunks(const Tensor& x, Issue&& issue) {
  std::vector<MPI_Request> requests;
  for (int64_t begin = 0; begin < x.numel(); begin += kMaxChunk) {
    requests.push_back(MPI_REQUEST_NULL);
    issue(begin, static_cast<int>(std::min(kMaxChunk, x.numel() - begin)), &requests.back());
  }
  return requests;
}

}  // namespace

std::unique_ptr<PendingCollective> MpiComm::all_reduce_async(const Tensor& x, ReduceOp op) {
  require_host(x, "all_reduce_async");
  const MPI_Datatype type = mpi_type(x.dtype());
  auto requests = start_chunks(x, [&](int64_t begin, int count, MPI_Request* request) {
    DECO_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, byte_ptr(x, begin), count, type, mpi_op(op), comm_, request));
  });
  return std::make_unique<MpiPending>(std::move(requests), "all_reduce", watchdog_name_, name_);
}

std::unique_ptr<PendingCollective> MpiComm::reduce_async(const Tensor& x, int64_t root) {
  require_host(x, "reduce_async");
  DECO_ASSERT(root >= 0 && root < size(), "reduce_async: root ", root, " of a group of ", size());
  const MPI_Datatype type = mpi_type(x.dtype());
  const bool at_root = rank() == root;
  auto requests = start_chunks(x, [&](int64_t begin, int count, MPI_Request* request) {
    // The root sums in place; the others only send (their x is left as it was).
    DECO_MPI_CHECK(MPI_Ireduce(at_root ? MPI_IN_PLACE : byte_ptr(x, begin), at_root ? byte_ptr(x, begin) : nullptr,
                               count, type, MPI_SUM, static_cast<int>(root), comm_, request));
  });
  return std::make_unique<MpiPending>(std::move(requests), "reduce", watchdog_name_, name_);
}

void MpiComm::reduce_scatter(const Tensor& out, const Tensor& in) {
  require_host(out, "reduce_scatter");
  require_host(in, "reduce_scatter");
  check_chunked_args(*this, "reduce_scatter", in, out);
  const int count = int_count(out.numel(), "reduce_scatter");
  int_count(in.numel(), "reduce_scatter");
  CollectiveWait wait("reduce_scatter", watchdog_name_);
  DECO_MPI_CHECK(MPI_Reduce_scatter_block(in.raw(), out.raw(), count, mpi_type(in.dtype()), MPI_SUM, comm_));
}

void MpiComm::all_gather(const Tensor& out, const Tensor& in) {
  require_host(out, "all_gather");
  require_host(in, "all_gather");
  check_chunked_args(*this, "all_gather", out, in);
  const int count = int_count(in.numel(), "all_gather");
  int_count(out.numel(), "all_gather");
  const MPI_Datatype type = mpi_move_type(in.dtype());
  CollectiveWait wait("all_gather", watchdog_name_);
  DECO_MPI_CHECK(MPI_Allgather(in.raw(), count, type, out.raw(), count, type, comm_));
}

void MpiComm::all_to_all(const Tensor& out, const std::vector<int64_t>& recv_counts, const Tensor& in,
                         const std::vector<int64_t>& send_counts) {
  require_host(out, "all_to_all");
  require_host(in, "all_to_all");
  check_all_to_all_args(*this, out, recv_counts, in, send_counts);
  // Counts and displacements (prefix sums) are ints for MPI_Alltoallv.
  std::vector<int> send_n(send_counts.size()), send_at(send_counts.size());
  std::vector<int> recv_n(recv_counts.size()), recv_at(recv_counts.size());
  int64_t send_total = 0, recv_total = 0;
  for (size_t p = 0; p < send_counts.size(); ++p) {
    send_n[p] = int_count(send_counts[p], "all_to_all");
    recv_n[p] = int_count(recv_counts[p], "all_to_all");
    send_at[p] = int_count(send_total, "all_to_all");
    recv_at[p] = int_count(recv_total, "all_to_all");
    send_total += send_counts[p];
    recv_total += recv_counts[p];
  }
  const MPI_Datatype type = mpi_move_type(in.dtype());
  CollectiveWait wait("all_to_all", watchdog_name_);
  DECO_MPI_CHECK(MPI_Alltoallv(in.raw(), send_n.data(), send_at.data(), type, out.raw(), recv_n.data(),
                               recv_at.data(), type, comm_));
}

void MpiComm::broadcast(const Tensor& x, int64_t root) {
  require_host(x, "broadcast");
  check_root_arg(*this, root);
  const MPI_Datatype type = mpi_move_type(x.dtype());
  CollectiveWait wait("broadcast", watchdog_name_);
  for (int64_t begin = 0; begin < x.numel(); begin += kMaxChunk) {
    const int count = static_cast<int>(std::min(kMaxChunk, x.numel() - begin));
    DECO_MPI_CHECK(MPI_Bcast(byte_ptr(x, begin), count, type, static_cast<int>(root), comm_));
  }
}

void MpiComm::barrier() {
  CollectiveWait wait("barrier", watchdog_name_);
  DECO_MPI_CHECK(MPI_Barrier(comm_));
}

}  // namespace deco
