#include "trainer/weights_io.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"

namespace deco {
namespace {

// The direct writer stores host float32 bytes as the files' little-endian floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "tensor files are written from host memory");

constexpr const char* kFormat = "deco-weights";
constexpr const char* kScalarsFormat = "deco-scalars";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kCrcAttribute = "crc32";

// ---------------------------------------------------------------- HDF5 plumbing

// Owns one hid_t. Every early return and every thrown deco::Error closes
// what was opened, so a failed load never leaves the file open (HDF5 would
// then refuse to reopen or overwrite it in the same process).
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~H5Id() { close(); }
  H5Id(H5Id&& other) noexcept : id_(std::exchange(other.id_, -1)), closer_(other.closer_) {}
  H5Id& operator=(H5Id&& other) noexcept {
    if (this != &other) {
      close();
      id_ = std::exchange(other.id_, -1);
      closer_ = other.closer_;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Returns HDF5's status so the writer can notice a failing final close.
  herr_t close() {
    herr_t rc = 0;
    if (id_ >= 0) rc = closer_(id_);
    id_ = -1;
    return rc;
  }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

// HDF5 prints its whole error stack to stderr by default; users should see
// only deco's one-sentence message, with HDF5's innermost reason folded in.
// The setting is per thread (HDF5 is built thread-safe), so every entry
// point calls it: checkpoints are written on a background thread.
void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t innermost_error(unsigned n, const H5E_error2_t* err, void* out) {
  if (n == 0 && err->desc != nullptr) *static_cast<std::string*>(out) = err->desc;
  return 0;
}

// " (HDF5: <reason>)" for the error HDF5 just reported, or "". For I/O
// failures HDF5's description embeds the OS error ("... error message =
// 'No space left on device', ..."), which is the part worth showing.
std::string hdf5_reason() {
  std::string desc;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &desc);
  const std::string key = "error message = '";
  const size_t at = desc.find(key);
  if (at != std::string::npos) {
    const size_t begin = at + key.size();
    desc = desc.substr(begin, desc.find('\'', begin) - begin);
  }
  return desc.empty() ? "" : " (HDF5: " + desc + ")";
}

std::string dataset_path(const std::string& group, const std::string& name) {
  return group.empty() ? "/" + name : "/" + group + "/" + name;
}

std::string shape_string(const std::vector<hsize_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

std::string index_string(const Shape& shape, int64_t flat) {
  std::vector<hsize_t> index(static_cast<size_t>(shape.ndim));
  for (int d = shape.ndim - 1; d >= 0; --d) {
    index[static_cast<size_t>(d)] = static_cast<hsize_t>(flat % shape[d]);
    flat /= shape[d];
  }
  return shape_string(index);
}

std::vector<hsize_t> dims_of(const Shape& shape) {
  std::vector<hsize_t> dims;
  for (int d = 0; d < shape.ndim; ++d) dims.push_back(static_cast<hsize_t>(shape[d]));
  return dims;
}

// ---------------------------------------------------------------- dtype conversion

float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as PyTorch and the CUDA intrinsics do; NaN stays NaN
// (plain rounding could carry a NaN's payload into the exponent and make Inf).
uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x0040);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// The tensor's elements in its own dtype on the host (a copy only when the
// tensor lives on a GPU).
const void* host_bytes(const Tensor& t, std::vector<uint8_t>* staging) {
  if (t.device() == Device::CPU) return t.raw();
  staging->resize(t.nbytes());
  device_copy(Device::CPU, staging->data(), t.device(), t.raw(), t.nbytes());
  return staging->data();
}

bool is_host_float32(const Tensor& t) { return t.device() == Device::CPU && t.dtype() == DType::F32; }

// A name for an in-memory file. The core driver tells open files apart by
// name, so two saves building images at once (the checkpoint thread and the
// main thread) must not share one.
std::string image_name(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".image-" + std::to_string(counter.fetch_add(1));
}

// ---------------------------------------------------------------- POSIX output

// The file a save writes: <path> itself or <path>.tmp-<pid> (the pid keeps
// two processes writing the same path from sharing a temporary).
std::string write_target(const std::string& path, WriteMode mode) {
  return mode == WriteMode::Create ? path : path + ".tmp-" + std::to_string(::getpid());
}

// One file written with pwrite. The first error is kept rather than thrown,
// so the caller removes the partial file and reports it in its own words;
// later calls do nothing.
class OutFile {
 public:
  explicit OutFile(const std::string& target) : target_(target) {
    fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd_ < 0) err_ = errno;
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  bool ok() const { return err_ == 0; }
  int error() const { return err_; }
  uint64_t written() const { return written_; }

  void write_at(uint64_t offset, const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    while (err_ == 0 && size > 0) {
      const ssize_t n = ::pwrite(fd_, p, size, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err_ = n < 0 ? errno : EIO;
        break;
      }
      p += n;
      offset += static_cast<uint64_t>(n);
      size -= static_cast<size_t>(n);
      written_ += static_cast<uint64_t>(n);
    }
  }

  // Starts writing [offset, offset + size) back to the disk without waiting.
  // The kernel would otherwise hold the dirty pages until its background
  // threshold (10% of RAM) and the final fsync would write them all at
  // once, after the checksums, instead of while they are computed.
  void start_writeback(uint64_t offset, uint64_t size) {
#ifdef SYNC_FILE_RANGE_WRITE
    if (err_ == 0 && size > 0)
      ::sync_file_range(fd_, static_cast<off_t>(offset), static_cast<off_t>(size),
                        SYNC_FILE_RANGE_WRITE);
#else
    (void)offset;
    (void)size;
#endif
  }

  void set_size(uint64_t size) {
    if (err_ == 0 && ::ftruncate(fd_, static_cast<off_t>(size)) != 0) err_ = errno;
  }

  // fsync and close: the data must be on disk before a rename makes the
  // file (or its directory) the one at the real path.
  void finish() {
    if (err_ == 0 && ::fsync(fd_) != 0) err_ = errno;
    if (fd_ >= 0 && ::close(fd_) != 0 && err_ == 0) err_ = errno;
    fd_ = -1;
  }

 private:
  std::string target_;
  int fd_ = -1;
  int err_ = 0;
  uint64_t written_ = 0;
};

// Removes a partial output file unless the save got through.
struct RemoveUnlessDone {
  std::string path;
  bool done = false;
  ~RemoveUnlessDone() {
    if (!done) ::unlink(path.c_str());
  }
};

[[noreturn]] void write_failed(const std::string& path, const std::string& target, WriteMode mode,
                               const char* step, const OutFile& out, uint64_t total, int err) {
  ::unlink(target.c_str());
  if (mode == WriteMode::Replace)
    fail("cannot write ", path, ": ", step, " ", target, " failed after ", out.written(), " of ",
         total, " bytes: ", std::strerror(err), "; ", path, " was left unchanged");
  fail("cannot write ", path, ": ", step, " failed after ", out.written(), " of ", total,
       " bytes: ", std::strerror(err));
}

// Writes a small file whole (a state.h5 image).
void write_small_file(const std::string& path, const std::vector<uint8_t>& bytes, WriteMode mode) {
  if (mode == WriteMode::Replace) {
    write_file_atomic(path, {{bytes.data(), bytes.size()}});
    return;
  }
  OutFile out(path);
  out.write_at(0, bytes.data(), bytes.size());
  out.finish();
  if (!out.ok()) write_failed(path, path, mode, "writing", out, bytes.size(), out.error());
}

// ---------------------------------------------------------------- saving: HDF5 metadata in memory

void write_string_attribute(hid_t loc, const std::string& key, const std::string& value,
                            const std::string& path) {
  // Variable-length UTF-8, which h5py hands back as a Python str.
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (!type.valid() || H5Tset_size(type.get(), H5T_VARIABLE) < 0 ||
      H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0 || !space.valid())
    fail("cannot write ", path, ": creating attribute '", key, "' failed", hdf5_reason());
  H5Id attr(H5Acreate2(loc, key.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
            H5Aclose);
  const char* text = value.c_str();
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), &text) < 0)
    fail("cannot write ", path, ": writing attribute '", key, "' failed", hdf5_reason());
}

void write_int_attribute(hid_t loc, const std::string& key, int64_t value, const std::string& path) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id attr(H5Acreate2(loc, key.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
            H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) < 0)
    fail("cannot write ", path, ": writing attribute '", key, "' failed", hdf5_reason());
}

