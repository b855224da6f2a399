// Data-parallel processes: a small facade over MPI (`mpirun -np N tlengine train ...`).
//
// A Distributed object reads the environment: launched by an MPI launcher with more than one process
// (OpenMPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE of MPICH / Intel MPI / Slurm), it initialises MPI and knows this
// process's rank, the world size and the local rank (the rank among the processes of this machine: which GPU a
// later NCCL backend takes). Otherwise it is a single process (rank 0 of 1) and never calls MPI at all, also when
// the engine was built without MPI; a launch with several processes in a build without MPI is refused with a
// ValueError that says how to get it.
//
// Collectives (all ranks must call them in the same order, with the same sizes) work on contiguous CPU float32 /
// float64 tensors in place. Each one is non-blocking MPI (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) polled against
// a deadline: when another rank died or hangs, the call throws DistributedTimeout naming this rank, the operation
// (`what`, e.g. "all-reduce of the gradients at epoch 2 step 17") and the timeout. The caller then ends every rank
// with abort() (MPI_Abort), since the pending operation cannot be cancelled.
//
// The only state is the object's own and what MPI holds: create one per process (MPI can be initialised once).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace tl {

class DistributedTimeout : public Error {
 public:
  using Error::Error;
};

// Where training is, for the messages of the collectives a step makes ("... at epoch 2 step 17 timed out"):
// the trainer updates it before each step; 0-based, -1 outside a step (then the messages say nothing of it).
struct StepPosition {
  int epoch = -1;
  int64_t step = -1;
};

// What the launcher's environment says, without touching MPI: world size 1 when not launched by one.
struct LaunchInfo {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string launcher;  // "OpenMPI", "PMI" or "" (not launched)
};
// `getenv` is a parameter so that tests can feed an environment; the default reads the process's.
LaunchInfo launch_info_from_env(const char* (*getenv)(const char*) = nullptr);

// A non-blocking collective in flight (Distributed::start_all_reduce_sum, test, wait). It holds an MPI_Request,
// opaquely, so that only distributed.cpp includes mpi.h.
class CollectiveRequest {
 public:
  bool pending() const { return pending_; }

 private:
  friend class Distributed;
  alignas(8) unsigned char handle_[16] = {};
  bool pending_ = false;
};

class Distributed {
 public:
  // Single process: rank 0 of 1, no MPI.
  Distributed() = default;
  // From the environment (launch_info_from_env); initialises MPI when there is more than one process.
  // `timeout_s`: the longest a collective waits (--dist-timeout).
  static Distributed from_env(double timeout_s);
  ~Distributed();  // MPI_Finalize when this object initialised MPI
  Distributed(Distributed&& other) noexcept;
  Distributed& operator=(Distributed&&) = delete;
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  static bool built_with_mpi();

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  bool is_main() const { return rank_ == 0; }  // rank 0 writes the files and prints the log
  double timeout_s() const { return timeout_s_; }

  // Sum over the ranks, in place; the tensor must be on the CPU, contiguous, float32 or float64. No-op for 1 rank.
  void all_reduce_sum(Tensor& t, const std::string& what) const;
  void all_reduce_sum(std::vector<double>& values, const std::string& what) const;
  // The same on `n` doubles in place: no copy, no allocation (the --sync-bn sums, per layer and step). `at` (may be
  // null) names the step in a timeout's message, after `what`.
  void all_reduce_sum(double* values, size_t n, const std::string& what, const StepPosition* at = nullptr) const;
  // The same sum split in two, for reductions overlapped with other work (the gradient buckets during backward):
  // start_all_reduce_sum() starts it on `t` (which must stay alive and untouched until it ends), test() lets MPI
  // progress it (without an MPI progress thread a non-blocking collective advances only inside MPI calls) and says
  // whether it ended, wait() polls it to the end or the deadline (DistributedTimeout). Requests of all ranks must be
  // started in the same order. With 1 rank they end at once.
  void start_all_reduce_sum(Tensor& t, CollectiveRequest& request) const;
  bool test(CollectiveRequest& request) const;
  // `at` (may be null) names the step after `what` in a timeout's message (built only then).
  void wait(CollectiveRequest& request, const std::string& what, const StepPosition* at = nullptr) const;
  // Rank `root`'s values to every rank, in place.
  void broadcast(Tensor& t, int root, const std::string& what) const;
  // The same for `bytes` raw bytes (NCCL's unique id, core/nccl.h).
  void broadcast_bytes(void* data, size_t bytes, int root, const std::string& what) const;
  // All-gather of interleaved rows, in place: `data` holds `rows` rows of `row_bytes` bytes, of which rank r has
  // filled rows r, r + N, r + 2N, ... (its part of the unpadded DistributedSampler split of 0 .. rows - 1); after the
  // call every rank holds all of them (e.g. the feature cache: each rank extracts 1/N of the samples). One
  // broadcast per rank, its rows described by a strided MPI datatype: no staging copy of `data`. No-op for 1 rank.
  void all_gather_rows(void* data, int64_t rows, int64_t row_bytes, const std::string& what) const;
  // Every rank's `mine` (any bytes, sizes may differ), on every rank, by rank: an all-gather of the sizes, then of
  // the bytes (at most 2^31 - 1 in all). Outside the training steps (e.g. the skipped-image lists of a phase).
  std::vector<std::string> all_gather_bytes(const std::string& mine, const std::string& what) const;
  void barrier(const std::string& what) const;
  // Ends every rank (MPI_Abort with `code`); with one process it returns and the caller exits as usual.
  void abort(int code) const;

 private:
  // Polls an MPI_Request* until done or the deadline; the message names `what` and the step `at` (may be null).
  void wait_for(void* request, const std::string& what, const StepPosition* at = nullptr) const;
  int rank_ = 0, world_size_ = 1, local_rank_ = 0;
  double timeout_s_ = 300;
  bool owns_mpi_ = false;
};

}  // namespace tl
