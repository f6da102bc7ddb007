#include "data/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "core/error.h"
#include "core/file_io.h"

// Elements are handed out with the file's bytes as they are, and the token
// reader decodes little-endian files with memcpy: both assume a
// little-endian host (x86-64, aarch64).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "deco's .npy code assumes a little-endian host");

namespace deco {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// Data starts on this boundary in the files we write, as NumPy >= 1.9 does,
// so a reader may memory-map the array aligned.
constexpr size_t kAlign = 64;

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// A plain numeric dtype, decoded from NumPy's descr string ("<i4").
struct Dtype {
  char order = '<';  // '<' little, '>' big, '|' not applicable (1-byte types)
  char kind = 'i';   // 'b' bool, 'i' signed, 'u' unsigned, 'f' float, 'c' complex
  size_t itemsize = 0;
};

// Returns false for anything that is not a plain numeric dtype: structured
// records, strings, Python objects, datetimes and sizes NumPy never writes.
bool parse_descr(const std::string& descr, Dtype* out) {
  if (descr.size() < 3) return false;
  Dtype d;
  d.order = descr[0];
  d.kind = descr[1];
  if (d.order != '<' && d.order != '>' && d.order != '|') return false;
  size_t size = 0;
  for (size_t i = 2; i < descr.size(); ++i) {
    if (descr[i] < '0' || descr[i] > '9' || size > 64) return false;
    size = size * 10 + static_cast<size_t>(descr[i] - '0');
  }
  d.itemsize = size;
  bool ok = false;
  switch (d.kind) {
    case 'b': ok = size == 1; break;
    case 'i':
    case 'u': ok = size == 1 || size == 2 || size == 4 || size == 8; break;
    case 'f': ok = size == 2 || size == 4 || size == 8; break;
    case 'c': ok = size == 8 || size == 16; break;
    default: ok = false;
  }
  // '|' ("byte order not applicable") only makes sense for 1-byte types.
  if (!ok || (d.order == '|' && size != 1)) return false;
  *out = d;
  return true;
}

// Recursive-descent parser for the header dict. It accepts exactly what
// numpy.lib.format writes and reads: a dict literal with string keys, whose
// values are string literals, True/False or tuples of integers.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : s_(text) {}

  struct Result {
    std::string descr;
    bool fortran_order = false;
    std::vector<int64_t> shape;
  };

  // Returns false and sets *why when the text is not such a dict.
  bool parse(Result* out, std::string* why) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    if (!eat('{')) return error(why, "it does not start with '{'");
    skip_ws();
    while (!eat('}')) {
      std::string key;
      if (!string_literal(&key)) return error(why, "expected a quoted key at offset " + pos());
      skip_ws();
      if (!eat(':')) return error(why, "expected ':' after '" + key + "'");
      skip_ws();
      if (key == "descr") {
        if (peek() == '[') return error(why, "it describes a structured (record) dtype");
        if (!string_literal(&out->descr)) return error(why, "'descr' is not a string");
        have_descr = !have_descr;  // a repeated key is malformed too
      } else if (key == "fortran_order") {
        if (!boolean(&out->fortran_order)) return error(why, "'fortran_order' is not True/False");
        have_fortran = !have_fortran;
      } else if (key == "shape") {
        if (!int_tuple(&out->shape)) return error(why, "'shape' is not a tuple of integers");
        have_shape = !have_shape;
      } else {
        return error(why, "it has the unknown key '" + key + "'");
      }
      skip_ws();
      if (eat(',')) {
        skip_ws();
      } else if (peek() != '}') {
        return error(why, "expected ',' or '}' at offset " + pos());
      }
    }
    skip_ws();
    if (i_ != s_.size()) return error(why, "there is text after the closing '}'");
    if (!have_descr || !have_fortran || !have_shape)
      return error(why, "it needs each of 'descr', 'fortran_order' and 'shape' exactly once");
    return true;
  }

 private:
  static bool error(std::string* why, const std::string& text) {
    *why = text;
    return false;
  }
  std::string pos() const { return std::to_string(i_); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++i_;
    return true;
  }
  // Padding is spaces plus the final '\n'; tolerate any ASCII whitespace.
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r'))
      ++i_;
  }
  // 'text' or "text"; escapes never occur in numeric descrs, so a backslash
  // is rejected rather than half-interpreted.
  bool string_literal(std::string* out) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') return false;
    const size_t end = s_.find(quote, i_ + 1);
    if (end == std::string::npos) return false;
    *out = s_.substr(i_ + 1, end - i_ - 1);
    if (out->find('\\') != std::string::npos) return false;
    i_ = end + 1;
    return true;
  }
  bool boolean(bool* out) {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      *out = true;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      *out = false;
      return true;
    }
    return false;
  }
  // (), (7,), (3, 4) or (3, 4,); Python 2 era files wrote longs as "3L".
  bool int_tuple(std::vector<int64_t>* out) {
    out->clear();
    if (!eat('(')) return false;
    skip_ws();
    while (!eat(')')) {
      if (peek() < '0' || peek() > '9') return false;  // also rejects negative dims
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        const int64_t digit = s_[i_++] - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) return false;
        v = v * 10 + digit;
      }
      eat('L');
      out->push_back(v);
      skip_ws();
      if (eat(',')) {
        skip_ws();
      } else if (peek() != ')') {
        return false;
      }
    }
    // "(7)" is just 7 in Python, not a tuple; NumPy always writes "(7,)".
    return true;
  }

  const std::string& s_;
  size_t i_ = 0;
};

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

