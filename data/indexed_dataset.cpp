#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "core/file_io.h"

// The .idx fields and the tokens in .bin are little-endian; they are decoded
// with memcpy, which is only right on a little-endian host.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "deco's .idx/.bin code assumes a little-endian host");

namespace deco {
namespace {

constexpr char kMagic[] = "MMIDIDX\0\0";
constexpr size_t kMagicLen = 9;
constexpr size_t kHeaderLen = 34;  // magic 9, version 8, dtype 1, S 8, D 8
constexpr size_t kStageBytes = size_t{1} << 20;

bool valid_dtype_code(uint8_t code) { return code >= 1 && code <= 8; }

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void append(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

// Maps `path` read-only. The descriptor is closed right away: the mapping
// keeps the file alive, and a corpus may hold more files than the fd limit.
void map_file(const std::string& path, const std::string& role, const uint8_t** data,
              size_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail("cannot open ", path, ": ", std::strerror(errno), "; a Megatron dataset prefix needs both ",
         role, " files, <prefix>.idx and <prefix>.bin");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot read ", path, ": it is not a regular file");
  }
  *size = static_cast<size_t>(st.st_size);
  *data = nullptr;
  if (*size > 0) {
    void* p = ::mmap(nullptr, *size, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) fail("cannot memory-map ", path, ": ", std::strerror(err));
    *data = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
}

void unmap(const uint8_t* data, size_t size) {
  if (data != nullptr) ::munmap(const_cast<uint8_t*>(data), size);
}

// Converts `count` stored tokens to int32. Types that can hold values an
// int32 token id cannot (negative, too large, fractional) are checked per
// token, so a bad corpus fails loudly instead of feeding garbage ids.
template <typename T>
void convert(const uint8_t* src, int64_t count, int32_t* out, const std::string& bin_path,
             int64_t sequence, int64_t offset) {
  for (int64_t i = 0; i < count; ++i) {
    const T v = load<T>(src + static_cast<size_t>(i) * sizeof(T));
    if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, uint16_t>) {
      out[i] = static_cast<int32_t>(v);
    } else {
      const double d = static_cast<double>(v);
      const bool ok = v >= T(0) && d <= double(std::numeric_limits<int32_t>::max()) &&
                      static_cast<T>(static_cast<int64_t>(v)) == v;
      if (!ok)
        fail(bin_path, ": token ", offset + i, " of sequence ", sequence, " is ", +v,
             ", which is not a token id (ids are integers in [0, 2^31)); the file is corrupt or "
             "its .idx names the wrong dtype");
      out[i] = static_cast<int32_t>(v);
    }
  }
}

template <typename T>
int64_t max_of(const uint8_t* data, size_t bytes) {
  const size_t n = bytes / sizeof(T);
  if (n == 0) return -1;
  T best = load<T>(data);
  for (size_t i = 1; i < n; ++i) best = std::max(best, load<T>(data + i * sizeof(T)));
  return static_cast<int64_t>(best);
}

// Writes all of `bytes` to fd; returns 0 or the errno of the failure.
int write_all(int fd, const uint8_t* bytes, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

size_t index_dtype_size(IndexDType dtype) {
  switch (dtype) {
    case IndexDType::U8:
    case IndexDType::I8: return 1;
    case IndexDType::I16:
    case IndexDType::U16: return 2;
    case IndexDType::I32:
    case IndexDType::F32: return 4;
    case IndexDType::I64:
    case IndexDType::F64: return 8;
  }
  DECO_ASSERT(false, "dtype code ", static_cast<int>(dtype));
  return 0;
}

const char* index_dtype_name(IndexDType dtype) {
  switch (dtype) {
    case IndexDType::U8: return "uint8";
    case IndexDType::I8: return "int8";
    case IndexDType::I16: return "int16";
    case IndexDType::I32: return "int32";
    case IndexDType::I64: return "int64";
    case IndexDType::F64: return "float64";
    case IndexDType::F32: return "float32";
    case IndexDType::U16: return "uint16";
  }
  return "?";
}

IndexDType index_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size < 65500 ? IndexDType::U16 : IndexDType::I32;
}

// ---------------------------------------------------------------- reader

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  const std::string ext = prefix.size() > 4 ? prefix.substr(prefix.size() - 4) : "";
  if ((ext == ".bin" || ext == ".idx") && ::access(idx_path.c_str(), F_OK) != 0) {
    const std::string stem = prefix.substr(0, prefix.size() - 4);
    fail("cannot open ", idx_path, ": ", prefix, " ends in its extension; give the dataset prefix, ",
         stem, ", which names both ", stem, ".idx and ", stem, ".bin");
  }
  try {
    map_file(idx_path, "its", &idx_.data, &idx_.size);
    validate_header(idx_path);
    map_file(bin_path, "its", &bin_.data, &bin_.size);
    validate_arrays(idx_path, bin_path);
  } catch (...) {
    unmap(idx_.data, idx_.size);
    unmap(bin_.data, bin_.size);
    throw;
  }
}

IndexedDataset::~IndexedDataset() {
  unmap(idx_.data, idx_.size);
  unmap(bin_.data, bin_.size);
}

// Magic, version, dtype and the two counts; then the file size they imply.
void IndexedDataset::validate_header(const std::string& idx_path) {
  const uint8_t* p = idx_.data;
  if (idx_.size < kMagicLen || std::memcmp(p, kMagic, kMagicLen) != 0)
    fail(idx_path, ": wrong magic (expected MMIDIDX\\0\\0 at byte 0); this is not a Megatron index "
                   "file");
  if (idx_.size < kHeaderLen)
    fail(idx_path, ": truncated: ", idx_.size, " bytes, shorter than the ", kHeaderLen,
         "-byte header of a Megatron index file");
  const uint64_t version = load<uint64_t>(p + 9);
  if (version != 1)
    fail(idx_path, ": version ", version, " (u64 at byte 9) is not supported; Megatron index files "
                   "are version 1");
  const uint8_t code = p[17];
  if (!valid_dtype_code(code))
    fail(idx_path, ": unknown dtype code ", static_cast<int>(code), " at byte 17 (Megatron's codes "
                   "are 1-8: uint8, int8, int16, int32, int64, float64, float32, uint16)");
  dtype_ = static_cast<IndexDType>(code);
  const uint64_t sequences = load<uint64_t>(p + 18), documents = load<uint64_t>(p + 26);
  // The counts come from the file: bound them by its size before any
  // arithmetic on them can overflow.
  const uint64_t body = idx_.size - kHeaderLen;
  if (sequences > body / 12 || documents > body / 8 || 12 * sequences + 8 * documents > body)
    fail(idx_path, ": truncated: its header announces ", sequences, " sequences and ", documents,
         " document indices, which need ", kHeaderLen, " + 12*", sequences, " + 8*", documents,
         " bytes, but the file has ", idx_.size);
  const uint64_t expected = kHeaderLen + 12 * sequences + 8 * documents;
  // Multimodal datasets append one mode byte per sequence (ignored here).
  if (idx_.size != expected && idx_.size != expected + sequences)
    fail(idx_path, ": has ", idx_.size, " bytes, but ", sequences, " sequences and ", documents,
         " document indices make ", expected, " (or ", expected + sequences,
         " with multimodal sequence modes); the file is corrupt");
  if (sequences > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()))
    fail(idx_path, ": holds ", sequences, " sequences; Megatron's sample indices address "
                   "sequences with int32, so at most 2^31-1 are supported (split the corpus)");
  if (documents == 0)
    fail(idx_path, ": has no document indices (D = 0 at byte 26); even an empty dataset has the "
                   "leading 0");
  num_sequences_ = static_cast<int64_t>(sequences);
  lengths_at_ = kHeaderLen;
  pointers_at_ = kHeaderLen + 4 * sequences;
  document_indices_.resize(documents);
  std::memcpy(document_indices_.data(), p + kHeaderLen + 12 * sequences, 8 * documents);
}

