// Collectives over NCCL, for device memory: the GPU backend's gradient
// reductions and expert-parallel token exchanges. Built only with the CUDA
// backend and NCCL (the build defines DECO_WITH_NCCL); see CMakeLists.txt.
//
// dtypes: F32, BF16, F64, I32, I64. Each collective runs on the
// communicator's own stream, a non-blocking one, after an event recorded on
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

#include "parallel/comm.h"

namespace deco {

// A communicator over the ranks of `bootstrap` (an MpiComm, or a SelfComm
// for a single process), with the same ranks and name, on GPU `device`,
// ordered after the work of `compute_stream` (nullptr: the calling thread's
// current stream, core/stream.h, where deco's kernels run). Collective over `bootstrap`: its rank 0
// creates NCCL's unique id and broadcasts it through `bootstrap`.
std::unique_ptr<Communicator> make_nccl_comm(Communicator& bootstrap, int device, cudaStream_t compute_stream);

}  // namespace deco
