// Weights, gradients and checkpoint tensors as HDF5 files that h5py,
// PyTorch scripts and the HDF5 command-line tools read directly.
//
// Layout of a tensor file:
//   /                 attributes format = "deco-weights", format_version = 1,
//                     plus whatever string attributes the caller adds
//   /<group>/<name>   one float32 dataset per parameter, logical shape,
//                     e.g. /model/lm_head.weight [V, H], with attribute
//                     crc32 (uint32): zlib's CRC-32 of its little-endian
//                     float32 bytes, checked whenever the file is read
// Parameter names contain dots; HDF5 link names may, so every parameter is
// one link directly below its group. A file may hold several groups (a
// checkpoint's optimizer.h5 has /exp_avg and /exp_avg_sq).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "model/params.h"

namespace deco {

// One store of a tensor file: its parameters live at /<group>/<name>.
struct StoreGroup {
  std::string group;
  const ParamStore* store = nullptr;
};

// How a file reaches its path.
enum class WriteMode {
  // <path>.tmp-<pid> is written and fsynced, then renamed over <path> and
  // the directory fsynced: a file users keep (W.h5) is never half-written.
  Replace,
  // <path> itself is written and fsynced: for files inside a temporary
  // directory that is renamed into place as a whole (checkpoints).
  Create,
};

// Writes every parameter of each store (float32/float64/bfloat16, CPU or
// GPU; stored as float32) under its group, with its crc32. Non-finite values
// are written as they are: the writer also dumps gradients (G.h5), where a
// NaN is the thing being looked for. HDF5 lays out the file's metadata in
// memory and never touches the disk; the tensor bytes go from the store
// (or from a one-tensor float32 copy when the store is not float32 in host
// memory) straight to the file with POSIX writes, so a full disk is a clean
// deco::Error and the extra memory is about 1 KB per tensor. On failure the
// partial file is removed (Replace: <path> keeps its old contents).
// Returns the file's size in bytes. Throws deco::Error naming the file and
// the cause.
int64_t save_stores_h5(const std::string& path, const std::vector<StoreGroup>& groups,
                       const std::map<std::string, std::string>& attributes = {},
                       WriteMode mode = WriteMode::Replace);

// save_stores_h5 of one store, replacing `path` atomically.
void save_weights_h5(const std::string& path, const ParamStore& store,
                     const std::map<std::string, std::string>& attributes = {},
                     const std::string& group = "model");

// Reads every parameter of the store's layout from /<group>/<name>,
// converting any floating-point dataset (float32, float64, float16) into the
// store's dtype. Names, shapes and dtypes of the whole file are checked
// before any value is written to the store. Throws deco::Error, naming the
// file and the tensor, when the file is missing or not HDF5, a parameter is
// missing, the file holds tensors the layout does not know, a shape or dtype
// class differs, a tensor fails its crc32 (files without the attribute,
// e.g. written with h5py, are read unchecked), or a value is NaN/Inf or does
// not fit in the store's dtype. After a value error the store may be partly
// overwritten.
void load_weights_h5(const std::string& path, const ParamStore& store,
                     const std::string& group = "model");

// For checkpoints, whose stores must never be half-loaded: checks that
// `path` holds exactly each store's tensors under its group, with the
// store's shapes, floating-point data and a crc32 attribute that matches,
// reading every tensor once (one at a time) and writing nothing. `fix` ends
// the messages about damaged files ("resume from an earlier checkpoint").
void verify_stores_h5(const std::string& path, const std::vector<StoreGroup>& groups,
                      const std::string& fix);
// Reads a file verify_stores_h5 accepted into the stores.
void read_stores_h5(const std::string& path, const std::vector<StoreGroup>& groups,
                    const std::string& fix);

// The datasets directly below /<group> of a tensor file and their dims, for
// readers that pick what they need (sharded checkpoints); empty when the
// file has no such group. deco::Error ending in `fix` when the file cannot
// be read.
std::map<std::string, std::vector<int64_t>> list_tensors_h5(const std::string& path, const std::string& group,
                                                            const std::string& fix);
// /<group>/<name> whole, as float32 into out[count], its crc32 attribute
// required and checked (deco::Error naming the file and tensor otherwise).
void read_tensor_h5(const std::string& path, const std::string& group, const std::string& name, float* out,
                    int64_t count, const std::string& fix);

// A small file of named scalars and strings (a checkpoint's state.h5): one
// scalar dataset per entry at /<name> (int64, uint64, float64 or UTF-8
// string), so `h5ls -r` lists them and h5dump or h5py print them.
using H5Scalar = std::variant<int64_t, uint64_t, double, std::string>;
int64_t save_scalars_h5(const std::string& path, const std::map<std::string, H5Scalar>& values,
                        const std::map<std::string, std::string>& attributes = {},
                        WriteMode mode = WriteMode::Replace);
// Every scalar dataset at the root of `path`; deco::Error (ending in `fix`)
// when the file is missing, not HDF5, truncated or unreadable.
std::map<std::string, H5Scalar> load_scalars_h5(const std::string& path, const std::string& fix);

// zlib's CRC-32 of `bytes` bytes, the checksum tensor files carry.
uint32_t crc32_of(const void* data, size_t bytes);

// A float tensor (float32/float64/bfloat16, any device) as float32 in host
// memory, and back (rounding to nearest even for bfloat16).
void copy_to_float32(const Tensor& src, float* dst);
void copy_from_float32(const float* src, const Tensor& dst);

}  // namespace deco
