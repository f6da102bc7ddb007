// Tensors: non-owning views over dense row-major memory, plus Buffer, the
// owner. Ops take views, never ownership, so the same op signature serves a
// slice of the flat parameter buffer, an activation, or a test array, on
// the CPU or on a GPU.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace deco {

enum class DType : uint8_t { F32, F64, BF16, I32, I64 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType dtype);
// What accompanies activations of `activation` dtype in an op: parameter
// gradients, saved statistics (norms' rstd, attention's log-sum-exp), the
// router's values and the rope table. float32 for bfloat16 (mixed
// precision), the dtype itself otherwise.
inline DType accumulate_dtype(DType activation) { return activation == DType::BF16 ? DType::F32 : activation; }
const char* dtype_name(DType dtype);
const char* device_name(Device device);

// Maps a C++ type to its DType, so data<T>() can check what it hands out.
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };

constexpr int kMaxDims = 4;

struct Shape {
  std::array<int64_t, kMaxDims> dims{};
  int ndim = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> list);
  int64_t numel() const;
  int64_t operator[](int i) const { return dims[static_cast<size_t>(i < 0 ? ndim + i : i)]; }
  bool operator==(const Shape& other) const;
  bool operator!=(const Shape& other) const { return !(*this == other); }
  std::string to_string() const;  // "[4, 128]"
};

// A 2-D strided view (row-major, leading dimension `ld` >= cols). GEMMs take
// these so that one head of a [T, heads*hd] activation or one expert's
// column block of a [H, E*D] weight is addressed without a copy.
struct Matrix {
  void* ptr = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int64_t rows = 0, cols = 0, ld = 0;

  // Columns [begin, end) of this matrix, same rows and ld.
  Matrix col_block(int64_t begin, int64_t end) const;
  // Rows [begin, end) of this matrix.
  Matrix row_block(int64_t begin, int64_t end) const;
  template <typename T> T* data() const {
    DECO_ASSERT(dtype_of<T>::value == dtype, "matrix holds ", dtype_name(dtype));
    return static_cast<T*>(ptr);
  }
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(void* ptr, DType dtype, Device device, const Shape& shape)
      : ptr_(ptr), dtype_(dtype), device_(device), shape_(shape) {}

  // An empty Tensor() stands for "not given" in optional op arguments.
  bool defined() const { return shape_.ndim > 0; }
  void* raw() const { return ptr_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t size(int dim) const { return shape_[dim]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  template <typename T> T* data() const {
    DECO_ASSERT(dtype_of<T>::value == dtype_, "tensor holds ", dtype_name(dtype_), ", asked for ",
                dtype_name(dtype_of<T>::value));
    return static_cast<T*>(ptr_);
  }

  // Same memory, new shape with the same element count.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) along dimension 0.
  Tensor slice(int64_t begin, int64_t end) const;
  // The tensor as a [numel / last, last] matrix (a 1-D tensor is one row).
  Matrix matrix() const;

 private:
  void* ptr_ = nullptr;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  Shape shape_;
};

// Owns one allocation. Moves, never copies (activations and parameter
// buffers are large, and an accidental copy would be a silent cost).
class Buffer {
 public:
  Buffer() = default;
  Buffer(DType dtype, Device device, const Shape& shape);  // zero-filled
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const Tensor& tensor() const { return tensor_; }
  operator const Tensor&() const { return tensor_; }  // NOLINT: a Buffer is usable wherever a view is
  template <typename T> T* data() const { return tensor_.data<T>(); }
  int64_t numel() const { return tensor_.numel(); }
  const Shape& shape() const { return tensor_.shape(); }

  // Gives the buffer this dtype and shape. Allocates only when the bytes
  // exceed what it already holds, so a loop whose shapes vary (the sparse
  // path's pair count changes every step) allocates a few times, not every
  // step. A new allocation is zero-filled; a reused one keeps stale values
  // (every user overwrites or zeroes explicitly).
  void ensure(DType dtype, Device device, const Shape& shape);

 private:
  void release();
  Tensor tensor_;
  size_t capacity_bytes_ = 0;
};

class CachingAllocator;

// Raw memory for a device; the CPU side is 64-byte aligned for SIMD. CUDA
// memory comes from the caching allocator (core/caching_allocator.h), tagged
// with the calling thread's MemoryCategoryScope.
void* device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr);
void device_memset_zero(Device device, void* ptr, size_t bytes);
void device_copy(Device dst_device, void* dst, Device src_device, const void* src, size_t bytes);
// Waits until the device has finished everything queued so far (a no-op on the CPU).
void device_synchronize(Device device);

// Small reads of device values that do not stall the host where they are
// queued: fetch() queues copies of some tensors into pinned host memory
// behind the work already queued, and the values are the host's after
// wait(), which blocks only until those copies have landed. Fetching at the
// point a value is ready and waiting where it is needed lets several reads
// share one synchronization, or ride on one the code makes anyway. Host
// tensors are copied at once. The staging area grows to the largest fetch
// (pinned memory is allocated then, so size it on a first step, not in a
// loop that keeps growing).
class HostStaging {
 public:
  HostStaging() = default;
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  void fetch(std::initializer_list<const Tensor*> tensors);
  void wait();
  // The bytes of the i-th tensor of the last fetch(), valid after wait().
  template <typename T> const T* data(size_t i) const {
    DECO_ASSERT(!pending_ && i < offsets_.size(), "HostStaging::data before wait() or past the fetched tensors");
    return reinterpret_cast<const T*>(static_cast<const char*>(host_) + offsets_[i]);
  }

 private:
  void release();
  void* host_ = nullptr;
  size_t capacity_ = 0;
  bool pinned_ = false, pending_ = false;
  void* event_ = nullptr;  // cudaEvent_t of the last fetch's copies
  std::vector<size_t> offsets_;
};

// True when this binary was built with the CUDA backend.
bool cuda_built();
// Number of visible CUDA devices; 0 without the CUDA backend, a driver or a GPU.
int cuda_device_count();
// The calling thread's current GPU (cudaGetDevice), -1 without one; and
// making `device` current on the calling thread (a thread other than the
// one that selected the rank's GPU starts on GPU 0).
int cuda_current_device();
void cuda_set_current_device(int device);
// The current GPU as "NVIDIA H100 80GB HBM3 (GPU 0, sm_90, 79.1 GiB)"; "" without one.
std::string cuda_device_description();
// Free and total memory of the current GPU (cudaMemGetInfo); 0 and 0 without one.
void cuda_memory_info(size_t& free_bytes, size_t& total_bytes);
// The allocator behind every CUDA buffer of this process (its stats are the
// device-memory report); nullptr in a CPU-only build.
CachingAllocator* cuda_caching_allocator();

}  // namespace deco