// Lengths, pointers and document indices against each other and against
// .bin, so no later read can leave the mapping.
void IndexedDataset::validate_arrays(const std::string& idx_path, const std::string& bin_path) {
  const auto itemsize = static_cast<int64_t>(index_dtype_size(dtype_));
  int64_t tokens = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int32_t length = sequence_length(i);
    if (length < 0) fail(idx_path, ": sequence ", i, " has the negative length ", length);
    tokens += length;
  }
  total_tokens_ = tokens;
  const int64_t bin_bytes = static_cast<int64_t>(bin_.size);
  if (tokens * itemsize != bin_bytes)
    fail(bin_path, ": has ", bin_bytes, " bytes, but the lengths in ", idx_path, " add up to ",
         tokens, " ", index_dtype_name(dtype_), " tokens (", tokens * itemsize, " bytes); ",
         bin_bytes < tokens * itemsize ? "the .bin is truncated" : "the .bin has extra bytes",
         " or belongs to another index");
  int64_t expected = 0;  // Megatron's pointers are the running byte sum of the lengths
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int64_t ptr = pointer(i), bytes = int64_t{sequence_length(i)} * itemsize;
    if (ptr < 0 || ptr > bin_bytes - bytes)
      fail(idx_path, ": the pointer of sequence ", i, " is byte ", ptr, " and its ", bytes,
           " bytes would end past the end of ", bin_path, " (", bin_bytes, " bytes)");
    if (ptr != expected)
      fail(idx_path, ": the pointer of sequence ", i, " is byte ", ptr, ", but the lengths before "
                     "it add up to ", expected, " bytes; the pointers are inconsistent with the "
                     "lengths");
    expected += bytes;
  }
  const auto& doc = document_indices_;
  if (doc.front() != 0)
    fail(idx_path, ": the document indices start at ", doc.front(), ", not at 0");
  for (size_t d = 1; d < doc.size(); ++d)
    if (doc[d] < doc[d - 1])
      fail(idx_path, ": document index ", d, " (", doc[d], ") is smaller than the one before it (",
           doc[d - 1], "); document indices must not decrease");
  if (doc.back() != num_sequences_)
    fail(idx_path, ": the document indices end at ", doc.back(), ", not at the sequence count ",
         num_sequences_, "; the last document must close after the last sequence");
}

