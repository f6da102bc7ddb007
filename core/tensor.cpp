#include "core/tensor.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "core/caching_allocator.h"
#include "core/stream.h"

#ifdef DECO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace deco {

void internal_error(const char* file, int line, const std::string& what) {
  throw std::logic_error(str("internal error at ", file, ":", line, ": ", what,
                             " This is a bug in deco; please report it with the command you ran."));
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

Shape::Shape(std::initializer_list<int64_t> list) {
  DECO_ASSERT(list.size() <= kMaxDims, "at most ", kMaxDims, " dims");
  for (int64_t d : list) dims[static_cast<size_t>(ndim++)] = d;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= dims[static_cast<size_t>(i)];
  return ndim == 0 ? 0 : n;
}

bool Shape::operator==(const Shape& other) const {
  if (ndim != other.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (dims[static_cast<size_t>(i)] != other.dims[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::to_string() const {
  std::string out = "[";
  for (int i = 0; i < ndim; ++i) {
    if (i) out += ", ";
    out += std::to_string(dims[static_cast<size_t>(i)]);
  }
  return out + "]";
}

Matrix Matrix::col_block(int64_t begin, int64_t end) const {
  DECO_ASSERT(0 <= begin && begin <= end && end <= cols, "columns ", begin, "..", end, " of ", cols);
  Matrix m = *this;
  m.ptr = static_cast<char*>(ptr) + static_cast<size_t>(begin) * dtype_size(dtype);
  m.cols = end - begin;
  return m;
}

Matrix Matrix::row_block(int64_t begin, int64_t end) const {
  DECO_ASSERT(0 <= begin && begin <= end && end <= rows, "rows ", begin, "..", end, " of ", rows);
  Matrix m = *this;
  m.ptr = static_cast<char*>(ptr) + static_cast<size_t>(begin * ld) * dtype_size(dtype);
  m.rows = end - begin;
  return m;
}

Tensor Tensor::view(const Shape& shape) const {
  DECO_ASSERT(shape.numel() == numel(), "view ", shape.to_string(), " of ", shape_.to_string());
  return Tensor(ptr_, dtype_, device_, shape);
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  DECO_ASSERT(ndim() >= 1 && 0 <= begin && begin <= end && end <= size(0), "slice ", begin, "..",
              end, " of ", shape_.to_string());
  Shape s = shape_;
  s.dims[0] = end - begin;
  int64_t row = 1;  // elements per index of dimension 0 (not numel() / size(0): size(0) may be 0)
  for (int i = 1; i < ndim(); ++i) row *= size(i);
  return Tensor(static_cast<char*>(ptr_) + static_cast<size_t>(begin * row) * dtype_size(dtype_),
                dtype_, device_, s);
}

Matrix Tensor::matrix() const {
  DECO_ASSERT(ndim() >= 1, "matrix() of an undefined tensor");
  Matrix m;
  m.ptr = ptr_;
  m.dtype = dtype_;
  m.device = device_;
  m.cols = shape_[-1];
  m.rows = m.cols == 0 ? 0 : numel() / m.cols;
  m.ld = m.cols;
  return m;
}

Buffer::Buffer(DType dtype, Device device, const Shape& shape) { ensure(dtype, device, shape); }

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& other) noexcept
    : tensor_(other.tensor_), capacity_bytes_(other.capacity_bytes_) {
  other.tensor_ = Tensor();
  other.capacity_bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    tensor_ = other.tensor_;
    capacity_bytes_ = other.capacity_bytes_;
    other.tensor_ = Tensor();
    other.capacity_bytes_ = 0;
  }
  return *this;
}

void Buffer::ensure(DType dtype, Device device, const Shape& shape) {
  if (tensor_.defined() && tensor_.dtype() == dtype && tensor_.device() == device &&
      tensor_.shape() == shape)
    return;
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  if (tensor_.raw() != nullptr && tensor_.device() == device && bytes <= capacity_bytes_) {
    tensor_ = Tensor(tensor_.raw(), dtype, device, shape);
    return;
  }
  release();
  void* ptr = bytes ? device_alloc(device, bytes) : nullptr;
  if (bytes) device_memset_zero(device, ptr, bytes);
  tensor_ = Tensor(ptr, dtype, device, shape);
  capacity_bytes_ = bytes;
}

void Buffer::release() {
  if (tensor_.raw() != nullptr) device_free(tensor_.device(), tensor_.raw());
  tensor_ = Tensor();
  capacity_bytes_ = 0;
}

#ifdef DECO_WITH_CUDA
static void cuda_check(cudaError_t status, const char* what, size_t bytes) {
  if (status != cudaSuccess)
    fail("CUDA ", what, " of ", bytes, " bytes failed: ", cudaGetErrorString(status),
         status == cudaErrorMemoryAllocation || status == cudaErrorNoDevice || status == cudaErrorInvalidDevice
             ? ". Check that a GPU is visible (nvidia-smi) and has enough free memory."
             : ". A copy reports the faults of kernels queued before it: rerun with CUDA_LAUNCH_BLOCKING=1 "
               "(or under compute-sanitizer) to see which kernel failed.");
}
CachingAllocator* cuda_caching_allocator() {
  // Created on first use for the device current then (one GPU per process:
  // parallel/launch.cpp selects it before anything is allocated), and never
  // destroyed: at exit the CUDA context goes away with its memory, and
  // cudaFree from a static destructor could run after the runtime's teardown.
  static CachingAllocator* allocator = [] {
    int device = 0;
    cudaGetDevice(&device);
    auto* a = new CachingAllocator(
        [](size_t bytes) -> void* {
          void* ptr = nullptr;
          const cudaError_t status = cudaMalloc(&ptr, bytes);
          if (status == cudaErrorMemoryAllocation) {
            cudaGetLastError();  // clear it: the allocator frees its cache and retries, or reports
            return nullptr;
          }
          cuda_check(status, "cudaMalloc", bytes);
          return ptr;
        },
        [](void* ptr) { cudaFree(ptr); },
        "GPU " + std::to_string(device),
        "lower training.micro_batch_size (gradient accumulation keeps the global batch), or spread the "
        "optimizer state over the data-parallel ranks with parallel.use_distributed_optimizer.");
    a->set_synchronize([] { cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", 0); });
    const char* no_caching = std::getenv("DECO_CUDA_NO_MEMORY_CACHING");
    if (no_caching && std::strcmp(no_caching, "1") == 0) a->set_caching(false);
    return a;
  }();

  return allocator;
}

std::string cuda_device_description() {
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  char gib[32];
  std::snprintf(gib, sizeof(gib), "%.1f", static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return str(prop.name, " (GPU ", device, ", sm_", prop.major, prop.minor, ", ", gib, " GiB)");
}

void cuda_memory_info(size_t& free_bytes, size_t& total_bytes) {
  free_bytes = total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) cudaGetLastError();
}

bool cuda_built() { return true; }
int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the "no device" / "driver too old" error so later calls start clean
    return 0;
  }
  return count;
}
int cuda_current_device() {
  if (cuda_device_count() == 0) return -1;
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return device;
}
void cuda_set_current_device(int device) {
  const cudaError_t status = cudaSetDevice(device);
  if (status != cudaSuccess) fail("could not make GPU ", device, " current: ", cudaGetErrorString(status), ".");
}
#else
CachingAllocator* cuda_caching_allocator() { return nullptr; }
std::string cuda_device_description() { return ""; }
void cuda_memory_info(size_t& free_bytes, size_t& total_bytes) { free_bytes = total_bytes = 0; }
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
int cuda_current_device() { return -1; }
void cuda_set_current_device(int) {}
[[noreturn]] static void no_cuda() {
  fail("this deco binary was built without CUDA; rebuild on a machine with nvcc (scripts/setup.sh) "
       "to use a GPU.");
}
#endif

namespace {

// The host side of the memory accounting (host_memory_stats): every live
// CPU allocation with its size and category.
struct HostLedger {
  std::mutex mutex;
  std::unordered_map<const void*, std::pair<size_t, MemoryCategory>> live;
  AllocatorStats stats;
};

HostLedger& host_ledger() {
  static HostLedger* ledger = new HostLedger;  // never destroyed: static Buffers may free after exit begins
  return *ledger;
}

void host_track_alloc(const void* ptr, size_t bytes) {
  HostLedger& h = host_ledger();
  const MemoryCategory category = current_memory_category();
  const size_t c = static_cast<size_t>(category);
  std::lock_guard<std::mutex> lock(h.mutex);
  h.live[ptr] = {bytes, category};
  AllocatorStats& s = h.stats;
  s.allocated += bytes;
  s.requested += bytes;
  s.by_category[c] += bytes;
  s.peak_allocated = std::max(s.peak_allocated, s.allocated);
  s.peak_by_category[c] = std::max(s.peak_by_category[c], s.by_category[c]);
  ++s.allocations;
}

void host_track_free(const void* ptr) {
  HostLedger& h = host_ledger();
  std::lock_guard<std::mutex> lock(h.mutex);
  const auto it = h.live.find(ptr);
  if (it == h.live.end()) return;
  const auto [bytes, category] = it->second;
  h.live.erase(it);
  AllocatorStats& s = h.stats;
  s.allocated -= bytes;
  s.requested -= bytes;
  s.by_category[static_cast<size_t>(category)] -= bytes;
  ++s.frees;
}

}  // namespace

AllocatorStats host_memory_stats() {
  HostLedger& h = host_ledger();
  std::lock_guard<std::mutex> lock(h.mutex);
  return h.stats;
}

void reset_host_memory_peaks() {
  HostLedger& h = host_ledger();
  std::lock_guard<std::mutex> lock(h.mutex);
  h.stats.peak_allocated = h.stats.allocated;
  h.stats.peak_by_category = h.stats.by_category;
}

void* device_alloc(Device device, size_t bytes) {
  if (device == Device::CPU) {
    size_t rounded = (bytes + 63) / 64 * 64;
    void* ptr = std::aligned_alloc(64, rounded);
    if (ptr == nullptr) fail("out of host memory allocating ", bytes, " bytes.");
    host_track_alloc(ptr, bytes);
    return ptr;
  }
#ifdef DECO_WITH_CUDA
  return cuda_caching_allocator()->allocate(bytes);  // tagged with the thread's MemoryCategoryScope
#else
  no_cuda();
#endif
}

void device_free(Device device, void* ptr) {
  if (device == Device::CPU) {
    host_track_free(ptr);
    std::free(ptr);
    return;
  }
#ifdef DECO_WITH_CUDA
  cuda_caching_allocator()->free(ptr);  // back to the cache: no cudaFree, no device synchronization
#endif
}

void device_memset_zero(Device device, void* ptr, size_t bytes) {
  if (device == Device::CPU) {
    std::memset(ptr, 0, bytes);
    return;
  }
#ifdef DECO_WITH_CUDA
  // On the current stream (core/stream.h), like every op's kernels.
  cuda_check(cudaMemsetAsync(ptr, 0, bytes, static_cast<cudaStream_t>(cuda_current_stream())), "cudaMemset", bytes);
#else
  no_cuda();
#endif
}

void device_copy(Device dst_device, void* dst, Device src_device, const void* src, size_t bytes) {
  if (bytes == 0) return;  // empty tensors may have null data, which memcpy must not be given
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef DECO_WITH_CUDA
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_current_stream());
  if (stream == nullptr) {
    cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy", bytes);
    return;
  }
  // As cudaMemcpy on the legacy stream: ordered after the stream's work, and
  // a copy to or from host memory complete on return.
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream), "cudaMemcpyAsync", bytes);
  if (dst_device == Device::CPU || src_device == Device::CPU)
    cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize", bytes);
#else
  no_cuda();
#endif
}

