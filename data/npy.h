// NumPy .npy files: the format users hand deco token batches in (B.npy) and
// the format deco writes small arrays back in.
//
// The reader is strict on purpose: a token file that is Fortran-ordered,
// big-endian, truncated or of the wrong dtype would otherwise be read as
// plausible-looking garbage token ids, so each of those is a deco::Error
// naming the file and the fix instead.
//
// Format (numpy.lib.format, versions 1.0, 2.0 and 3.0):
//   "\x93NUMPY" | major u8 | minor u8 | header length (u16 LE for 1.0, u32 LE
//   for 2.0/3.0) | header | data
// where the header is a Python dict literal such as
//   {'descr': '<i4', 'fortran_order': False, 'shape': (3, 4), }
// padded with spaces and one final '\n' so the data starts on a 64-byte
// boundary (16 in files from NumPy before 1.9), and the data is the raw
// elements, numel * itemsize bytes, nothing after.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deco {

struct NpyArray {
  std::string descr;           // NumPy's dtype string, e.g. "<i4", "<i8", "<f4", "|u1"
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::vector<uint8_t> bytes;  // C order, byte order as in the file (descr says which)
  int64_t numel() const;       // product of shape (1 for a 0-d array)
  size_t itemsize() const;     // bytes per element, from descr
};

// Reads a whole .npy file. Accepts plain numeric dtypes (descr [<>|][biuf]N,
// also complex 'c') in C order; a Fortran-ordered file is accepted only when
// its bytes are the same as C order (at most one dimension longer than 1).
// Throws deco::Error naming the file for: a missing/unreadable file, bad
// magic, an unsupported version, a truncated or unparseable header, an
// unsupported dtype, and a data size other than numel * itemsize.
NpyArray read_npy(const std::string& path);

// Writes `data` (numel(shape) elements of `descr`, C order, bytes as given)
// as a version 1.0 file (2.0 if the header does not fit in 65535 bytes).
// Atomic: writes <path>.tmp-<pid>, fsyncs it and renames it over <path>, so
// a reader never sees a half-written file and a failure leaves <path> as it was.
void write_npy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
               const void* data);

// A batch of token sequences: row r holds seq_length + 1 tokens, inputs
// row[:-1] and next-token labels row[1:].
struct TokenArray {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> tokens;  // rows * cols, row-major
};

// Reads an integer .npy of shape [batch, seq_length + 1] (int8/16/32/64 or
// uint8/16/32/64, little-endian, C order) as int32 token ids. Throws
// deco::Error naming the file when the array is not 2-D, not integer,
// big-endian, Fortran-ordered, has fewer than 2 columns or no rows, has rows
// longer than max_seq_length + 1, or holds an id outside [0, vocab_size).
TokenArray read_token_npy(const std::string& path, int64_t vocab_size, int64_t max_seq_length);

}  // namespace deco