int64_t IndexedDataset::pointer(int64_t sequence) const {
  return load<int64_t>(idx_.data + pointers_at_ + 8 * static_cast<size_t>(sequence));
}

int32_t IndexedDataset::sequence_length(int64_t sequence) const {
  DECO_ASSERT(sequence >= 0 && sequence < num_sequences_, "sequence ", sequence, " of ",
              num_sequences_);
  return load<int32_t>(idx_.data + lengths_at_ + 4 * static_cast<size_t>(sequence));
}

int64_t IndexedDataset::total_tokens() const { return total_tokens_; }

void IndexedDataset::read(int64_t sequence, int64_t offset, int64_t count, int32_t* out) const {
  const std::string bin_path = prefix_ + ".bin";
  if (sequence < 0 || sequence >= num_sequences_)
    fail(bin_path, ": sequence ", sequence, " does not exist (the dataset has ", num_sequences_,
         ")");
  const int64_t length = sequence_length(sequence);
  if (offset < 0 || count < 0 || offset > length - count)
    fail(bin_path, ": tokens [", offset, ", ", offset + count, ") are outside sequence ", sequence,
         ", which has ", length);
  if (count == 0) return;
  const size_t itemsize = index_dtype_size(dtype_);
  const uint8_t* src = bin_.data + pointer(sequence) + static_cast<size_t>(offset) * itemsize;
  switch (dtype_) {
    case IndexDType::U8: convert<uint8_t>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::I8: convert<int8_t>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::I16: convert<int16_t>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::I32: convert<int32_t>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::I64: convert<int64_t>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::F64: convert<double>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::F32: convert<float>(src, count, out, bin_path, sequence, offset); break;
    case IndexDType::U16: convert<uint16_t>(src, count, out, bin_path, sequence, offset); break;
  }
}

