#include "trainer/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "core/error.h"
#include "core/file_io.h"

// Tensor bytes go between memory and the file as they are, so the host must
// share the format's byte order.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors I/O assumes a little-endian host"
#endif

namespace deco {
namespace {

// The format's own limit: a larger header is refused rather than parsed, so
// a corrupt length field cannot make the reader allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeEntry {
  StDtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {StDtype::BOOL, "BOOL", 1}, {StDtype::U8, "U8", 1},   {StDtype::I8, "I8", 1},
    {StDtype::F8_E5M2, "F8_E5M2", 1}, {StDtype::F8_E4M3, "F8_E4M3", 1},
    {StDtype::I16, "I16", 2},   {StDtype::U16, "U16", 2}, {StDtype::F16, "F16", 2},
    {StDtype::BF16, "BF16", 2}, {StDtype::I32, "I32", 4}, {StDtype::U32, "U32", 4},
    {StDtype::F32, "F32", 4},   {StDtype::F64, "F64", 8}, {StDtype::I64, "I64", 8},
    {StDtype::U64, "U64", 8},
};

const DtypeEntry& entry_of(StDtype dtype) {
  for (const DtypeEntry& e : kDtypes)
    if (e.dtype == dtype) return e;
  DECO_ASSERT(false, "unknown StDtype ", static_cast<int>(dtype));
  return kDtypes[0];
}

std::string known_dtypes() {
  std::string out;
  for (const DtypeEntry& e : kDtypes) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string range_string(uint64_t begin, uint64_t end) {
  return str("[", begin, ", ", end, "]");
}

// numel * element size, or false when it does not fit in 64 bits.
bool byte_size(const std::vector<int64_t>& shape, size_t element, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  return !__builtin_mul_overflow(n, static_cast<uint64_t>(element), out);
}

// ---------------------------------------------------------------- header parsing

using json = nlohmann::json;

// Every reader problem is one sentence starting the same way.
template <typename... Parts>
[[noreturn]] void malformed(const std::string& path, const Parts&... parts) {
  fail(path, " is not a valid safetensors file: ", parts...);
}

// Parses the header, refusing a key repeated within one object: JSON
// parsers keep one of the two silently, and which one differs between them,
// so such a file means different weights to different readers.
json parse_header(const std::string& text, const std::string& path) {
  std::vector<std::set<std::string>> open_objects;
  std::string repeated;
  const json::parser_callback_t track_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && repeated.empty()) repeated = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, track_keys);
  } catch (const json::parse_error& e) {
    // nlohmann's text starts with "[json.exception.parse_error.101] "; the rest is the useful part.
    std::string why = e.what();
    const size_t bracket = why.find("] ");
    if (bracket != std::string::npos) why = why.substr(bracket + 2);
    malformed(path, "its header is not valid JSON (", why, ")");
  }
  if (!repeated.empty())
    malformed(path, "its header repeats the key \"", repeated, "\" (the format forbids duplicate "
              "keys, and readers disagree on which copy counts)");
  if (!header.is_object()) malformed(path, "its header is JSON but not an object");
  return header;
}

const json& field(const json& entry, const char* key, const std::string& name,
                  const std::string& path) {
  const auto it = entry.find(key);
  if (it == entry.end())
    malformed(path, "tensor \"", name, "\" has no \"", key, "\" in the header");
  return *it;
}

std::vector<uint64_t> unsigned_list(const json& value, const char* key, const std::string& name,
                                    const std::string& path) {
  if (!value.is_array())
    malformed(path, "tensor \"", name, "\": \"", key, "\" is ", value.dump(), ", not a list of "
              "non-negative integers");
  std::vector<uint64_t> out;
  for (const json& v : value) {
    if (!v.is_number_unsigned())
      malformed(path, "tensor \"", name, "\": \"", key, "\" is ", value.dump(), ", not a list of "
                "non-negative integers");
    out.push_back(v.get<uint64_t>());
  }
  return out;
}