uint64_t read_le(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t NpyArray::itemsize() const {
  Dtype d;
  DECO_ASSERT(parse_descr(descr, &d), "unsupported descr '", descr, "'");
  return d.itemsize;
}

NpyArray read_npy(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail("cannot read ", path, ": ", std::strerror(errno), "; check the path");
  if (S_ISDIR(st.st_mode)) fail("cannot read ", path, ": it is a directory, not a .npy file");
  File file(std::fopen(path.c_str(), "rb"));
  if (!file) fail("cannot read ", path, ": ", std::strerror(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  // Magic, version and header length: 10 bytes for version 1.0, 12 for 2.0/3.0.
  uint8_t prefix[12] = {};
  const size_t got = std::fread(prefix, 1, sizeof prefix, file.get());
  if (got < kMagicLen || std::memcmp(prefix, kMagic, kMagicLen) != 0) {
    if (got >= 4 && std::memcmp(prefix, "PK\x03\x04", 4) == 0)
      fail(path, " is a zip archive (an .npz from numpy.savez?), not a .npy file; save a single "
                 "array with numpy.save instead");
    fail(path, " is not a NumPy .npy file (it does not start with the \\x93NUMPY magic); "
               "save the array with numpy.save");
  }
  if (got < 8) fail(path, " is truncated: it ends inside the .npy header");
  const int major = prefix[6], minor = prefix[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    fail(path, " has .npy format version ", major, ".", minor,
         ", which deco does not read (versions 1.0, 2.0 and 3.0 are supported)");
  // Version 1.0 stores the header length as u16; 2.0 and 3.0 (3.0 only
  // changes the header's text encoding to UTF-8) as u32.
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix_len = kMagicLen + 2 + len_bytes;
  if (got < prefix_len) fail(path, " is truncated: it ends inside the .npy header");
  const uint64_t header_len = read_le(prefix + 8, len_bytes);
  const uint64_t data_offset = prefix_len + header_len;
  if (data_offset > file_size)
    fail(path, " is truncated: its .npy header claims ", header_len, " bytes but the file has only ",
         file_size - prefix_len, " after the preamble");

  std::string header(static_cast<size_t>(header_len), '\0');
  if (std::fseek(file.get(), static_cast<long>(prefix_len), SEEK_SET) != 0 ||
      std::fread(&header[0], 1, header.size(), file.get()) != header.size())
    fail("cannot read ", path, ": reading the .npy header failed");

  HeaderParser::Result parsed;
  std::string why;
  if (!HeaderParser(header).parse(&parsed, &why)) {
    std::string shown = header.substr(0, 200);
    while (!shown.empty() && (shown.back() == ' ' || shown.back() == '\n')) shown.pop_back();
    fail(path, " has a malformed .npy header (", why, "): ", shown);
  }

  NpyArray array;
  array.descr = parsed.descr;
  array.shape = parsed.shape;
  Dtype dtype;
  if (!parse_descr(array.descr, &dtype)) {
    const bool object = array.descr.find('O') != std::string::npos;
    fail(path, " holds dtype '", array.descr, "'", object ? " (pickled Python objects)" : "",
         ", which deco does not read; expected a plain numeric dtype such as '<i4', '<i8' or '<f4'");
  }

  // A Fortran-ordered array with at most one dimension longer than 1 has
  // the same bytes as its C-ordered twin, so only the others are refused.
  int long_dims = 0;
  for (int64_t d : array.shape) long_dims += d > 1;
  if (parsed.fortran_order && long_dims > 1)
    fail(path, " is stored in Fortran (column-major) order, which deco does not read; re-save it "
               "in C order with numpy.save(path, numpy.ascontiguousarray(a))");

  // numel * itemsize must equal what follows the header; computed with
  // overflow checks since the header is untrusted input.
  const uint64_t available = file_size - data_offset;
  uint64_t expected = dtype.itemsize;
  bool too_big = false;
  for (int64_t d : array.shape) {
    if (d != 0 && expected > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      too_big = true;
      break;
    }
    expected *= static_cast<uint64_t>(d);
  }
  if (too_big || expected > available)
    fail(path, " is truncated: its header describes shape ", shape_string(array.shape), " of '",
         array.descr, "' (", too_big ? std::string("more than 2^64") : std::to_string(expected),
         " bytes of data) but only ", available, " bytes follow the header");
  if (expected < available)
    fail(path, " has ", available - expected, " trailing bytes after the ", expected,
         " bytes of data its header describes (shape ", shape_string(array.shape), " of '",
         array.descr, "'); it is not a single array written by numpy.save");

  array.bytes.resize(static_cast<size_t>(expected));
  if (expected > 0 &&
      std::fread(array.bytes.data(), 1, array.bytes.size(), file.get()) != array.bytes.size())
    fail("cannot read ", path, ": reading the array data failed");
  return array;
}

void write_npy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
               const void* data) {
  Dtype dtype;
  DECO_ASSERT(parse_descr(descr, &dtype), "write_npy: unsupported descr '", descr, "'");
  uint64_t nbytes = dtype.itemsize;
  for (int64_t d : shape) {
    DECO_ASSERT(d >= 0, "write_npy: negative dimension in ", shape_string(shape));
    nbytes *= static_cast<uint64_t>(d);
  }
  DECO_ASSERT(nbytes == 0 || data != nullptr, "write_npy: no data");

  // The header exactly as numpy.lib.format writes it, so byte-for-byte
  // comparisons with NumPy's own files hold.
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) header += (i ? ", " : "") + std::to_string(shape[i]);
  header += shape.size() == 1 ? ",), }" : "), }";
  // Pads with spaces and a final '\n' so the data starts on a kAlign boundary.
  auto padded_len = [&](size_t prefix) {
    const size_t unpadded = prefix + header.size() + 1;
    return header.size() + 1 + (kAlign - unpadded % kAlign) % kAlign;
  };
  // Version 1.0 stores the header length in a u16; longer headers (only
  // arrays with thousands of dimensions) need 2.0.
  int major = 1;
  size_t prefix_len = kMagicLen + 2 + 2;
  if (padded_len(prefix_len) > 65535) {
    major = 2;
    prefix_len = kMagicLen + 2 + 4;
  }
  header.append(padded_len(prefix_len) - header.size() - 1, ' ');
  header += '\n';

  std::string preamble(kMagic, kMagicLen);
  preamble += static_cast<char>(major);
  preamble += '\0';
  const uint64_t hlen = header.size();
  for (size_t i = 0; i < prefix_len - kMagicLen - 2; ++i)
    preamble += static_cast<char>((hlen >> (8 * i)) & 0xff);

  write_file_atomic(path, {{preamble.data(), preamble.size()}, {header.data(), header.size()}, {data, nbytes}});
}

namespace {

// Checks every id of a little-endian integer array against [0, vocab) and
// narrows it to int32; T is the element type as stored.
template <typename T>
void convert_tokens(const std::string& path, const NpyArray& array, int64_t vocab,
                    TokenArray* out) {
  const int64_t n = out->rows * out->cols;
  out->tokens.resize(static_cast<size_t>(n));
  const uint8_t* src = array.bytes.data();
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + static_cast<size_t>(i) * sizeof(T), sizeof(T));
    // Compare in the stored type's signedness so uint64 ids above 2^63 are
    // not mistaken for small negatives.
    const bool negative = std::numeric_limits<T>::is_signed && static_cast<int64_t>(v) < 0;
    const bool too_big = !negative && static_cast<uint64_t>(v) >= static_cast<uint64_t>(vocab);
    if (negative || too_big)
      fail(path, ": token id ", +v, " at [", i / out->cols, ", ", i % out->cols,
           "] is outside the vocabulary [0, ", vocab,
           ") of the config; the file was tokenized for a different vocabulary (vocab_size must "
           "exceed every id in the file)");
    out->tokens[static_cast<size_t>(i)] = static_cast<int32_t>(v);
  }
}

}  // namespace