void write_root_attributes(hid_t file, const char* format,
                           const std::map<std::string, std::string>& attributes,
                           const std::string& path) {
  for (const auto& entry : attributes)
    DECO_ASSERT(!entry.first.empty() && entry.first != "format" && entry.first != "format_version",
                "attribute name '", entry.first, "' is empty or reserved");
  write_string_attribute(file, "format", format, path);
  write_int_attribute(file, "format_version", kFormatVersion, path);
  for (const auto& [key, value] : attributes) write_string_attribute(file, key, value, path);
}

// The memory of HDF5's core (in-memory) driver, taken over when the file is
// closed: the file image without a copy. H5Fget_file_image would instead
// want a buffer as large as the whole file, data regions included, and
// H5Fflush would grow the driver's memory to that size too.
struct CoreImage {
  void* kept = nullptr;   // the image, once HDF5 closed the file
  size_t kept_size = 0;
  size_t size = 0;        // bytes of the driver's current allocation
  ~CoreImage() { std::free(kept); }

  static void* malloc_cb(size_t size, H5FD_file_image_op_t, void* udata) {
    void* p = std::malloc(size);
    if (p != nullptr) static_cast<CoreImage*>(udata)->size = size;
    return p;
  }
  static void* memcpy_cb(void* dst, const void* src, size_t size, H5FD_file_image_op_t, void*) {
    return std::memcpy(dst, src, size);
  }
  static void* realloc_cb(void* ptr, size_t size, H5FD_file_image_op_t, void* udata) {
    void* p = std::realloc(ptr, size);
    if (p != nullptr) static_cast<CoreImage*>(udata)->size = size;
    return p;
  }
  static herr_t free_cb(void* ptr, H5FD_file_image_op_t op, void* udata) {
    auto* image = static_cast<CoreImage*>(udata);
    if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE) {
      std::free(image->kept);
      image->kept = ptr;
      image->kept_size = image->size;
    } else {
      std::free(ptr);
    }
    return 0;
  }
  static void* udata_copy_cb(void* udata) { return udata; }
  static herr_t udata_free_cb(void*) { return 0; }
};

// File-access properties for an in-memory file whose image `capture` takes
// over at close. All metadata goes into one block of `meta_block` bytes at
// the start of the file (allocated before any tensor), so the image holds
// only metadata and the tensors' regions follow it.
H5Id core_fapl(const std::string& path, CoreImage* capture, size_t meta_block) {
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5FD_file_image_callbacks_t callbacks = {
      CoreImage::malloc_cb,     CoreImage::memcpy_cb,     CoreImage::realloc_cb, CoreImage::free_cb,
      CoreImage::udata_copy_cb, CoreImage::udata_free_cb, capture};
  if (!fapl.valid() || H5Pset_fapl_core(fapl.get(), size_t{64} << 10, /*backing_store=*/0) < 0 ||
      H5Pset_file_image_callbacks(fapl.get(), &callbacks) < 0 ||
      H5Pset_meta_block_size(fapl.get(), meta_block) < 0)
    fail("cannot write ", path, ": setting up HDF5 failed", hdf5_reason());
  return fapl;
}

// Room for every object header, link name and B-tree node, with a wide
// margin (about 450 bytes per tensor are used). Running out costs only
// memory: HDF5 then puts later metadata after the tensors, and the image
// grows to cover them.
size_t meta_block_bytes(const std::vector<StoreGroup>& groups) {
  size_t bytes = size_t{64} << 10;
  for (const StoreGroup& g : groups) {
    bytes += 4096 + 4 * g.group.size();
    for (const ParamSpec& spec : g.store->layout().specs()) bytes += 1024 + 4 * spec.name.size();
  }
  const size_t unit = size_t{64} << 10;
  return (bytes + unit - 1) / unit * unit;
}

