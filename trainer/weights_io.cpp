#include "trainer/weights_io.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"

namespace deco {
namespace {

constexpr const char* kFormat = "deco-weights";
constexpr int64_t kFormatVersion = 1;

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

std::vector<float> to_float32(const Tensor& t) {
  std::vector<uint8_t> staging;
  const void* src = host_bytes(t, &staging);
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  switch (t.dtype()) {
    case DType::F32: std::memcpy(out.data(), src, n * sizeof(float)); break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<const double*>(src)[i]);
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(static_cast<const uint16_t*>(src)[i]);
      break;
    case DType::I32:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<const int32_t*>(src)[i]);
      break;
    case DType::I64:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<const int64_t*>(src)[i]);
      break;
  }
  return out;
}

// ---------------------------------------------------------------- saving

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

// Builds the whole file in memory with HDF5's core driver and returns its
// bytes; `name` only identifies the in-memory file, `path` is the name users
// know. HDF5 1.10 cannot abandon a file after a disk write error (a failed
// H5Fclose leaves a half-closed file that crashes the process at exit), so
// HDF5 never touches the disk here: write_image does, with plain POSIX calls
// whose errors (ENOSPC, EFBIG, EIO) leave nothing behind to clean up. The
// cost is the file's size in host memory, twice, while saving.
std::vector<uint8_t> build_image(const std::string& name, const std::string& path,
                                 const ParamStore& store,
                                 const std::map<std::string, std::string>& attributes,
                                 const std::string& group) {
  // One allocation of about the final size, so the image is not regrown
  // (and copied) tensor by tensor.
  size_t estimate = size_t{1} << 20;
  for (const ParamSpec& spec : store.layout().specs())
    estimate += static_cast<size_t>(spec.shape.numel()) * sizeof(float) + 1024;
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.valid() || H5Pset_fapl_core(fapl.get(), estimate, /*backing_store=*/0) < 0)
    fail("cannot write ", path, ": setting up HDF5 failed", hdf5_reason());
  H5Id file(H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  if (!file.valid()) fail("cannot write ", path, ": creating the HDF5 file failed", hdf5_reason());

  H5Id group_id;
  hid_t loc = file.get();
  if (!group.empty()) {
    // A group such as "ema/model" gets its parents created too.
    H5Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_create_intermediate_group(lcpl.get(), 1);
    group_id = H5Id(H5Gcreate2(file.get(), group.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
                    H5Gclose);
    if (!group_id.valid())
      fail("cannot write ", path, ": creating group /", group, " failed", hdf5_reason());
    loc = group_id.get();
  }

  for (const ParamSpec& spec : store.layout().specs()) {
    const std::vector<float> values = to_float32(store.get(spec));
    std::vector<hsize_t> dims;
    for (int d = 0; d < spec.shape.ndim; ++d) dims.push_back(static_cast<hsize_t>(spec.shape[d]));
    H5Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    // Contiguous and uncompressed: loading is one read per tensor, and any
    // HDF5 reader (no filter plugins) can open the file.
    H5Id dataset(H5Dcreate2(loc, spec.name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                            H5P_DEFAULT, H5P_DEFAULT),
                 H5Dclose);
    if (!space.valid() || !dataset.valid())
      fail("cannot write ", path, ": creating tensor ", dataset_path(group, spec.name), " failed",
           hdf5_reason());
    if (!values.empty() && H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                    values.data()) < 0)
      fail("cannot write ", path, ": writing tensor ", dataset_path(group, spec.name), " failed",
           hdf5_reason());
  }

  write_string_attribute(file.get(), "format", kFormat, path);
  write_int_attribute(file.get(), "format_version", kFormatVersion, path);
  for (const auto& [key, value] : attributes) write_string_attribute(file.get(), key, value, path);
  group_id.close();

  // Without the flush, HDF5 1.10's image lacks the cached metadata and
  // cannot be opened.
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0)
    fail("cannot write ", path, ": flushing the HDF5 file failed", hdf5_reason());
  const ssize_t size = H5Fget_file_image(file.get(), nullptr, 0);
  std::vector<uint8_t> image(size > 0 ? static_cast<size_t>(size) : 0);
  if (size <= 0 || H5Fget_file_image(file.get(), image.data(), image.size()) != size)
    fail("cannot write ", path, ": assembling the HDF5 file failed", hdf5_reason());
  if (file.close() < 0) fail("cannot write ", path, ": closing the HDF5 file failed", hdf5_reason());
  return image;
}

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

}  // namespace

void save_weights_h5(const std::string& path, const ParamStore& store,
                     const std::map<std::string, std::string>& attributes,
                     const std::string& group) {
  quiet_hdf5();
  for (const auto& entry : attributes)
    DECO_ASSERT(!entry.first.empty() && entry.first != "format" && entry.first != "format_version",
                "save_weights_h5: attribute name '", entry.first, "' is empty or reserved");
  // The HDF5 file is assembled in memory, then written in one atomic step.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    fail("cannot write ", path, ": it is a directory; choose a file name such as ", path, "/W.h5");
  const std::vector<uint8_t> image = build_image(path + ".image", path, store, attributes, group);
  write_file_atomic(path, {{image.data(), image.size()}});
}

void load_weights_h5(const std::string& path, const ParamStore& store, const std::string& group) {
  quiet_hdf5();
  const DType dtype = store.flat().dtype();
  DECO_ASSERT(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::BF16,
              "load_weights_h5 into a ", dtype_name(dtype), " store");

  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail("cannot load weights from ", path, ": ", std::strerror(errno), "; check the path");
  if (S_ISDIR(st.st_mode)) fail("cannot load weights from ", path, ": it is a directory, not an "
                                "HDF5 file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) fail("cannot load weights from ", path, ": the file cannot be read", hdf5_reason());
  if (is_hdf5 == 0)
    fail("cannot load weights from ", path, ": it is not an HDF5 file (deco reads weights as HDF5, "
         "written by deco or with h5py)");
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid())
    fail("cannot load weights from ", path, ": HDF5 cannot open it", hdf5_reason(),
         "; the file may be truncated or corrupt (copy or save it again)");
  check_format_version(file.get(), path);

  H5Id group_id;
  hid_t loc = file.get();
  if (!group.empty()) {
    if (H5Lexists(file.get(), group.c_str(), H5P_DEFAULT) > 0)
      group_id = H5Id(H5Gopen2(file.get(), group.c_str(), H5P_DEFAULT), H5Gclose);
    if (!group_id.valid()) {
      std::vector<std::string> top = link_names(file.get());
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

  // Shapes and dtype classes of every tensor, still before touching the store.
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
    std::vector<hsize_t> want;
    for (int d = 0; d < spec.shape.ndim; ++d) want.push_back(static_cast<hsize_t>(spec.shape[d]));
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

  // Values. HDF5 converts any float format (float16, float32, float64)
  // exactly into float64; the range and finiteness checks happen there,
  // before narrowing to the store's dtype.
  const double limit = max_finite(dtype);
  const auto& specs = store.layout().specs();
  for (size_t p = 0; p < specs.size(); ++p) {
    const ParamSpec& spec = specs[p];
    const std::string where = dataset_path(group, spec.name);
    std::vector<double> values(static_cast<size_t>(spec.shape.numel()));
    if (!values.empty() && H5Dread(datasets[p].get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL,
                                   H5P_DEFAULT, values.data()) < 0)
      fail(path, ": reading tensor ", where, " failed", hdf5_reason());
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

}  // namespace deco