TokenArray read_token_npy(const std::string& path, int64_t vocab_size, int64_t max_seq_length) {
  DECO_ASSERT(vocab_size > 0 && vocab_size <= int64_t{1} << 31, "vocab_size ", vocab_size);
  DECO_ASSERT(max_seq_length > 0, "max_seq_length ", max_seq_length);
  const NpyArray array = read_npy(path);  // also refuses Fortran order (for 2-D with both dims > 1)

  if (array.shape.size() != 2)
    fail(path, " has shape ", shape_string(array.shape),
         "; expected shape [batch, seq_length+1] (one row of seq_length + 1 token ids per sequence)");
  Dtype dtype;
  parse_descr(array.descr, &dtype);  // read_npy accepted it, so it parses
  if (dtype.kind != 'i' && dtype.kind != 'u')
    fail(path, " holds ", dtype.kind == 'f' ? "floating-point" : "non-integer", " values (dtype '",
         array.descr, "'); token ids must be integers: save them with "
         "numpy.save(path, tokens.astype(numpy.int32))");
  if (dtype.order == '>' && dtype.itemsize > 1)
    fail(path, " is big-endian (dtype '", array.descr, "'); save it little-endian with "
               "numpy.save(path, tokens.astype('<i4'))");

  TokenArray out;
  out.rows = array.shape[0];
  out.cols = array.shape[1];
  if (out.rows == 0) fail(path, " has no rows (shape ", shape_string(array.shape), "); it needs at "
                                "least one sequence");
  if (out.cols < 2)
    fail(path, " has rows of ", out.cols, out.cols == 1 ? " token" : " tokens",
         "; each row needs at least 2 (seq_length + 1 tokens: inputs row[:-1], next-token labels "
         "row[1:])");
  if (out.cols - 1 > max_seq_length)
    fail(path, ": sequences of ", out.cols, " tokens need seq_length >= ", out.cols - 1,
         " (each row is seq_length + 1 tokens), but the config has seq_length ", max_seq_length,
         "; raise seq_length or cut the rows to ", max_seq_length + 1, " tokens");

  switch (dtype.kind == 'i' ? -static_cast<int>(dtype.itemsize) : static_cast<int>(dtype.itemsize)) {
    case -1: convert_tokens<int8_t>(path, array, vocab_size, &out); break;
    case -2: convert_tokens<int16_t>(path, array, vocab_size, &out); break;
    case -4: convert_tokens<int32_t>(path, array, vocab_size, &out); break;
    case -8: convert_tokens<int64_t>(path, array, vocab_size, &out); break;
    case 1: convert_tokens<uint8_t>(path, array, vocab_size, &out); break;
    case 2: convert_tokens<uint16_t>(path, array, vocab_size, &out); break;
    case 4: convert_tokens<uint32_t>(path, array, vocab_size, &out); break;
    case 8: convert_tokens<uint64_t>(path, array, vocab_size, &out); break;
    default: DECO_ASSERT(false, "itemsize ", dtype.itemsize);
  }
  return out;
}

}  // namespace deco
