// The MPI facade (see distributed.h). Only this file includes mpi.h (TL_HAVE_MPI, set by CMake when MPI is found).
#include "core/distributed.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <utility>
#include <vector>

#ifdef TL_HAVE_MPI
#include <mpi.h>
#endif

namespace tl {

namespace {

// An environment variable as an int >= `min`, or `fallback` when unset.
int env_int(const char* (*getenv)(const char*), const char* name, int fallback, int min) {
  const char* v = getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  TL_CHECK(*end == '\0' && x >= min && x <= (1 << 24), ValueError, "environment variable ", name, "='", v,
           "' is not a valid process count or rank: launch with mpirun, or unset it to train in one process");
  return static_cast<int>(x);
}

const char* process_getenv(const char* name) { return std::getenv(name); }

#ifdef TL_HAVE_MPI
MPI_Datatype mpi_type(const Tensor& t, const char* op) {
  TL_CHECK(t.device() == Device::CPU, ValueError, "distributed ", op, ": the tensor is on ", device_name(t.device()),
           "; MPI reduces CPU tensors (CUDA gradients go through NCCL, core/nccl.h)");
  TL_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, ValueError, "distributed ", op,
           ": float32 or float64 tensors only, got ", dtype_name(t.dtype()));
  return t.dtype() == DType::F32 ? MPI_FLOAT : MPI_DOUBLE;
}

// The MPI_Request inside a CollectiveRequest's storage (an int in MPICH, a pointer in OpenMPI).
MPI_Request* mpi_request(unsigned char* handle) {
  static_assert(sizeof(MPI_Request) <= 16 && alignof(MPI_Request) <= 8, "CollectiveRequest cannot hold an MPI_Request");
  return reinterpret_cast<MPI_Request*>(handle);
}
#endif

}  // namespace

LaunchInfo launch_info_from_env(const char* (*getenv)(const char*)) {
  if (!getenv) getenv = process_getenv;
  LaunchInfo li;
  if (getenv("OMPI_COMM_WORLD_SIZE")) {
    li.launcher = "OpenMPI";
    li.world_size = env_int(getenv, "OMPI_COMM_WORLD_SIZE", 1, 1);
    li.rank = env_int(getenv, "OMPI_COMM_WORLD_RANK", 0, 0);
    li.local_rank = env_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", 0, 0);
  } else if (getenv("PMI_SIZE")) {
    li.launcher = "PMI";
    li.world_size = env_int(getenv, "PMI_SIZE", 1, 1);
    li.rank = env_int(getenv, "PMI_RANK", 0, 0);
    li.local_rank = env_int(getenv, "MPI_LOCALRANKID", 0, 0);
  }
  TL_CHECK(li.rank < li.world_size, ValueError, li.launcher, " environment: rank ", li.rank, " of ", li.world_size,
           " processes; launch with mpirun, or unset the variables to train in one process");
  return li;
}

bool Distributed::built_with_mpi() {
#ifdef TL_HAVE_MPI
  return true;
#else
  return false;
#endif
}

Distributed Distributed::from_env(double timeout_s) {
  TL_CHECK(timeout_s > 0, ValueError, "--dist-timeout must be > 0 seconds, got ", timeout_s);
  const LaunchInfo li = launch_info_from_env();
  Distributed d;
  d.timeout_s_ = timeout_s;
  if (li.world_size == 1) return d;
#ifdef TL_HAVE_MPI
  int initialised = 0;
  MPI_Initialized(&initialised);
  TL_CHECK(!initialised, ValueError, "MPI is already initialised: create one Distributed per process");
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);  // only the main thread calls MPI
  d.owns_mpi_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &d.rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &d.world_size_);
  d.local_rank_ = li.local_rank;
  TL_CHECK(d.world_size_ == li.world_size && d.rank_ == li.rank, ValueError, "MPI says rank ", d.rank_, " of ",
           d.world_size_, " but the ", li.launcher, " environment says ", li.rank, " of ", li.world_size,
           ": launch with the mpirun of the MPI tlengine was built with (OpenMPI)");
  return d;
#else
  throw ValueError(detail::concat(
      "launched by ", li.launcher, " as rank ", li.rank, " of ", li.world_size, " processes, but this tlengine was "
      "built without MPI: install libopenmpi-dev and openmpi-bin (tools/install_deps.sh), reconfigure with "
      "-DTL_WITH_MPI=ON and rebuild; or train in one process, without mpirun"));
#endif
}