// The end-of-address the superblock records (HDF5 file format, section
// "Superblock"): readers refuse a file shorter than it. Its position depends
// on the superblock version; offsets are 8 bytes in every file HDF5 writes
// with default properties.
uint64_t superblock_eoa(const uint8_t* image, size_t size, const std::string& path) {
  static const uint8_t kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  DECO_ASSERT(size >= 64 && std::memcmp(image, kSignature, 8) == 0,
              "HDF5 image of ", path, " has no superblock at offset 0");
  const int version = image[8];
  size_t at = 0;
  int offset_size = 0;
  if (version == 0 || version == 1) {
    offset_size = image[13];
    at = (version == 0 ? 24 : 28) + 2 * static_cast<size_t>(offset_size);
  } else {
    offset_size = image[9];
    at = 12 + 2 * static_cast<size_t>(offset_size);
  }
  DECO_ASSERT(version <= 3 && offset_size == 8 && at + 8 <= size, "HDF5 superblock version ",
              version, " with ", offset_size, "-byte offsets in the image of ", path);
  uint64_t eoa = 0;
  for (int i = 7; i >= 0; --i) eoa = (eoa << 8) | image[at + static_cast<size_t>(i)];
  return eoa;
}

// One tensor of a file being written.
struct PlannedTensor {
  std::string where;  // /group/name
  Tensor source;
  H5Id dataset, crc_attr;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint32_t crc = 0;
};

}  // namespace

// ---------------------------------------------------------------- public helpers

uint32_t crc32_of(const void* data, size_t bytes) {
  uLong crc = crc32_z(0L, Z_NULL, 0);
  // crc32_z takes the whole length; chunks only keep the loop interruptible
  // in a debugger and the code independent of zlib's size type.
  const auto* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {
    const size_t n = std::min(bytes, size_t{1} << 30);
    crc = crc32_z(crc, p, n);
    p += n;
    bytes -= n;
  }
  return static_cast<uint32_t>(crc);
}

void copy_to_float32(const Tensor& src, float* dst) {
  std::vector<uint8_t> staging;
  const void* p = host_bytes(src, &staging);
  const size_t n = static_cast<size_t>(src.numel());
  switch (src.dtype()) {
    case DType::F32: std::memcpy(dst, p, n * sizeof(float)); break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<const double*>(p)[i]);
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(static_cast<const uint16_t*>(p)[i]);
      break;
    case DType::I32:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<const int32_t*>(p)[i]);
      break;
    case DType::I64:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<const int64_t*>(p)[i]);
      break;
  }
}

void copy_from_float32(const float* src, const Tensor& dst) {
  const size_t n = static_cast<size_t>(dst.numel());
  if (dst.dtype() == DType::F32) {
    device_copy(dst.device(), dst.raw(), Device::CPU, src, n * sizeof(float));
    return;
  }
  std::vector<uint8_t> out(n * dtype_size(dst.dtype()));
  switch (dst.dtype()) {
    case DType::F64:
      for (size_t i = 0; i < n; ++i) reinterpret_cast<double*>(out.data())[i] = src[i];
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(out.data())[i] = float_to_bf16(src[i]);
      break;
    default: DECO_ASSERT(false, "float32 values cannot go into a ", dtype_name(dst.dtype()), " tensor");
  }
  device_copy(dst.device(), dst.raw(), Device::CPU, out.data(), out.size());
}

// ---------------------------------------------------------------- saving

