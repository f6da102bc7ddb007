// The NCCL calls deco makes (parallel/nccl_comm.cpp), for the CUDA
// emulator: emulated device memory is host memory and every stream is
// program order (runtime.cpp), so each collective is performed when it is
// called, by MPI over the same buffers, and has completed when the call
// returns. A communicator of one rank copies; one of several is an MPI
// communicator split from MPI_COMM_WORLD by its unique id.
//
// What that asks of the program, and deco meets: every rank of the world
// creates its communicators in the same order (MPI_Comm_split is collective
// over the world; enable_device_collectives creates one per group kind on
// every rank), and every rank issues the collectives of its communicators
// in one host order, which NCCL asks too (nccl_comm.h). A rank that breaks
// it hangs here as it would on GPUs.
//
// Reductions: float32, float64, int32 and int64 by MPI's own operations;
// bfloat16 by an MPI operation that adds (or takes the larger of) two
// values in float32 and rounds the result to bfloat16, as NCCL's kernels do
// for each pair they combine.
#include <mpi.h>
#include <nccl.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"

struct ncclComm {
  int rank = 0, size = 1;
  MPI_Comm mpi = MPI_COMM_NULL;  // MPI_COMM_NULL for a communicator of one
  std::string last_error;
  ncclResult_t async_error = ncclSuccess;  // what ncclCommGetAsyncError reports
};

namespace {

constexpr uint32_t kIdMagic = 0xdec0e11u;

struct EmulatedId {
  uint32_t magic;
  int32_t creator;   // the creating process's world rank (0 without MPI)
  int32_t sequence;  // its count of ids created before this one
};
static_assert(sizeof(EmulatedId) <= sizeof(ncclUniqueId), "the emulated id fits in ncclUniqueId");

std::string process_error;  // for ncclGetLastError(nullptr)

ncclResult_t failed(ncclComm_t comm, ncclResult_t result, const std::string& why) {
  (comm ? comm->last_error : process_error) = "CUDA emulator's NCCL: " + why;
  std::fprintf(stderr, "%s\n", (comm ? comm->last_error : process_error).c_str());
  return result;
}

bool mpi_running() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

size_t type_size(ncclDataType_t type) {
  switch (type) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
  }
}

void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    b[i] = deco::float_to_bf16_bits(deco::bf16_bits_to_float(a[i]) + deco::bf16_bits_to_float(b[i]));
}

void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    if (deco::bf16_bits_to_float(a[i]) > deco::bf16_bits_to_float(b[i])) b[i] = a[i];
}

// The MPI datatype and operation of an NCCL reduction, or false where this
// emulation has none (the types and operations deco does not use).
bool mpi_reduction(ncclDataType_t type, ncclRedOp_t op, MPI_Datatype* dtype, MPI_Op* mop) {
  if (op != ncclSum && op != ncclMax) return false;
  switch (type) {
    case ncclFloat32: *dtype = MPI_FLOAT; break;
    case ncclFloat64: *dtype = MPI_DOUBLE; break;
    case ncclInt32: *dtype = MPI_INT32_T; break;
    case ncclInt64: *dtype = MPI_INT64_T; break;
    case ncclBfloat16: {
      static MPI_Op sum = MPI_OP_NULL, max = MPI_OP_NULL;
      if (sum == MPI_OP_NULL) {
        MPI_Op_create(&bf16_sum, 1, &sum);
        MPI_Op_create(&bf16_max, 1, &max);
      }
      *dtype = MPI_UINT16_T;
      *mop = op == ncclSum ? sum : max;
      return true;
    }
    default: return false;
  }
  *mop = op == ncclSum ? MPI_SUM : MPI_MAX;
  return true;
}

ncclResult_t not_emulated(ncclComm_t comm, const char* collective) {
  return failed(comm, ncclInvalidArgument, std::string(collective) + ": a type or operation not emulated");
}

// Counts pass to MPI as int; deco's buckets are far below the limit.
bool fits_int(size_t count) { return count <= static_cast<size_t>(INT_MAX); }