HostStaging::~HostStaging() {
  release();
#ifdef DECO_WITH_CUDA
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
#endif
}

void HostStaging::release() {
  if (host_ == nullptr) return;
#ifdef DECO_WITH_CUDA
  if (pinned_) {
    cudaFreeHost(host_);
    host_ = nullptr;
    return;
  }
#endif
  std::free(host_);
  host_ = nullptr;
}

void HostStaging::fetch(std::initializer_list<const Tensor*> tensors) {
  wait();  // the last fetch's copies must not land in the area this one lays out again
  size_t bytes = 0;
  bool device = false;
  offsets_.clear();
  for (const Tensor* t : tensors) {
    offsets_.push_back(bytes);
    bytes += (t->nbytes() + 15) / 16 * 16;
    device = device || t->device() == Device::CUDA;
  }
  if (bytes > capacity_ || (device && !pinned_)) {
    release();
    capacity_ = std::max(bytes, capacity_);
    pinned_ = device;
#ifdef DECO_WITH_CUDA
    if (device) {
      cuda_check(cudaMallocHost(&host_, capacity_), "cudaMallocHost", capacity_);
    }
#endif
    if (!device) host_ = std::malloc(capacity_ > 0 ? capacity_ : 1);
  }
  size_t i = 0;
  for (const Tensor* t : tensors) {
    char* dst = static_cast<char*>(host_) + offsets_[i++];
    if (t->device() == Device::CPU) {
      if (t->nbytes() > 0) std::memcpy(dst, t->raw(), t->nbytes());
      continue;
    }
#ifdef DECO_WITH_CUDA
    if (t->nbytes() > 0)
      cuda_check(cudaMemcpyAsync(dst, t->raw(), t->nbytes(), cudaMemcpyDeviceToHost,
                                 static_cast<cudaStream_t>(cuda_current_stream())),
                 "cudaMemcpyAsync",
                 t->nbytes());
#endif
  }
#ifdef DECO_WITH_CUDA
  if (device) {
    if (event_ == nullptr) {
      cudaEvent_t e = nullptr;
      cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate", 0);
      event_ = e;
    }
    cuda_check(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(cuda_current_stream())),
               "cudaEventRecord", 0);
    pending_ = true;
  }
#endif
}

void HostStaging::wait() {
  if (!pending_) return;
#ifdef DECO_WITH_CUDA
  const cudaError_t status = cudaEventSynchronize(static_cast<cudaEvent_t>(event_));
  if (status != cudaSuccess)
    fail("the GPU reported an error from earlier work: ", cudaGetErrorString(status),
         ". Rerun with CUDA_LAUNCH_BLOCKING=1 to see which kernel failed.");
#endif
  pending_ = false;
}

void device_synchronize(Device device) {
  if (device == Device::CPU) return;
#ifdef DECO_WITH_CUDA
  const cudaError_t status = cudaDeviceSynchronize();
  if (status != cudaSuccess)
    fail("the GPU reported an error from earlier work: ", cudaGetErrorString(status),
         ". Rerun with CUDA_LAUNCH_BLOCKING=1 to see which kernel failed.");
#else
  no_cuda();
#endif
}

}  // namespace deco