int64_t save_stores_h5(const std::string& path, const std::vector<StoreGroup>& groups,
                       const std::map<std::string, std::string>& attributes, WriteMode mode) {
  quiet_hdf5();
  check_output_path(path);
  for (const StoreGroup& g : groups) DECO_ASSERT(g.store != nullptr, "save_stores_h5: no store for /", g.group);

  // 1. The file's layout and metadata, in memory: every dataset is
  // allocated (contiguous, never filled) so HDF5 assigns its file offset,
  // but no tensor byte passes through HDF5.
  CoreImage image;
  std::vector<PlannedTensor> tensors;
  H5Id fapl = core_fapl(path, &image, meta_block_bytes(groups));
  H5Id file(H5Fcreate(image_name(path).c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  if (!file.valid()) fail("cannot write ", path, ": creating the HDF5 file failed", hdf5_reason());
  // Attributes first: their strings live in HDF5's global heap, which is
  // allocated like raw data; created now it sits before the tensors.
  write_root_attributes(file.get(), kFormat, attributes, path);

  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Id scalar(H5Screate(H5S_SCALAR), H5Sclose);
  // Contiguous and uncompressed: loading is one read per tensor, and any
  // HDF5 reader (no filter plugins) can open the file.
  if (!dcpl.valid() || H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS) < 0 ||
      H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY) < 0 ||
      H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER) < 0 || !lcpl.valid() ||
      H5Pset_create_intermediate_group(lcpl.get(), 1) < 0 || !scalar.valid())
    fail("cannot write ", path, ": setting up HDF5 failed", hdf5_reason());

  std::vector<H5Id> group_ids;
  for (const StoreGroup& g : groups) {
    hid_t loc = file.get();
    if (!g.group.empty()) {
      // A group such as "ema/model" gets its parents created too.
      group_ids.emplace_back(
          H5Gcreate2(file.get(), g.group.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      if (!group_ids.back().valid())
        fail("cannot write ", path, ": creating group /", g.group, " failed", hdf5_reason());
      loc = group_ids.back().get();
    }
    for (const ParamSpec& spec : g.store->layout().specs()) {
      PlannedTensor t;
      t.where = dataset_path(g.group, spec.name);
      t.source = g.store->get(spec);
      t.bytes = static_cast<uint64_t>(spec.shape.numel()) * sizeof(float);
      const std::vector<hsize_t> dims = dims_of(spec.shape);
      H5Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
      if (space.valid())
        t.dataset = H5Id(H5Dcreate2(loc, spec.name.c_str(), H5T_IEEE_F32LE, space.get(),
                                    H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                         H5Dclose);
      if (t.dataset.valid())
        t.crc_attr = H5Id(H5Acreate2(t.dataset.get(), kCrcAttribute, H5T_STD_U32LE, scalar.get(),
                                     H5P_DEFAULT, H5P_DEFAULT),
                          H5Aclose);
      if (!t.crc_attr.valid())
        fail("cannot write ", path, ": creating tensor ", t.where, " failed", hdf5_reason());
      if (t.bytes > 0) {
        const haddr_t offset = H5Dget_offset(t.dataset.get());
        DECO_ASSERT(offset != HADDR_UNDEF, "HDF5 allocated no space for ", t.where);
        t.offset = offset;
      }
      tensors.push_back(std::move(t));
    }
  }

  // 2. The tensors, straight from host memory to the file, in file order,
  // each checksummed on the way.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  uint64_t data_end = 0;
  for (const PlannedTensor& t : tensors) data_end = std::max(data_end, t.offset + t.bytes);

  const std::string target = write_target(path, mode);
  RemoveUnlessDone cleanup{target};
  OutFile out(target);
  constexpr size_t kChunk = size_t{16} << 20;      // checksum and write granule
  constexpr uint64_t kWriteback = uint64_t{64} << 20;  // start writeback every this many bytes
  uint64_t writeback_from = 0;
  std::vector<float> staging;
  for (size_t i : order) {
    PlannedTensor& t = tensors[i];
    if (t.bytes == 0 || !out.ok()) continue;
    const float* values = nullptr;
    if (is_host_float32(t.source)) {
      values = static_cast<const float*>(t.source.raw());
    } else {
      staging.resize(static_cast<size_t>(t.source.numel()));
      copy_to_float32(t.source, staging.data());
      values = staging.data();
    }
    const auto* bytes = reinterpret_cast<const uint8_t*>(values);
    uLong crc = crc32_z(0L, Z_NULL, 0);
    for (uint64_t done = 0; done < t.bytes && out.ok();) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, t.bytes - done));
      crc = crc32_z(crc, bytes + done, n);
      out.write_at(t.offset + done, bytes + done, n);
      done += n;
      const uint64_t end = t.offset + done;
      if (end >= writeback_from + kWriteback) {
        out.start_writeback(writeback_from, end - writeback_from);
        writeback_from = end;
      }
    }
    t.crc = static_cast<uint32_t>(crc);
  }
  if (!out.ok()) write_failed(path, target, mode, "writing", out, data_end, out.error());

  // 3. The checksums into the metadata, and the metadata into the file.
  for (PlannedTensor& t : tensors) {
    if (H5Awrite(t.crc_attr.get(), H5T_NATIVE_UINT32, &t.crc) < 0)
      fail("cannot write ", path, ": writing the crc32 of ", t.where, " failed", hdf5_reason());
    t.crc_attr.close();
    t.dataset.close();
  }
  group_ids.clear();
  if (file.close() < 0)
    fail("cannot write ", path, ": closing the HDF5 file failed", hdf5_reason());
  DECO_ASSERT(image.kept != nullptr, "HDF5 left no image of ", path);
  const auto* meta = static_cast<const uint8_t*>(image.kept);
  const uint64_t eoa = superblock_eoa(meta, image.kept_size, path);
  DECO_ASSERT(eoa >= data_end, "HDF5 superblock of ", path, " ends at ", eoa, " before its data (",
              data_end, ")");
  // The image is all zeros inside the tensors' regions (HDF5 never wrote
  // there); everything around them is metadata.
  const uint64_t meta_end = std::min<uint64_t>(image.kept_size, eoa);
  uint64_t pos = 0;
  for (size_t i : order) {
    const PlannedTensor& t = tensors[i];
    if (t.bytes == 0) continue;
    if (pos < t.offset && pos < meta_end)
      out.write_at(pos, meta + pos, static_cast<size_t>(std::min(t.offset, meta_end) - pos));
    pos = std::max(pos, t.offset + t.bytes);
  }
  if (pos < meta_end) out.write_at(pos, meta + pos, static_cast<size_t>(meta_end - pos));
  out.set_size(eoa);
  out.finish();
  if (!out.ok()) write_failed(path, target, mode, "writing", out, eoa, out.error());
  if (mode == WriteMode::Replace) {
    if (std::rename(target.c_str(), path.c_str()) != 0)
      write_failed(path, target, mode, "renaming", out, eoa, errno);
    fsync_dir(parent_dir(path));
  }
  cleanup.done = true;
  return static_cast<int64_t>(eoa);
}

void save_weights_h5(const std::string& path, const ParamStore& store,
                     const std::map<std::string, std::string>& attributes,
                     const std::string& group) {
  save_stores_h5(path, {{group, &store}}, attributes, WriteMode::Replace);
}

