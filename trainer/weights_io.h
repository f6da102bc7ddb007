// Weights (and gradients) as HDF5 files that h5py, PyTorch scripts and the
// HDF5 command-line tools read directly.
//
// Layout of a file:
//   /                 attributes format = "deco-weights", format_version = 1,
//                     plus whatever string attributes the caller adds
//   /<group>/<name>   one float32 dataset per parameter, logical shape,
//                     e.g. /model/lm_head.weight [V, H]
// Parameter names contain dots; HDF5 link names may, so every parameter is
// one link directly below the group.
#pragma once

#include <map>
#include <string>

#include "model/params.h"

namespace deco {

// Writes every parameter of `store` (float32/float64/bfloat16, CPU or GPU;
// values go through the host and are stored as float32). Non-finite values
// are written as they are: the writer also dumps gradients (G.h5), where a
// NaN is the thing being looked for.
// Atomic: writes <path>.tmp-<pid>, fsyncs it, then renames it over <path>;
// on failure the temporary is removed and <path> is left as it was. The file
// is assembled in host memory first (peak: twice the file's size), so a
// full disk is a clean deco::Error rather than a half-closed HDF5 file.
// Throws deco::Error naming the file and the cause.
void save_weights_h5(const std::string& path, const ParamStore& store,
                     const std::map<std::string, std::string>& attributes = {},
                     const std::string& group = "model");

// Reads every parameter of the store's layout from /<group>/<name>,
// converting any floating-point dataset (float32, float64, float16) into the
// store's dtype. Names, shapes and dtypes of the whole file are checked
// before any value is written to the store. Throws deco::Error, naming the
// file and the tensor, when the file is missing or not HDF5, a parameter is
// missing, the file holds tensors the layout does not know, a shape or dtype
// class differs, or a value is NaN/Inf or does not fit in the store's dtype.
// After a value error the store may be partly overwritten.
void load_weights_h5(const std::string& path, const ParamStore& store,
                     const std::string& group = "model");

}  // namespace deco