StTensorInfo parse_tensor(const std::string& name, const json& entry, const std::string& path) {
  if (!entry.is_object())
    malformed(path, "the header entry of tensor \"", name, "\" is ", entry.dump(), ", not an object "
              "with dtype, shape and data_offsets");
  StTensorInfo t;
  t.name = name;
  const json& dtype = field(entry, "dtype", name, path);
  if (!dtype.is_string() || !parse_st_dtype(dtype.get<std::string>(), &t.dtype))
    malformed(path, "tensor \"", name, "\" has dtype ", dtype.dump(), ", which safetensors does "
              "not define (it defines ", known_dtypes(), ")");
  for (uint64_t d : unsigned_list(field(entry, "shape", name, path), "shape", name, path)) {
    if (d > static_cast<uint64_t>(INT64_MAX))
      malformed(path, "tensor \"", name, "\" has a dimension of ", d, " elements, more than any "
                "file can hold");
    t.shape.push_back(static_cast<int64_t>(d));
  }
  const std::vector<uint64_t> offsets =
      unsigned_list(field(entry, "data_offsets", name, path), "data_offsets", name, path);
  if (offsets.size() != 2)
    malformed(path, "tensor \"", name, "\" has data_offsets ",
              field(entry, "data_offsets", name, path).dump(), ", not a pair [begin, end]");
  t.begin = offsets[0];
  t.end = offsets[1];
  if (t.end < t.begin)
    malformed(path, "tensor \"", name, "\" has data_offsets ", range_string(t.begin, t.end),
              " that end before they begin");
  uint64_t need = 0;
  if (!byte_size(t.shape, st_dtype_size(t.dtype), &need))
    malformed(path, "tensor \"", name, "\" has shape ", shape_string(t.shape), ", whose size "
              "overflows 64 bits");
  if (t.end - t.begin != need)
    malformed(path, "tensor \"", name, "\" has data_offsets ", range_string(t.begin, t.end), " (",
              t.end - t.begin, " bytes), but shape ", shape_string(t.shape), " of ",
              st_dtype_name(t.dtype), " needs ", need, " bytes");
  return t;
}

// The byte ranges must tile [0, data_bytes) exactly, as the format requires:
// overlapping tensors would alias each other's values, and bytes that belong
// to no tensor mean the header and the data disagree.
void check_tiling(const std::vector<StTensorInfo>& sorted, uint64_t data_bytes,
                  const std::string& path) {
  uint64_t pos = 0;
  const StTensorInfo* prev = nullptr;
  for (const StTensorInfo& t : sorted) {
    if (t.end > data_bytes)
      malformed(path, "tensor \"", t.name, "\" has data_offsets ", range_string(t.begin, t.end),
                ", past the end of the data buffer (", data_bytes, " bytes): the file is "
                "truncated or its header is wrong");
    if (t.begin < pos)
      malformed(path, "tensors \"", prev->name, "\" ", range_string(prev->begin, prev->end),
                " and \"", t.name, "\" ", range_string(t.begin, t.end), " overlap in the data "
                "buffer");
    if (t.begin > pos)
      malformed(path, "bytes ", range_string(pos, t.begin), " of the data buffer belong to no "
                "tensor (the next tensor, \"", t.name, "\", starts at ", t.begin, ")");
    pos = t.end;
    prev = &t;
  }
  if (pos != data_bytes)
    malformed(path, "the data buffer holds ", data_bytes, " bytes but its tensors end at byte ",
              pos, "; the last ", data_bytes - pos, " bytes belong to no tensor");
}

// Positional read of exactly `bytes`, retrying short reads and EINTR.
int pread_all(int fd, void* dst, size_t bytes, uint64_t offset) {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, static_cast<char*>(dst) + done, bytes - done,
                              static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;  // the file shrank since the header was validated
    done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

// ---------------------------------------------------------------- dtypes and conversions

const char* st_dtype_name(StDtype dtype) { return entry_of(dtype).name; }
size_t st_dtype_size(StDtype dtype) { return entry_of(dtype).size; }

bool parse_st_dtype(const std::string& name, StDtype* out) {
  for (const DtypeEntry& e : kDtypes)
    if (name == e.name) {
      *out = e.dtype;
      return true;
    }
  return false;
}

float f16_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  uint32_t u;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    std::memcpy(&u, &magnitude, sizeof u);
    u |= sign;
  } else if (exponent == 0x1f) {
    u = sign | 0x7f800000u | (mantissa << 13);  // Inf, or NaN with its payload
  } else {
    u = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ---------------------------------------------------------------- writing

void write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const StTensorView& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      fail("cannot write ", path, ": tensor name \"", t.name, "\" is ",
           t.name.empty() ? "empty" : "reserved for the header's metadata");
    if (!names.insert(t.name).second)
      fail("cannot write ", path, ": two tensors are named \"", t.name, "\"");
  }
  // Larger elements first: with sizes powers of two and the data start a
  // multiple of 8, every tensor then starts at a multiple of its element size.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return st_dtype_size(tensors[a].dtype) > st_dtype_size(tensors[b].dtype);
  });

  // ordered_json keeps "__metadata__" first and the tensors in data order,
  // which is how people reading the header expect to see it.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  std::vector<std::pair<const void*, size_t>> parts;
  uint64_t offset = 0;
  for (size_t i : order) {
    const StTensorView& t = tensors[i];
    uint64_t bytes = 0;
    if (!byte_size(t.shape, st_dtype_size(t.dtype), &bytes))
      fail("cannot write ", path, ": tensor \"", t.name, "\" has shape ", shape_string(t.shape),
           ", with a negative dimension or a size that overflows 64 bits");
    DECO_ASSERT(bytes == 0 || t.data != nullptr, "tensor ", t.name, " has no data");
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    if (bytes > 0) parts.emplace_back(t.data, static_cast<size_t>(bytes));
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not UTF-8
    fail("cannot write ", path, ": the header cannot be encoded as JSON (", e.what(), ")");
  }
  // Spaces pad the header so the data buffer starts 8-byte aligned in the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t length[8];
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(n >> (8 * i));
  parts.insert(parts.begin(), {{length, sizeof length}, {text.data(), text.size()}});
  write_file_atomic(path, parts);
}