int64_t save_scalars_h5(const std::string& path, const std::map<std::string, H5Scalar>& values,
                        const std::map<std::string, std::string>& attributes, WriteMode mode) {
  quiet_hdf5();
  check_output_path(path);
  std::vector<uint8_t> bytes;
  {
    // Small: the ordinary in-memory image, flushed and copied out.
    H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    if (!fapl.valid() || H5Pset_fapl_core(fapl.get(), size_t{64} << 10, 0) < 0)
      fail("cannot write ", path, ": setting up HDF5 failed", hdf5_reason());
    H5Id file(H5Fcreate(image_name(path).c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
    if (!file.valid()) fail("cannot write ", path, ": creating the HDF5 file failed", hdf5_reason());
    write_root_attributes(file.get(), kScalarsFormat, attributes, path);
    H5Id scalar(H5Screate(H5S_SCALAR), H5Sclose);
    H5Id text(H5Tcopy(H5T_C_S1), H5Tclose);
    if (!scalar.valid() || !text.valid() || H5Tset_size(text.get(), H5T_VARIABLE) < 0 ||
        H5Tset_cset(text.get(), H5T_CSET_UTF8) < 0)
      fail("cannot write ", path, ": setting up HDF5 failed", hdf5_reason());
    for (const auto& [name, value] : values) {
      hid_t file_type = text.get(), mem_type = text.get();
      const void* data = nullptr;
      const char* chars = nullptr;
      if (const auto* i = std::get_if<int64_t>(&value)) {
        file_type = H5T_STD_I64LE;
        mem_type = H5T_NATIVE_INT64;
        data = i;
      } else if (const auto* u = std::get_if<uint64_t>(&value)) {
        file_type = H5T_STD_U64LE;
        mem_type = H5T_NATIVE_UINT64;
        data = u;
      } else if (const auto* d = std::get_if<double>(&value)) {
        file_type = H5T_IEEE_F64LE;
        mem_type = H5T_NATIVE_DOUBLE;
        data = d;
      } else {
        chars = std::get<std::string>(value).c_str();
        data = &chars;
      }
      H5Id dataset(H5Dcreate2(file.get(), name.c_str(), file_type, scalar.get(), H5P_DEFAULT,
                              H5P_DEFAULT, H5P_DEFAULT),
                   H5Dclose);
      if (!dataset.valid() || H5Dwrite(dataset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        fail("cannot write ", path, ": writing /", name, " failed", hdf5_reason());
    }
    // Without the flush, HDF5 1.10's image lacks the cached metadata and
    // cannot be opened.
    if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0)
      fail("cannot write ", path, ": flushing the HDF5 file failed", hdf5_reason());
    const ssize_t size = H5Fget_file_image(file.get(), nullptr, 0);
    bytes.resize(size > 0 ? static_cast<size_t>(size) : 0);
    if (size <= 0 || H5Fget_file_image(file.get(), bytes.data(), bytes.size()) != size)
      fail("cannot write ", path, ": assembling the HDF5 file failed", hdf5_reason());
    if (file.close() < 0) fail("cannot write ", path, ": closing the HDF5 file failed", hdf5_reason());
  }
  write_small_file(path, bytes, mode);
  return static_cast<int64_t>(bytes.size());
}

namespace {

// ---------------------------------------------------------------- loading: diagnostics

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Layer index of "model.layers.<n>.<...>", or -1.
int64_t layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  int64_t n = 0;
  size_t i = prefix.size();
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') n = n * 10 + (name[i++] - '0');
  return n;
}

bool has_layer(const std::set<std::string>& names, int64_t layer) {
  for (const std::string& n : names)
    if (layer_of(n) == layer) return true;
  return false;
}

// The config setting that most likely explains why `name` is in the file
// but not in the layout (in_file) or the other way round, for the "written
// for a different model config (e.g. ...)" part of the message.
std::string config_hint(const std::string& name, bool in_file,
                        const std::set<std::string>& file_names,
                        const std::set<std::string>& layout_names) {
  const int64_t layer = layer_of(name);
  if (layer >= 0 && !has_layer(in_file ? layout_names : file_names, layer))
    return in_file ? "a larger num_layers" : "a smaller num_layers";
  if (contains(name, "expert_gate_proj"))
    return in_file ? "expert_gated: true" : "expert_gated: false";
  if (contains(name, "expert_act.rms_norm"))
    return "a different expert_act; only the variants with a per-expert RMS step have its gamma";
  if (contains(name, "shared_experts."))
    return in_file ? "moe_shared_expert_intermediate_size > 0"
                   : "moe_shared_expert_intermediate_size: 0";
  if (contains(name, "mlp.")) return "a different num_experts or dense_layers";
  return "a different architecture";
}

// The config keys that decide the shape of `name`.
const char* shape_keys(const std::string& name) {
  if (contains(name, "embed_tokens") || contains(name, "lm_head")) return "vocab_size, hidden_size";
  if (contains(name, "shared_experts.")) return "moe_shared_expert_intermediate_size, hidden_size";
  if (contains(name, "expert_act.rms_norm")) return "moe_ffn_hidden_size";
  if (contains(name, "mlp.expert_")) return "num_experts, moe_ffn_hidden_size, hidden_size";
  if (contains(name, "moe_router")) return "num_experts, hidden_size";
  if (contains(name, "router_norm")) return "num_experts";
  if (contains(name, "k_proj") || contains(name, "v_proj"))
    return "num_query_groups, num_attention_heads, hidden_size";
  if (contains(name, "self_attn.")) return "num_attention_heads, hidden_size";
  if (contains(name, "mlp.")) return "ffn_hidden_size, hidden_size";
  return "hidden_size";
}

// Up to `limit` names as "/g/a, /g/b and 3 more".
std::string name_list(const std::vector<std::string>& names, const std::string& group,
                      size_t limit = 3) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < limit; ++i)
    out += (i ? ", " : "") + dataset_path(group, names[i]);
  if (names.size() > limit) out += str(" and ", names.size() - limit, " more");
  return out;
}

std::vector<std::string> link_names(hid_t group_id) {
  std::vector<std::string> names;
  H5G_info_t info;
  if (H5Gget_info(group_id, &info) < 0) return names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(group_id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr,
                                           0, H5P_DEFAULT);
    if (len < 0) continue;
    std::string name(static_cast<size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(group_id, ".", H5_INDEX_NAME, H5_ITER_INC, i, &name[0], name.size(),
                       H5P_DEFAULT);
    name.resize(static_cast<size_t>(len));
    names.push_back(name);
  }
  return names;
}

void check_format_version(hid_t file, const std::string& path) {
  if (H5Aexists(file, "format_version") <= 0) return;  // files written by hand with h5py are fine
  H5Id attr(H5Aopen(file, "format_version", H5P_DEFAULT), H5Aclose);
  H5Id type(attr.valid() ? H5Aget_type(attr.get()) : -1, H5Tclose);
  int64_t version = 0;
  if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER ||
      H5Aread(attr.get(), H5T_NATIVE_INT64, &version) < 0)
    return;
  if (version > kFormatVersion)
    fail(path, " has deco weights format_version ", version, ", newer than this deco reads (",
         kFormatVersion, "); update deco");
}