ncclResult_t mpi_result(ncclComm_t comm, int code, const char* call) {
  if (code == MPI_SUCCESS) return ncclSuccess;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  return failed(comm, ncclSystemError, std::string(call) + " failed: " + text);
}

// ncclSend and ncclRecv between ncclGroupStart and ncclGroupEnd, performed together at the end.
struct PointToPoint {
  bool send;
  void* buffer;
  size_t bytes;
  int peer;
  ncclComm_t comm;
};
int group_depth = 0;
std::vector<PointToPoint> group_ops;

ncclResult_t perform(const std::vector<PointToPoint>& ops) {
  std::vector<MPI_Request> requests;
  requests.reserve(ops.size());
  // Receives first, so a rank's send to itself finds its receive posted.
  for (bool send : {false, true})
    for (const PointToPoint& p : ops) {
      if (p.send != send) continue;
      if (p.comm->mpi == MPI_COMM_NULL) continue;  // a group of one: matched below
      requests.emplace_back();
      const int code = send ? MPI_Isend(p.buffer, static_cast<int>(p.bytes), MPI_BYTE, p.peer, 0, p.comm->mpi,
                                        &requests.back())
                            : MPI_Irecv(p.buffer, static_cast<int>(p.bytes), MPI_BYTE, p.peer, 0, p.comm->mpi,
                                        &requests.back());
      if (code != MPI_SUCCESS) return mpi_result(p.comm, code, send ? "MPI_Isend" : "MPI_Irecv");
    }
  // A communicator of one: each send pairs with the receive of the same rank, in order.
  std::vector<const PointToPoint*> self_sends, self_recvs;
  for (const PointToPoint& p : ops)
    if (p.comm->mpi == MPI_COMM_NULL) (p.send ? self_sends : self_recvs).push_back(&p);
  if (self_sends.size() != self_recvs.size())
    return failed(ops.front().comm, ncclInvalidUsage, "a send to itself without its receive, or the reverse");
  for (size_t i = 0; i < self_sends.size(); ++i) {
    if (self_sends[i]->bytes != self_recvs[i]->bytes)
      return failed(ops.front().comm, ncclInvalidUsage, "a send and a receive of different sizes");
    std::memmove(self_recvs[i]->buffer, self_sends[i]->buffer, self_sends[i]->bytes);
  }
  if (requests.empty()) return ncclSuccess;
  return mpi_result(ops.front().comm,
                    MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE),
                    "MPI_Waitall");
}

ncclResult_t point_to_point(bool send, const void* buffer, size_t count, ncclDataType_t type, int peer,
                            ncclComm_t comm) {
  if (comm == nullptr) return failed(nullptr, ncclInvalidArgument, "a null communicator");
  if (type_size(type) == 0 || !fits_int(count * type_size(type)) || peer < 0 || peer >= comm->size)
    return failed(comm, ncclInvalidArgument, "ncclSend/ncclRecv: invalid type, count or peer");
  PointToPoint p{send, const_cast<void*>(buffer), count * type_size(type), peer, comm};
  if (group_depth > 0) {
    group_ops.push_back(p);
    return ncclSuccess;
  }
  return perform({p});
}