Distributed::Distributed(Distributed&& o) noexcept
    : rank_(o.rank_), world_size_(o.world_size_), local_rank_(o.local_rank_), timeout_s_(o.timeout_s_),
      owns_mpi_(std::exchange(o.owns_mpi_, false)) {}

Distributed::~Distributed() {
#ifdef TL_HAVE_MPI
  if (!owns_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
#endif
}

void Distributed::wait_for(void* request, const std::string& what, const StepPosition* at) const {
#ifdef TL_HAVE_MPI
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s_);
  for (int polls = 0;; ++polls) {
    int done = 0;
    MPI_Test(static_cast<MPI_Request*>(request), &done, MPI_STATUS_IGNORE);
    if (done) return;
    const auto now = clock::now();
    if (now > deadline) {
      const std::string where =
          at && at->epoch >= 0 ? detail::concat(" at epoch ", at->epoch + 1, " step ", at->step + 1) : std::string();
      throw DistributedTimeout(detail::concat("rank ", rank_, ": ", what, where, " timed out after ", timeout_s_,
                                              " s: another rank died or hangs (--dist-timeout)"));
    }
    // Spin briefly (a collective of the same step is usually microseconds away), then poll without burning a core.
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
#else
  (void)request;
  (void)what;
  (void)at;
#endif
}

void Distributed::all_reduce_sum(Tensor& t, const std::string& what) const {
  CollectiveRequest request;
  start_all_reduce_sum(t, request);
  wait(request, what);
}

void Distributed::start_all_reduce_sum(Tensor& t, CollectiveRequest& request) const {
  TL_CHECK(!request.pending_, ValueError, "distributed all-reduce: the request is still in flight");
  if (world_size_ == 1) return;
#ifdef TL_HAVE_MPI
  const MPI_Datatype type = mpi_type(t, "all-reduce");
  TL_CHECK(t.numel() <= (1LL << 31) - 1, ValueError, "distributed all-reduce: ", t.numel(),
           " elements in one call; split it (at most 2^31 - 1)");
  MPI_Iallreduce(MPI_IN_PLACE, t.data(), static_cast<int>(t.numel()), type, MPI_SUM, MPI_COMM_WORLD,
                 mpi_request(request.handle_));
  request.pending_ = true;
#endif
}

bool Distributed::test(CollectiveRequest& request) const {
#ifdef TL_HAVE_MPI
  if (!request.pending_) return true;
  int done = 0;
  MPI_Test(mpi_request(request.handle_), &done, MPI_STATUS_IGNORE);
  request.pending_ = !done;
#endif
  return !request.pending_;
}

void Distributed::wait(CollectiveRequest& request, const std::string& what, const StepPosition* at) const {
  if (!request.pending_) return;
#ifdef TL_HAVE_MPI
  wait_for(mpi_request(request.handle_), what, at);
#else
  (void)what;
  (void)at;
#endif
  request.pending_ = false;
}

void Distributed::all_reduce_sum(std::vector<double>& values, const std::string& what) const {
  if (world_size_ == 1 || values.empty()) return;
  Tensor t = Tensor::from_values(values, {static_cast<int64_t>(values.size())}, DType::F64);
  all_reduce_sum(t, what);
  values = t.to_doubles();
}

void Distributed::all_reduce_sum(double* values, size_t n, const std::string& what, const StepPosition* at) const {
  if (world_size_ == 1 || n == 0) return;
  TL_CHECK(n <= (1u << 31) - 1, ValueError, "distributed all-reduce: ", n, " values in one call (at most 2^31 - 1)");
#ifdef TL_HAVE_MPI
  MPI_Request req;
  MPI_Iallreduce(MPI_IN_PLACE, values, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &req);
  wait_for(&req, what, at);
#else
  (void)values;
  (void)what;
  (void)at;
#endif
}

void Distributed::broadcast(Tensor& t, int root, const std::string& what) const {
  TL_CHECK(root >= 0 && root < world_size_, ValueError, "distributed broadcast: root ", root, " outside the ",
           world_size_, " ranks");
  if (world_size_ == 1) return;
#ifdef TL_HAVE_MPI
  const MPI_Datatype type = mpi_type(t, "broadcast");
  MPI_Request req;
  MPI_Ibcast(t.data(), static_cast<int>(t.numel()), type, root, MPI_COMM_WORLD, &req);
  wait_for(&req, what);
#endif
}

void Distributed::broadcast_bytes(void* data, size_t bytes, int root, const std::string& what) const {
  TL_CHECK(root >= 0 && root < world_size_, ValueError, "distributed broadcast: root ", root, " outside the ",
           world_size_, " ranks");
  TL_CHECK(bytes <= (1u << 30), ValueError, "distributed broadcast: ", bytes, " bytes in one call (at most 2^30)");
  if (world_size_ == 1) return;
#ifdef TL_HAVE_MPI
  MPI_Request req;
  MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &req);
  wait_for(&req, what);
#else
  (void)data;
  (void)what;
#endif
}