// ---------------------------------------------------------------- reading

int64_t StTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0)
    fail("cannot read safetensors file ", path, ": ", std::strerror(errno), "; check the path");
  // A throwing constructor never runs the destructor, so a guard closes the
  // descriptor on every failure until the header has been validated.
  struct CloseOnThrow {
    int* fd;
    bool armed = true;
    ~CloseOnThrow() {
      if (armed && *fd >= 0) ::close(*fd);
      if (armed) *fd = -1;
    }
  } guard{&fd_};
  struct stat st {};
  if (::fstat(fd_, &st) != 0)
    fail("cannot read safetensors file ", path, ": ", std::strerror(errno));
  if (S_ISDIR(st.st_mode))
    fail("cannot read safetensors file ", path, ": it is a directory; give the .safetensors file");

  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < 8)
    malformed(path, "it has ", file_bytes, " bytes, fewer than the 8 of the header length");
  uint8_t length[8];
  read_at(0, length, sizeof length);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(length[i]) << (8 * i);
  if (n > kMaxHeaderBytes)
    malformed(path, "its header length field says ", n, " bytes, more than the format's limit of ",
              kMaxHeaderBytes, " (the file is corrupt or not safetensors)");
  if (n > file_bytes - 8)
    malformed(path, "its header length field says ", n, " bytes, but only ", file_bytes - 8,
              " bytes follow it (the file is truncated or not safetensors)");
  std::string text(static_cast<size_t>(n), '\0');
  read_at(8, text.data(), text.size());
  if (text.empty() || text[0] != '{')
    malformed(path, "its header does not start with '{' (the file is corrupt or not safetensors)");

  const json header = parse_header(text, path);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object())
        malformed(path, "its \"__metadata__\" is ", it.value().dump(), ", not an object of strings");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string())
          malformed(path, "\"__metadata__\" entry \"", m.key(), "\" is ", m.value().dump(),
                    ", not a string (metadata maps strings to strings)");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    tensors_.push_back(parse_tensor(it.key(), it.value(), path));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  data_start_ = 8 + n;
  check_tiling(tensors_, file_bytes - data_start_, path);
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  guard.armed = false;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

const StTensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::read_at(uint64_t offset, void* dst, size_t bytes) const {
  const int err = pread_all(fd_, dst, bytes, offset);
  if (err != 0)
    fail("cannot read ", path_, ": reading ", bytes, " bytes at offset ", offset, " failed: ",
         std::strerror(err), err == EIO ? " (the file may have been truncated while open)" : "");
}

std::vector<uint8_t> SafetensorsFile::read_bytes(const StTensorInfo& tensor) const {
  std::vector<uint8_t> out(static_cast<size_t>(tensor.end - tensor.begin));
  read_at(data_start_ + tensor.begin, out.data(), out.size());
  return out;
}

void SafetensorsFile::read_float32(const StTensorInfo& tensor, float* out) const {
  const size_t n = static_cast<size_t>(tensor.numel());
  switch (tensor.dtype) {
    case StDtype::F32:
      read_at(data_start_ + tensor.begin, out, n * sizeof(float));
      return;
    case StDtype::BF16:
    case StDtype::F16: {
      std::vector<uint16_t> bits(n);
      read_at(data_start_ + tensor.begin, bits.data(), n * sizeof(uint16_t));
      const bool bf16 = tensor.dtype == StDtype::BF16;
      for (size_t i = 0; i < n; ++i)
        out[i] = bf16 ? bf16_bits_to_float(bits[i]) : f16_bits_to_float(bits[i]);
      return;
    }
    case StDtype::F64: {
      std::vector<double> values(n);
      read_at(data_start_ + tensor.begin, values.data(), n * sizeof(double));
      // Converting a double beyond float's range is undefined behaviour in
      // C++, so such values are made Inf explicitly (the importer refuses them).
      constexpr double kFloatMax = std::numeric_limits<float>::max();
      constexpr float kInf = std::numeric_limits<float>::infinity();
      for (size_t i = 0; i < n; ++i)
        out[i] = std::fabs(values[i]) <= kFloatMax || std::isnan(values[i])
                     ? static_cast<float>(values[i])
                     : (values[i] > 0 ? kInf : -kInf);
      return;
    }
    default:
      fail(path_, ": tensor \"", tensor.name, "\" holds ", st_dtype_name(tensor.dtype),
           " data; weights must be floating point (F32, BF16, F16 or F64)");
  }
}

}  // namespace deco