const char* class_name(H5T_class_t cls) {
  switch (cls) {
    case H5T_INTEGER: return "integer";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound (record)";
    case H5T_ENUM: return "enum";
    case H5T_BITFIELD: return "bitfield";
    default: return "non-numeric";
  }
}

// Converts checked float64 values into the store's dtype on the host.
std::vector<uint8_t> from_float64(const std::vector<double>& values, DType dtype) {
  std::vector<uint8_t> out(values.size() * dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::F32: reinterpret_cast<float*>(out.data())[i] = static_cast<float>(values[i]); break;
      case DType::F64: reinterpret_cast<double*>(out.data())[i] = values[i]; break;
      case DType::BF16:
        reinterpret_cast<uint16_t*>(out.data())[i] = float_to_bf16(static_cast<float>(values[i]));
        break;
      default: DECO_ASSERT(false, "weights cannot be loaded into a ", dtype_name(dtype), " store");
    }
  }
  return out;
}

// Largest finite magnitude that survives conversion to `dtype` (bf16 rounds
// values just below float's max up to Inf).
double max_finite(DType dtype) {
  switch (dtype) {
    case DType::F64: return std::numeric_limits<double>::max();
    case DType::BF16: return static_cast<double>(bf16_to_float(0x7f7f));
    default: return static_cast<double>(std::numeric_limits<float>::max());
  }
}

// ---------------------------------------------------------------- loading

// How messages about a file being read are worded: "cannot <action> <path>:
// ...", what a non-HDF5 file is told, and the fix for a damaged file.
struct Reading {
  std::string action;
  std::string not_hdf5;
  std::string fix;
};

Reading weights_reading() {
  return {"load weights from",
          "it is not an HDF5 file (deco reads weights as HDF5, written by deco or with h5py)",
          "copy or save it again"};
}

Reading checkpoint_reading(const std::string& fix) {
  return {"load checkpoint file", "it is not an HDF5 file; the file is corrupted: " + fix, fix};
}

H5Id open_for_reading(const std::string& path, const Reading& how) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail("cannot ", how.action, " ", path, ": ", std::strerror(errno), "; check the path");
  if (S_ISDIR(st.st_mode)) fail("cannot ", how.action, " ", path, ": it is a directory, not an HDF5 file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) fail("cannot ", how.action, " ", path, ": the file cannot be read", hdf5_reason());
  if (is_hdf5 == 0) fail("cannot ", how.action, " ", path, ": ", how.not_hdf5);
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid())
    fail("cannot ", how.action, " ", path, ": HDF5 cannot open it", hdf5_reason(),
         "; the file may be truncated or corrupt (", how.fix, ")");
  check_format_version(file.get(), path);
  return file;
}