// DECO_CUDA_EMULATOR_NCCL_FAIL=R:K: the K-th collective of world rank R
// (counting from 1, over all its communicators) fails as a network error
// does on GPUs: the call returns success, nothing moves, and the
// communicator's asynchronous error is set, so the caller learns of it by
// ncclCommGetAsyncError while its peers wait in the collective.
bool inject_failure(ncclComm_t comm, const char* name) {
  static const std::pair<int, long> target = [] {
    const char* v = std::getenv("DECO_CUDA_EMULATOR_NCCL_FAIL");
    int rank = -1;
    long k = 0;
    if (v && std::sscanf(v, "%d:%ld", &rank, &k) != 2) {
      std::fprintf(stderr, "CUDA emulator: DECO_CUDA_EMULATOR_NCCL_FAIL=%s: give RANK:K\n", v);
      std::exit(2);
    }
    return std::pair<int, long>{rank, k};
  }();
  static long calls = 0;
  if (target.first < 0) return false;
  static const int world_rank = [] {  // asked once a communicator exists, so MPI is running if it ever will
    int rank = 0;
    if (mpi_running()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
  }();
  if (world_rank != target.first || ++calls != target.second) return false;
  comm->async_error = ncclRemoteError;
  failed(comm, ncclRemoteError, std::string(name) + " failed: injected by DECO_CUDA_EMULATOR_NCCL_FAIL");
  return true;
}

// The checks every collective makes; false after recording the failure in
// `*result`, or (ncclSuccess) after an injected asynchronous failure.
bool collective_ok(ncclComm_t comm, const char* name, size_t count, ncclDataType_t type, ncclResult_t* result) {
  *result = ncclSuccess;
  if (comm == nullptr) {
    *result = failed(nullptr, ncclInvalidArgument, std::string(name) + ": a null communicator");
  } else if (group_depth > 0) {
    *result = failed(comm, ncclInvalidUsage,
                     std::string(name) + " inside ncclGroupStart/End: only ncclSend and ncclRecv are emulated there");
  } else if (type_size(type) == 0 || !fits_int(count) || !fits_int(count * type_size(type))) {
    *result = failed(comm, ncclInvalidArgument, std::string(name) + ": a type or count this emulation does not take");
  }
  return *result == ncclSuccess && !inject_failure(comm, name);
}

}  // namespace

extern "C" {

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) { return (comm ? comm->last_error : process_error).c_str(); }

