// Collectives over NCCL, for device memory: the GPU backend's gradient
// reductions and expert-parallel token exchanges. Built only with the CUDA
// backend and NCCL (the build defines DECO_WITH_NCCL); see CMakeLists.txt.
//
// dtypes: F32, BF16, F64, I32, I64. Each collective runs on the
// communicator's stream (its own, or one shared with the process's other
// communicators: NcclLaunchOrder below), a non-blocking one, after an event recorded on
// the compute stream (so it is ordered after the kernels that produced its
// input without stopping the compute stream), and a blocking call returns
// once it has completed, waiting by polling:
// when NCCL reports an error, or when the wait exceeds collective_timeout()
// (parallel/mpi_runtime.h) because a peer failed or stopped, the NCCL
// communicator is aborted and the job ends with a message (abort_job).
// all_reduce_async returns at once: the reduction overlaps whatever the
// compute stream runs next, and its wait() polls like a blocking call.
// Host tensors are staged through device memory, so the host conveniences
// of Communicator (metric sums, all_to_all_counts) work too; bulk host data
// belongs on MpiComm (ByDeviceComm routes it there).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "parallel/comm.h"

namespace deco {

// The NCCL stream a communicator enqueues on: its own (null), or one that
// several communicators share (make_nccl_stream).
using NcclStream = std::shared_ptr<CUstream_st>;
NcclStream make_nccl_stream();

// A communicator over the ranks of `bootstrap` (an MpiComm, or a SelfComm
// for a single process), with the same ranks and name, on GPU `device`,
// ordered after the work of `compute_stream` (nullptr: the calling thread's
// current stream, core/stream.h, where deco's kernels run), enqueuing on
// `stream` (null: a stream of its own). Collective over `bootstrap`: its rank 0
// creates NCCL's unique id and broadcasts it through `bootstrap`.
std::unique_ptr<Communicator> make_nccl_comm(Communicator& bootstrap, int device, cudaStream_t compute_stream,
                                             NcclStream stream = nullptr);

// Several NCCL communicators on one GPU can deadlock when their kernels run
// in different orders on different ranks (a kernel of one waits for peers
// that are still inside a kernel of the other). NCCL's documented remedies,
// either of which this process uses when it creates more than one:
//   Implicit: NCCL 2.26 and later, with NCCL_LAUNCH_ORDER_IMPLICIT=1, order
//     the kernels of all communicators by their host-side launch order, which
//     is the same on every rank (one thread issues every collective, in
//     program order), and still run them concurrently (CUDA 12.3+);
//   SharedStream: older NCCL, or NCCL_LAUNCH_ORDER_IMPLICIT=0 set by the
//     user: every communicator enqueues on one stream, so the kernels run
//     one after another in that same host order (an expert exchange then
//     waits behind a gradient bucket queued before it).
enum class NcclLaunchOrder { Implicit, SharedStream };
// The rule: `version` is ncclGetVersion's code (2.26.0 is 22600),
// `user_setting` NCCL_LAUNCH_ORDER_IMPLICIT's value, or nullptr where unset.
NcclLaunchOrder nccl_launch_order(int version, const char* user_setting);
// The NCCL library's version code, and "2.28.9" from it.
int nccl_runtime_version();
std::string nccl_version_string(int version);
// Implicit: sets NCCL_LAUNCH_ORDER_IMPLICIT=1 (nccl_launch_order chose
// Implicit only where the variable is unset, empty or non-zero, and NCCL
// reads an empty one as 0); call before the first communicator is created
// (NCCL reads the variable once per process, at its first launch; a value
// in nccl.conf does not override the environment).
void use_nccl_launch_order(NcclLaunchOrder order);

}  // namespace deco