void Distributed::all_gather_rows(void* data, int64_t rows, int64_t row_bytes, const std::string& what) const {
  if (world_size_ == 1 || rows == 0) return;
  TL_CHECK(row_bytes > 0 && row_bytes <= (1LL << 31) - 1 && rows / world_size_ < (1LL << 31) - 1, ValueError,
           "distributed all-gather of rows: ", rows, " rows of ", row_bytes, " bytes; at most 2^31 - 1 bytes per row "
           "and rows per rank");
#ifdef TL_HAVE_MPI
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row);
  std::vector<MPI_Request> reqs(static_cast<size_t>(world_size_), MPI_REQUEST_NULL);
  for (int r = 0; r < world_size_; ++r) {  // every rank posts the same broadcasts in the same order
    const int64_t count = r < rows ? (rows - r + world_size_ - 1) / world_size_ : 0;
    MPI_Datatype strided;  // rank r's rows: `count` rows, world_size rows apart
    MPI_Type_create_hvector(static_cast<int>(count), 1, static_cast<MPI_Aint>(world_size_ * row_bytes), row, &strided);
    MPI_Type_commit(&strided);
    MPI_Ibcast(static_cast<char*>(data) + r * row_bytes, count > 0 ? 1 : 0, strided, r, MPI_COMM_WORLD,
               &reqs[static_cast<size_t>(r)]);
    MPI_Type_free(&strided);  // freed once the pending broadcast is done with it
  }
  MPI_Type_free(&row);
  for (int r = 0; r < world_size_; ++r)
    wait_for(&reqs[static_cast<size_t>(r)], detail::concat(what, " (rank ", r, "'s rows)"));
#else
  (void)data;
  (void)what;
#endif
}

std::vector<std::string> Distributed::all_gather_bytes(const std::string& mine, const std::string& what) const {
  if (world_size_ == 1) return {mine};
  const int64_t limit = (1LL << 31) - 1;
  TL_CHECK(static_cast<int64_t>(mine.size()) <= limit, ValueError, "distributed all-gather of bytes: ", mine.size(),
           " bytes from rank ", rank_, " (at most 2^31 - 1 in all)");
  std::vector<std::string> out(static_cast<size_t>(world_size_));
#ifdef TL_HAVE_MPI
  const int n = static_cast<int>(mine.size());
  std::vector<int> sizes(static_cast<size_t>(world_size_)), displs(static_cast<size_t>(world_size_));
  MPI_Request req;
  MPI_Iallgather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, MPI_COMM_WORLD, &req);
  wait_for(&req, what + " (sizes)");
  int64_t total = 0;
  for (int r = 0; r < world_size_; ++r) {
    displs[static_cast<size_t>(r)] = static_cast<int>(std::min(total, limit));
    total += sizes[static_cast<size_t>(r)];
  }
  TL_CHECK(total <= limit, ValueError, "distributed all-gather of bytes (", what, "): ", total,
           " bytes from all ranks (at most 2^31 - 1)");
  std::string all(static_cast<size_t>(total), '\0');
  MPI_Iallgatherv(mine.data(), n, MPI_BYTE, all.data(), sizes.data(), displs.data(), MPI_BYTE, MPI_COMM_WORLD, &req);
  wait_for(&req, what);
  for (int r = 0; r < world_size_; ++r)
    out[static_cast<size_t>(r)] = all.substr(static_cast<size_t>(displs[static_cast<size_t>(r)]),
                                             static_cast<size_t>(sizes[static_cast<size_t>(r)]));
#else
  (void)what;
#endif
  return out;
}

void Distributed::barrier(const std::string& what) const {
  if (world_size_ == 1) return;
#ifdef TL_HAVE_MPI
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  wait_for(&req, what);
#endif
}

void Distributed::abort(int code) const {
#ifdef TL_HAVE_MPI
  if (owns_mpi_) MPI_Abort(MPI_COMM_WORLD, code);
#else
  (void)code;
#endif
}

}  // namespace tl