ncclResult_t ncclGetVersion(int* version) {
  *version = NCCL_VERSION_CODE;  // the headers' version: the one deco's rules read
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  static int32_t sequence = 0;
  int creator = 0;
  if (mpi_running()) MPI_Comm_rank(MPI_COMM_WORLD, &creator);
  std::memset(id, 0, sizeof(*id));
  const EmulatedId e{kIdMagic, creator, sequence++};
  std::memcpy(id, &e, sizeof(e));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  EmulatedId e{};
  std::memcpy(&e, &id, sizeof(e));
  if (e.magic != kIdMagic)
    return failed(nullptr, ncclInvalidArgument, "ncclCommInitRank: not an id of ncclGetUniqueId");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return failed(nullptr, ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " +
                                                    std::to_string(nranks));
  auto* c = new ncclComm;
  c->rank = rank;
  c->size = nranks;
  if (nranks > 1) {
    if (!mpi_running()) {
      delete c;
      return failed(nullptr, ncclSystemError, "a communicator of several ranks needs MPI, and MPI is not running");
    }
    // Every world rank splits here, in the same order (see the top of this
    // file); the id's creator and sequence name the new group.
    const int color = static_cast<int>((static_cast<int64_t>(e.creator) * 65536 + e.sequence % 65536) % INT_MAX);
    const int code = MPI_Comm_split(MPI_COMM_WORLD, color, rank, &c->mpi);
    int size = 0, mine = -1;
    if (code == MPI_SUCCESS) {
      MPI_Comm_size(c->mpi, &size);
      MPI_Comm_rank(c->mpi, &mine);
    }
    if (code != MPI_SUCCESS || size != nranks || mine != rank) {
      delete c;
      return failed(nullptr, ncclInvalidUsage,
                    "ncclCommInitRank: the ranks that joined id (" + std::to_string(e.creator) + ", " +
                        std::to_string(e.sequence) + ") are not " + std::to_string(nranks) +
                        " with this one at rank " + std::to_string(rank));
    }
  }
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  if (comm->mpi != MPI_COMM_NULL && mpi_running()) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  // The job is ending (deco aborts only to release peers before
  // abort_job): the MPI communicator is left to MPI_Abort.
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr) return failed(nullptr, ncclInvalidArgument, "ncclCommGetAsyncError: a null communicator");
  *error = comm->async_error;  // ncclSuccess but after an injected failure: every call completed when it returned
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return failed(nullptr, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--group_depth > 0 || group_ops.empty()) return ncclSuccess;
  std::vector<PointToPoint> ops;
  ops.swap(group_ops);
  return perform(ops);
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t) {
  return point_to_point(true, sendbuff, count, type, peer, comm);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t) {
  return point_to_point(false, recvbuff, count, type, peer, comm);
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
  ncclResult_t result;
  if (!collective_ok(comm, "ncclAllReduce", count, type, &result)) return result;
  if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, count * type_size(type));
  if (comm->mpi == MPI_COMM_NULL || count == 0) return ncclSuccess;
  MPI_Datatype dtype;
  MPI_Op mop;
  if (!mpi_reduction(type, op, &dtype, &mop)) return not_emulated(comm, "ncclAllReduce");
  return mpi_result(comm, MPI_Allreduce(MPI_IN_PLACE, recvbuff, static_cast<int>(count), dtype, mop, comm->mpi),
                    "MPI_Allreduce");
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t type, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t) {
  ncclResult_t result;
  if (!collective_ok(comm, "ncclReduce", count, type, &result)) return result;
  if (root < 0 || root >= comm->size) return failed(comm, ncclInvalidArgument, "ncclReduce: root out of range");
  const size_t bytes = count * type_size(type);
  if (comm->mpi == MPI_COMM_NULL || count == 0) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
    return ncclSuccess;
  }
  MPI_Datatype dtype;
  MPI_Op mop;
  if (!mpi_reduction(type, op, &dtype, &mop)) return not_emulated(comm, "ncclReduce");
  if (comm->rank == root) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
    return mpi_result(comm, MPI_Reduce(MPI_IN_PLACE, recvbuff, static_cast<int>(count), dtype, mop, root, comm->mpi),
                      "MPI_Reduce");
  }
  // Off the root NCCL leaves recvbuff alone.
  return mpi_result(comm, MPI_Reduce(sendbuff, nullptr, static_cast<int>(count), dtype, mop, root, comm->mpi),
                    "MPI_Reduce");
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  ncclResult_t result;
  if (!collective_ok(comm, "ncclReduceScatter", recvcount * static_cast<size_t>(comm ? comm->size : 1), type,
                     &result))
    return result;
  const size_t bytes = recvcount * type_size(type);
  if (comm->mpi == MPI_COMM_NULL || recvcount == 0) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
    return ncclSuccess;
  }
  MPI_Datatype dtype;
  MPI_Op mop;
  if (!mpi_reduction(type, op, &dtype, &mop)) return not_emulated(comm, "ncclReduceScatter");
  // A copy of the input: NCCL's in-place form (recvbuff inside sendbuff at
  // the rank's chunk) is not MPI's.
  const auto* in = static_cast<const char*>(sendbuff);
  std::vector<char> copy(in, in + bytes * static_cast<size_t>(comm->size));
  return mpi_result(comm, MPI_Reduce_scatter_block(copy.data(), recvbuff, static_cast<int>(recvcount), dtype, mop,
                                                   comm->mpi),
                    "MPI_Reduce_scatter_block");
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t) {
  ncclResult_t result;
  if (!collective_ok(comm, "ncclAllGather", sendcount * static_cast<size_t>(comm ? comm->size : 1), type, &result))
    return result;
  const size_t bytes = sendcount * type_size(type);
  if (comm->mpi == MPI_COMM_NULL || sendcount == 0) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
    return ncclSuccess;
  }
  const auto* in = static_cast<const char*>(sendbuff);
  std::vector<char> copy(in, in + bytes);  // the in-place form reads from inside recvbuff
  return mpi_result(comm, MPI_Allgather(copy.data(), static_cast<int>(bytes), MPI_BYTE, recvbuff,
                                        static_cast<int>(bytes), MPI_BYTE, comm->mpi),
                    "MPI_Allgather");
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t) {
  ncclResult_t result;
  if (!collective_ok(comm, "ncclBroadcast", count, type, &result)) return result;
  if (root < 0 || root >= comm->size) return failed(comm, ncclInvalidArgument, "ncclBroadcast: root out of range");
  const size_t bytes = count * type_size(type);
  if (comm->rank == root && sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
  if (comm->mpi == MPI_COMM_NULL || count == 0) return ncclSuccess;
  return mpi_result(comm, MPI_Bcast(recvbuff, static_cast<int>(bytes), MPI_BYTE, root, comm->mpi), "MPI_Bcast");
}

}  // extern "C"
