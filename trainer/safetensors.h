// Hugging Face safetensors files: the format `deco export` writes and
// `deco import` reads (docs/export.md).
//
// Layout of a file:
//   8 bytes    N, the header's length, unsigned little-endian
//   N bytes    a UTF-8 JSON object: {"<name>": {"dtype": "F32", "shape": [V, H],
//              "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v", ...}},
//              padded with trailing spaces
//   the rest   the data buffer: every tensor's little-endian, row-major bytes,
//              at [begin, end) relative to the buffer's start
// The reader holds files to what the format's own (Rust) implementation
// accepts: the tensors' byte ranges must tile the buffer exactly (no gap, no
// overlap, nothing after the last one), each range must be exactly the size
// its shape and dtype need, the header must be at most 100 MB and start with
// '{', and no JSON object may repeat a key. Anything else is a deco::Error
// naming the file, the tensor and what is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/bf16.h"

namespace deco {

// The element types safetensors defines, by their names in the header.
enum class StDtype : uint8_t {
  BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64
};

const char* st_dtype_name(StDtype dtype);  // "BF16"
size_t st_dtype_size(StDtype dtype);       // bytes per element
// False when `name` is not a safetensors dtype.
bool parse_st_dtype(const std::string& name, StDtype* out);

// One tensor to write. `data` holds numel * st_dtype_size(dtype) bytes in
// the file's byte order (little-endian, row-major) and must stay valid until
// write_safetensors returns: the writer streams it to disk without copying.
struct StTensorView {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes `tensors` and the string pairs of `metadata` (the header's
// "__metadata__"; omitted when empty) to `path`, atomically
// (write_file_atomic): a crash or a full disk leaves any old file at `path`
// as it was. The header is padded with spaces to a multiple of 8 bytes and
// the tensors are stored by decreasing element size, keeping the given order
// among equal sizes, so every tensor starts at a multiple of its element size
// in the file (what memory-mapping readers want). Throws deco::Error for an
// empty, repeated or reserved name and for a file that cannot be written.
void write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A tensor as the header describes it; begin/end are byte offsets into the
// data buffer.
struct StTensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
  int64_t numel() const;
};

// An open safetensors file. The constructor reads and validates the header
// only; tensor data is read on request, one tensor at a time, so reading a
// model never needs more than its own size in memory.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws deco::Error
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }  // by offset
  const StTensorInfo* find(const std::string& name) const;                 // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's bytes as stored.
  std::vector<uint8_t> read_bytes(const StTensorInfo& tensor) const;
  // The tensor's values as float32 into out[0, numel): F32 exactly, BF16 and
  // F16 exactly (both are subsets of float32), F64 rounded to nearest (a
  // finite value beyond float32's range becomes Inf). Other dtypes are a
  // deco::Error naming the tensor.
  void read_float32(const StTensorInfo& tensor, float* out) const;

 private:
  void read_at(uint64_t offset, void* dst, size_t bytes) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;  // 8 + N
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// float_to_bf16_bits and bf16_bits_to_float: core/bf16.h.
float f16_bits_to_float(uint16_t bits);      // exact, subnormals, Inf and NaN included

}  // namespace deco
