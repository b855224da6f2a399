// The NCCL backend of data-parallel training: the all-reduce of CUDA gradients (`mpirun -np N tlengine train
// --device cuda`). MPI (core/distributed.h) starts the processes and carries NCCL's unique id from rank 0 to the
// others; NCCL (in the CUDA toolkit) sums the gradient buckets on the GPUs.
//
// Streams and events, no host sync: a bucket's reduction runs on a communication stream of its own. start() records
// an event on the compute stream (cuda::stream()) after the bucket's gradients were copied in, and the
// communication stream waits for it (cudaStreamWaitEvent) before ncclAllReduce, so backward goes on while the bucket
// travels. wait_on_compute_stream() makes the compute stream wait for the reduction's event before the optimizer
// reads the gradients. The host only looks, once per step, whether the previous step's reductions ended
// (cudaEventQuery, and ncclCommGetAsyncError for NCCL's own errors): normally long done, so it never waits. A rank
// that died or hangs leaves them pending: after the deadline (--dist-timeout) the communicator is aborted
// (ncclCommAbort, which ends its kernels) and DistributedTimeout names this rank and the step, as the MPI path does.
//
// Only core/nccl.cpp includes nccl.h (TL_HAVE_NCCL, set by CMake when CUDA, MPI and libnccl are found). In a build
// without NCCL the class exists but its constructor throws a ValueError saying how to get it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/distributed.h"
#include "core/tensor.h"

namespace tl {

class NcclComm {
 public:
  static bool built_with_nccl();
  // Selects this process's GPU (the node-local rank modulo the visible devices, with cudaSetDevice: create it before
  // any other CUDA use, so that the stream, handles and model live there) and creates the communicator over `dist`'s
  // ranks (collective: every rank must create it). Also with one rank (no MPI needed then).
  explicit NcclComm(const Distributed& dist);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int device() const { return device_; }
  int world_size() const { return world_size_; }
  // Events for `slots` reductions in flight at once (one per gradient bucket); keeps those there are.
  void reserve(size_t slots);
  // The mean over the ranks of `t` (a contiguous CUDA tensor: float32, float64, bfloat16 or float16), in place,
  // queued after the work already on cuda::stream() (which wrote `t`) without blocking it. `slot` < reserve()'s.
  void start_mean(Tensor& t, size_t slot);
  // Work queued on cuda::stream() from now on runs after slot's reduction.
  void wait_on_compute_stream(size_t slot);
  // Once per step, after its reductions were started: waits (host) for the previous step's to end, normally at once;
  // throws DistributedTimeout after the deadline, or Error on an NCCL error, naming the previous step (`epoch`,
  // `step` 0-based, the previous ones are remembered), after aborting the communicator.
  void end_step(int epoch, int64_t step);
  // The same for the last step's reductions (at the end of a train phase, before anything waits for the GPU).
  void drain();

 private:
  void wait_recorded();
  struct Impl;  // NCCL and CUDA handles
  std::unique_ptr<Impl> impl_;
  int device_ = 0, world_size_ = 1;
};

}  // namespace tl