int64_t IndexedDataset::max_token() const {
  if (max_token_known_) return max_token_;
  max_token_known_ = true;
  const uint8_t* d = bin_.data;
  const size_t n = bin_.size;
  switch (dtype_) {
    case IndexDType::U8: max_token_ = max_of<uint8_t>(d, n); break;
    case IndexDType::I8: max_token_ = max_of<int8_t>(d, n); break;
    case IndexDType::I16: max_token_ = max_of<int16_t>(d, n); break;
    case IndexDType::I32: max_token_ = max_of<int32_t>(d, n); break;
    case IndexDType::I64: max_token_ = max_of<int64_t>(d, n); break;
    case IndexDType::F64: max_token_ = max_of<double>(d, n); break;
    case IndexDType::F32: max_token_ = max_of<float>(d, n); break;
    case IndexDType::U16: max_token_ = max_of<uint16_t>(d, n); break;
  }
  return max_token_;
}

// ---------------------------------------------------------------- writer

IndexedDatasetBuilder::IndexedDatasetBuilder(const std::string& prefix, IndexDType dtype)
    : prefix_(prefix), dtype_(dtype) {
  DECO_ASSERT(valid_dtype_code(static_cast<uint8_t>(dtype)), "dtype code ", static_cast<int>(dtype));
  // The pid keeps two processes writing the same prefix from sharing temporaries.
  const std::string suffix = ".tmp-" + std::to_string(::getpid());
  bin_tmp_ = prefix + ".bin" + suffix;
  idx_tmp_ = prefix + ".idx" + suffix;
  bin_fd_ = ::open(bin_tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (bin_fd_ < 0)
    fail("cannot write ", prefix, ".bin: creating ", bin_tmp_, " failed: ", std::strerror(errno),
         "; check that directory ", parent_dir(prefix), " exists and is writable");
  staged_.reserve(kStageBytes);
}

IndexedDatasetBuilder::~IndexedDatasetBuilder() {
  if (!finalized_) discard_temporaries();
}

void IndexedDatasetBuilder::discard_temporaries() {
  if (bin_fd_ >= 0) ::close(bin_fd_);
  bin_fd_ = -1;
  std::remove(bin_tmp_.c_str());
  std::remove(idx_tmp_.c_str());
}

void IndexedDatasetBuilder::add_sequence(const int32_t* tokens, int64_t count) {
  DECO_ASSERT(!finalized_, "add_sequence after finalize");
  DECO_ASSERT(count >= 0 && (count == 0 || tokens != nullptr), "count ", count);
  if (count > std::numeric_limits<int32_t>::max())
    fail(prefix_, ".idx: a sequence of ", count, " tokens does not fit the int32 length field; "
                  "split the document into shorter sequences");
  // The largest id each dtype stores exactly (float32: integers up to 2^24).
  int64_t max_id = std::numeric_limits<int32_t>::max();
  switch (dtype_) {
    case IndexDType::U8: max_id = 255; break;
    case IndexDType::I8: max_id = 127; break;
    case IndexDType::I16: max_id = 32767; break;
    case IndexDType::U16: max_id = 65535; break;
    case IndexDType::F32: max_id = int64_t{1} << 24; break;
    default: break;
  }
  // Every id is checked before any is staged, so a refused sequence leaves
  // the builder as it was and the caller may go on.
  for (int64_t i = 0; i < count; ++i)
    if (tokens[i] < 0 || tokens[i] > max_id)
      fail(prefix_, ".bin: token id ", tokens[i], " (sequence ", lengths_.size(), ", position ", i,
           ") does not fit the dataset's dtype ", index_dtype_name(dtype_), " (ids 0..", max_id,
           "); choose a wider dtype (index_dtype_for_vocab picks one from the vocabulary size)");
  for (int64_t i = 0; i < count; ++i) {
    const int32_t id = tokens[i];
    switch (dtype_) {
      case IndexDType::U8: append<uint8_t>(staged_, static_cast<uint8_t>(id)); break;
      case IndexDType::I8: append<int8_t>(staged_, static_cast<int8_t>(id)); break;
      case IndexDType::I16: append<int16_t>(staged_, static_cast<int16_t>(id)); break;
      case IndexDType::I32: append<int32_t>(staged_, id); break;
      case IndexDType::I64: append<int64_t>(staged_, id); break;
      case IndexDType::F64: append<double>(staged_, id); break;
      case IndexDType::F32: append<float>(staged_, static_cast<float>(id)); break;
      case IndexDType::U16: append<uint16_t>(staged_, static_cast<uint16_t>(id)); break;
    }
    if (staged_.size() >= kStageBytes) flush_bin();
  }
  lengths_.push_back(static_cast<int32_t>(count));
  bin_bytes_ += count * static_cast<int64_t>(index_dtype_size(dtype_));
}

void IndexedDatasetBuilder::end_document() {
  DECO_ASSERT(!finalized_, "end_document after finalize");
  document_indices_.push_back(num_sequences());
}

void IndexedDatasetBuilder::flush_bin() {
  const int err = write_all(bin_fd_, staged_.data(), staged_.size());
  if (err != 0)
    fail("cannot write ", prefix_, ".bin: writing ", bin_tmp_, " failed: ", std::strerror(err));
  staged_.clear();
}

// The .idx exactly as Megatron's _IndexWriter lays it out. Megatron writes
// the per-sequence mode bytes only for multimodal datasets, so a text
// dataset ends right after the document indices.
void IndexedDatasetBuilder::finalize() {
  DECO_ASSERT(!finalized_, "finalize called twice");
  // A trailing document the caller did not close would leave the indices
  // short of S, which readers refuse; close it.
  if (document_indices_.back() != num_sequences()) end_document();
  flush_bin();
  int err = ::fsync(bin_fd_) != 0 ? errno : 0;
  if (::close(bin_fd_) != 0 && err == 0) err = errno;
  bin_fd_ = -1;
  if (err != 0)
    fail("cannot write ", prefix_, ".bin: syncing ", bin_tmp_, " failed: ", std::strerror(err));

  const uint64_t sequences = lengths_.size(), documents = document_indices_.size();
  std::vector<uint8_t> idx;
  idx.reserve(kHeaderLen + 12 * sequences + 8 * documents);
  idx.insert(idx.end(), kMagic, kMagic + kMagicLen);
  append<uint64_t>(idx, 1);
  append<uint8_t>(idx, static_cast<uint8_t>(dtype_));
  append<uint64_t>(idx, sequences);
  append<uint64_t>(idx, documents);
  for (int32_t length : lengths_) append<int32_t>(idx, length);
  int64_t pointer = 0;
  const auto itemsize = static_cast<int64_t>(index_dtype_size(dtype_));
  for (int32_t length : lengths_) {
    append<int64_t>(idx, pointer);
    pointer += int64_t{length} * itemsize;
  }
  DECO_ASSERT(pointer == bin_bytes_, "pointers end at ", pointer, ", .bin has ", bin_bytes_);
  for (int64_t d : document_indices_) append<int64_t>(idx, d);

  const int fd = ::open(idx_tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  err = fd < 0 ? errno : write_all(fd, idx.data(), idx.size());
  if (fd >= 0 && err == 0 && ::fsync(fd) != 0) err = errno;
  if (fd >= 0 && ::close(fd) != 0 && err == 0) err = errno;
  if (err != 0)
    fail("cannot write ", prefix_, ".idx: writing ", idx_tmp_, " failed: ", std::strerror(err));
  // .bin first: a reader that sees the new .idx then also sees its .bin. In
  // between, an old .idx next to the new .bin fails validation (sizes differ).
  const std::string bin_path = prefix_ + ".bin", idx_path = prefix_ + ".idx";
  if (std::rename(bin_tmp_.c_str(), bin_path.c_str()) != 0)
    fail("cannot write ", bin_path, ": renaming ", bin_tmp_, " failed: ", std::strerror(errno));
  if (std::rename(idx_tmp_.c_str(), idx_path.c_str()) != 0)
    fail("cannot write ", idx_path, ": renaming ", idx_tmp_, " failed: ", std::strerror(errno));
  finalized_ = true;
  fsync_dir(parent_dir(prefix_));
}

}  // namespace deco