// Opens every parameter of the store's layout at /<group>/<name>, in layout
// order, after checking names (all present, nothing unknown), shapes and
// dtype classes: nothing is read before the whole group is known to fit.
std::vector<H5Id> open_group(hid_t file, const std::string& path, const std::string& group,
                             const ParamStore& store) {
  H5Id group_id;
  hid_t loc = file;
  if (!group.empty()) {
    if (H5Lexists(file, group.c_str(), H5P_DEFAULT) > 0)
      group_id = H5Id(H5Gopen2(file, group.c_str(), H5P_DEFAULT), H5Gclose);
    if (!group_id.valid()) {
      std::vector<std::string> top = link_names(file);
      fail(path, " has no group /", group, " (", top.empty() ? "it is empty" : "it holds " +
           name_list(top, "", 5), "); it is not a deco weights file, or was saved under another "
           "group");
    }
    loc = group_id.get();
  }

  // Names first: a file from another config would otherwise fail on some
  // shape deep inside, or worse, load half its tensors without complaint.
  const std::vector<std::string> in_file = link_names(loc);
  const std::set<std::string> file_names(in_file.begin(), in_file.end());
  std::set<std::string> layout_names;
  for (const ParamSpec& spec : store.layout().specs()) layout_names.insert(spec.name);
  std::vector<std::string> missing, unknown;
  for (const ParamSpec& spec : store.layout().specs())
    if (!file_names.count(spec.name)) missing.push_back(spec.name);
  for (const std::string& name : in_file)
    if (!layout_names.count(name)) unknown.push_back(name);
  if (!missing.empty())
    fail(path, " has no tensor ", dataset_path(group, missing[0]),
         missing.size() > 1 ? str(" (nor ", missing.size() - 1, " other tensors the config needs)")
                            : "",
         unknown.empty() ? "" : "; instead it holds " + name_list(unknown, group),
         "; it was written for a different model config (e.g. ",
         config_hint(missing[0], false, file_names, layout_names),
         "): load it with the config it was trained with");
  if (!unknown.empty())
    fail(path, " holds tensors the config does not have: ", name_list(unknown, group),
         "; it was written for a different model config (e.g. ",
         config_hint(unknown[0], true, file_names, layout_names),
         "): load it with the config it was trained with");

  std::vector<H5Id> datasets;
  for (const ParamSpec& spec : store.layout().specs()) {
    const std::string where = dataset_path(group, spec.name);
    H5Id dataset(H5Dopen2(loc, spec.name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!dataset.valid()) fail(path, ": ", where, " is not a dataset", hdf5_reason());
    H5Id space(H5Dget_space(dataset.get()), H5Sclose);
    H5Id type(H5Dget_type(dataset.get()), H5Tclose);
    if (!space.valid() || !type.valid()) fail(path, ": reading ", where, " failed", hdf5_reason());
    const int ndims = H5Sget_simple_extent_ndims(space.get());
    std::vector<hsize_t> dims(static_cast<size_t>(ndims < 0 ? 0 : ndims));
    if (ndims > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    const std::vector<hsize_t> want = dims_of(spec.shape);
    if (ndims < 0 || H5Sget_simple_extent_type(space.get()) == H5S_NULL || dims != want)
      fail(path, ": tensor ", where, " has shape ", shape_string(dims), " but the config expects ",
           shape_string(want), "; it was written for a different model config (check ",
           shape_keys(spec.name), ")");
    const H5T_class_t cls = H5Tget_class(type.get());
    if (cls != H5T_FLOAT)
      fail(path, ": tensor ", where, " holds ", class_name(cls), " data; weights must be floating "
           "point (float32 or float64)");
    datasets.push_back(std::move(dataset));
  }
  return datasets;
}

// The tensor's crc32 attribute, if it has one.
std::optional<uint32_t> stored_crc(hid_t dataset, const std::string& path, const std::string& where) {
  if (H5Aexists(dataset, kCrcAttribute) <= 0) return std::nullopt;
  H5Id attr(H5Aopen(dataset, kCrcAttribute, H5P_DEFAULT), H5Aclose);
  H5Id type(attr.valid() ? H5Aget_type(attr.get()) : -1, H5Tclose);
  uint32_t crc = 0;
  if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER ||
      H5Aread(attr.get(), H5T_NATIVE_UINT32, &crc) < 0)
    fail(path, ": tensor ", where, " has a crc32 attribute that is not an unsigned 32-bit integer",
         hdf5_reason());
  return crc;
}

void check_crc(const std::string& path, const std::string& where, uint32_t stored,
               uint32_t computed, const std::string& fix) {
  if (stored != computed)
    fail(path, ": tensor ", where, " fails its checksum (crc32 ", stored, " stored, ", computed,
         " computed); the file is corrupted: ", fix);
}

// The whole dataset as little-endian float32 (HDF5 converts other float
// formats), the bytes the crc32 is defined over.
void read_float32(hid_t dataset, float* out, const std::string& path, const std::string& where) {
  if (H5Dread(dataset, H5T_IEEE_F32LE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    fail(path, ": reading tensor ", where, " failed", hdf5_reason(),
         "; the file may be truncated or corrupt");
}

size_t largest_tensor(const std::vector<StoreGroup>& groups) {
  size_t n = 0;
  for (const StoreGroup& g : groups)
    for (const ParamSpec& spec : g.store->layout().specs())
      n = std::max(n, static_cast<size_t>(spec.shape.numel()));
  return n;
}

}  // namespace

void load_weights_h5(const std::string& path, const ParamStore& store, const std::string& group) {
  quiet_hdf5();
  const DType dtype = store.flat().dtype();
  DECO_ASSERT(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::BF16,
              "load_weights_h5 into a ", dtype_name(dtype), " store");
  const Reading how = weights_reading();
  H5Id file = open_for_reading(path, how);
  std::vector<H5Id> datasets = open_group(file.get(), path, group, store);

  // Values. HDF5 converts any float format (float16, float32, float64)
  // exactly into float64; the checksum, range and finiteness checks happen
  // there, before narrowing to the store's dtype.
  const double limit = max_finite(dtype);
  const auto& specs = store.layout().specs();
  std::vector<float> as_float32;
  for (size_t p = 0; p < specs.size(); ++p) {
    const ParamSpec& spec = specs[p];
    const std::string where = dataset_path(group, spec.name);
    std::vector<double> values(static_cast<size_t>(spec.shape.numel()));
    if (!values.empty() && H5Dread(datasets[p].get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL,
                                   H5P_DEFAULT, values.data()) < 0)
      fail(path, ": reading tensor ", where, " failed", hdf5_reason());
    if (const std::optional<uint32_t> crc = stored_crc(datasets[p].get(), path, where)) {
      // Exact: every value of a float32 dataset is a float64 too.
      as_float32.assign(values.begin(), values.end());
      check_crc(path, where, *crc, crc32_of(as_float32.data(), as_float32.size() * sizeof(float)),
                how.fix);
    }
    datasets[p].close();
    for (size_t i = 0; i < values.size(); ++i) {
      const double v = values[i];
      if (std::isfinite(v) && std::fabs(v) <= limit) continue;
      const std::string at = index_string(spec.shape, static_cast<int64_t>(i));
      if (std::isnan(v) || std::isinf(v))
        fail(path, ": tensor ", where, " holds ", std::isnan(v) ? "NaN" : "Inf", " at index ", at,
             "; the weights are corrupt or come from a diverged run: load an earlier checkpoint");
      fail(path, ": tensor ", where, " holds ", v, " at index ", at, ", which does not fit in ",
           dtype_name(dtype));
    }
    const std::vector<uint8_t> converted = from_float64(values, dtype);
    const Tensor dst = store.get(spec);
    if (!converted.empty())
      device_copy(dst.device(), dst.raw(), Device::CPU, converted.data(), converted.size());
  }
}

void verify_stores_h5(const std::string& path, const std::vector<StoreGroup>& groups,
                      const std::string& fix) {
  quiet_hdf5();
  const Reading how = checkpoint_reading(fix);
  H5Id file = open_for_reading(path, how);
  std::vector<std::vector<H5Id>> opened;
  for (const StoreGroup& g : groups) opened.push_back(open_group(file.get(), path, g.group, *g.store));
  std::vector<float> values(largest_tensor(groups));
  for (size_t k = 0; k < groups.size(); ++k) {
    const auto& specs = groups[k].store->layout().specs();
    for (size_t p = 0; p < specs.size(); ++p) {
      const std::string where = dataset_path(groups[k].group, specs[p].name);
      const hid_t dataset = opened[k][p].get();
      const std::optional<uint32_t> crc = stored_crc(dataset, path, where);
      if (!crc)
        fail(path, ": tensor ", where, " has no crc32 attribute; checkpoint tensors carry one, so "
             "the file was not written by deco or was rewritten by another tool: ", fix);
      const size_t n = static_cast<size_t>(specs[p].shape.numel());
      if (n > 0) read_float32(dataset, values.data(), path, where);
      check_crc(path, where, *crc, crc32_of(values.data(), n * sizeof(float)), fix);
      opened[k][p].close();
    }
  }
}

void read_stores_h5(const std::string& path, const std::vector<StoreGroup>& groups,
                    const std::string& fix) {
  quiet_hdf5();
  H5Id file = open_for_reading(path, checkpoint_reading(fix));
  std::vector<float> staging;
  for (const StoreGroup& g : groups) {
    std::vector<H5Id> datasets = open_group(file.get(), path, g.group, *g.store);
    const auto& specs = g.store->layout().specs();
    for (size_t p = 0; p < specs.size(); ++p) {
      const Tensor dst = g.store->get(specs[p]);
      if (dst.numel() == 0) continue;
      const std::string where = dataset_path(g.group, specs[p].name);
      if (is_host_float32(dst)) {
        read_float32(datasets[p].get(), static_cast<float*>(dst.raw()), path, where);
      } else {
        staging.resize(static_cast<size_t>(dst.numel()));
        read_float32(datasets[p].get(), staging.data(), path, where);
        copy_from_float32(staging.data(), dst);
      }
      datasets[p].close();
    }
  }
}

std::map<std::string, std::vector<int64_t>> list_tensors_h5(const std::string& path, const std::string& group,
                                                            const std::string& fix) {
  quiet_hdf5();
  H5Id file = open_for_reading(path, checkpoint_reading(fix));
  if (H5Lexists(file.get(), group.c_str(), H5P_DEFAULT) <= 0) return {};
  H5Id g(H5Gopen2(file.get(), group.c_str(), H5P_DEFAULT), H5Gclose);
  if (!g.valid()) fail(path, ": reading group /", group, " failed", hdf5_reason(), "; ", fix);
  std::map<std::string, std::vector<int64_t>> out;
  for (const std::string& name : link_names(g.get())) {
    H5Id dataset(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
    H5Id space(dataset.valid() ? H5Dget_space(dataset.get()) : -1, H5Sclose);
    if (!space.valid()) fail(path, ": reading ", dataset_path(group, name), " failed", hdf5_reason(), "; ", fix);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
    if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    out[name] = std::vector<int64_t>(dims.begin(), dims.end());
  }
  return out;
}

void read_tensor_h5(const std::string& path, const std::string& group, const std::string& name, float* out,
                    int64_t count, const std::string& fix) {
  quiet_hdf5();
  H5Id file = open_for_reading(path, checkpoint_reading(fix));
  const std::string where = dataset_path(group, name);
  H5Id dataset(H5Dopen2(file.get(), where.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) fail(path, " has no tensor ", where, hdf5_reason(), "; ", fix);
  H5Id space(H5Dget_space(dataset.get()), H5Sclose);
  if (!space.valid() || H5Sget_simple_extent_npoints(space.get()) != count)
    fail(path, ": tensor ", where, " does not hold ", count, " values; ", fix);
  const std::optional<uint32_t> crc = stored_crc(dataset.get(), path, where);
  if (!crc)
    fail(path, ": tensor ", where, " has no crc32 attribute; checkpoint tensors carry one, so the file was "
         "not written by deco or was rewritten by another tool: ", fix);
  if (count > 0) read_float32(dataset.get(), out, path, where);
  check_crc(path, where, *crc, crc32_of(out, static_cast<size_t>(count) * sizeof(float)), fix);
}

std::map<std::string, H5Scalar> load_scalars_h5(const std::string& path, const std::string& fix) {
  quiet_hdf5();
  H5Id file = open_for_reading(path, checkpoint_reading(fix));
  std::map<std::string, H5Scalar> values;
  for (const std::string& name : link_names(file.get())) {
    H5O_info_t info;
    if (H5Oget_info_by_name(file.get(), name.c_str(), &info, H5P_DEFAULT) < 0 ||
        info.type != H5O_TYPE_DATASET)
      continue;
    H5Id dataset(H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
    H5Id space(dataset.valid() ? H5Dget_space(dataset.get()) : -1, H5Sclose);
    H5Id type(dataset.valid() ? H5Dget_type(dataset.get()) : -1, H5Tclose);
    if (!space.valid() || !type.valid()) fail(path, ": reading /", name, " failed", hdf5_reason());
    if (H5Sget_simple_extent_type(space.get()) != H5S_SCALAR) continue;
    bool ok = true;
    switch (H5Tget_class(type.get())) {
      case H5T_INTEGER:
        if (H5Tget_sign(type.get()) == H5T_SGN_NONE) {
          uint64_t v = 0;
          ok = H5Dread(dataset.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0;
          values[name] = v;
        } else {
          int64_t v = 0;
          ok = H5Dread(dataset.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0;
          values[name] = v;
        }
        break;
      case H5T_FLOAT: {
        double v = 0;
        ok = H5Dread(dataset.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0;
        values[name] = v;
        break;
      }
      case H5T_STRING: {
        if (H5Tis_variable_str(type.get()) > 0) {
          H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
          char* text = nullptr;
          ok = mem.valid() && H5Tset_size(mem.get(), H5T_VARIABLE) >= 0 &&
               H5Tset_cset(mem.get(), H5Tget_cset(type.get())) >= 0 &&
               H5Dread(dataset.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &text) >= 0;
          values[name] = std::string(text != nullptr ? text : "");
          if (text != nullptr) H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, &text);
        } else {
          // Fixed-length, as NumPy bytes arrive from h5py: padded with NULs.
          const size_t size = H5Tget_size(type.get());
          std::string text(size, '\0');
          ok = size > 0 && H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                   &text[0]) >= 0;
          text.resize(std::strlen(text.c_str()));
          values[name] = text;
        }
        break;
      }
      default: continue;
    }
    if (!ok)
      fail(path, ": reading /", name, " failed", hdf5_reason(), "; the file may be truncated or "
           "corrupt (", fix, ")");
  }
  return values;
}

}  // namespace deco
