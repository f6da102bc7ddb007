// Megatron-LM indexed datasets: <prefix>.bin (the tokens) and <prefix>.idx
// (lengths, offsets and document boundaries), byte-compatible with
// Megatron's files in both directions. Format: ../shared/docs/megatron-data.md
// section 1 (docs/data.md in this repository once written).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deco {

// Megatron's dtype codes for the tokens in .bin.
enum class IndexDType : uint8_t { U8 = 1, I8 = 2, I16 = 3, I32 = 4, I64 = 5, F64 = 6, F32 = 7, U16 = 8 };
size_t index_dtype_size(IndexDType dtype);
const char* index_dtype_name(IndexDType dtype);
// What Megatron's preprocessing picks: uint16 for vocabularies under 65500, else int32.
IndexDType index_dtype_for_vocab(int64_t vocab_size);

// A dataset opened read-only with both files memory-mapped. The constructor
// validates everything before use (magic, version, dtype code, array sizes
// against the file length, pointers consistent with lengths and inside
// .bin, document indices ending at the sequence count) and throws a
// deco::Error naming the file and the failed check.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  IndexDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
  int64_t total_tokens() const;
  int32_t sequence_length(int64_t sequence) const;
  // document_indices()[d] is the first sequence of document d; the last entry is num_sequences().
  const std::vector<int64_t>& document_indices() const { return document_indices_; }
  // Copies tokens [offset, offset + count) of `sequence` to out, as int32.
  void read(int64_t sequence, int64_t offset, int64_t count, int32_t* out) const;
  // The largest token id in .bin (scanned once, then cached); for the vocabulary check.
  int64_t max_token() const;

 private:
  // A read-only mapping of a whole file; empty files are not mapped.
  struct Mapping {
    const uint8_t* data = nullptr;
    size_t size = 0;
  };
  void validate_header(const std::string& idx_path);
  void validate_arrays(const std::string& idx_path, const std::string& bin_path);
  int64_t pointer(int64_t sequence) const;  // byte offset of `sequence` in .bin

  std::string prefix_;
  IndexDType dtype_ = IndexDType::U16;
  int64_t num_sequences_ = 0;
  // Lengths (int32[S]) and pointers (int64[S]) stay in the mapped .idx, at
  // these byte offsets; they are not 8-aligned, so they are read with memcpy.
  size_t lengths_at_ = 0, pointers_at_ = 0;
  std::vector<int64_t> document_indices_;
  int64_t total_tokens_ = 0;
  Mapping idx_, bin_;
  mutable int64_t max_token_ = -1;  // -1 for a dataset without tokens
  mutable bool max_token_known_ = false;
};

// Writes <prefix>.bin and <prefix>.idx. Both go to temporary files that
// finalize() fsyncs and renames into place, so an interrupted run never
// leaves a half-written dataset under the real names; the destructor
// removes the temporaries of a builder that was not finalized.
class IndexedDatasetBuilder {
 public:
  IndexedDatasetBuilder(const std::string& prefix, IndexDType dtype);
  ~IndexedDatasetBuilder();
  IndexedDatasetBuilder(const IndexedDatasetBuilder&) = delete;
  IndexedDatasetBuilder& operator=(const IndexedDatasetBuilder&) = delete;

  // Appends one sequence; ids must fit the dtype (checked).
  void add_sequence(const int32_t* tokens, int64_t count);
  // Closes the current document (the sequences added since the last call).
  void end_document();
  // GPT preprocessing: one sequence that is a whole document.
  void add_document(const int32_t* tokens, int64_t count) {
    add_sequence(tokens, count);
    end_document();
  }
  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  // Closes a document left open, then writes the .idx and moves both files into place.
  void finalize();

 private:
  void flush_bin();
  void discard_temporaries();

  std::string prefix_, bin_tmp_, idx_tmp_;
  IndexDType dtype_;
  int bin_fd_ = -1;
  int64_t bin_bytes_ = 0;
  std::vector<uint8_t> staged_;  // encoded tokens not yet written to bin_fd_
  std::vector<int32_t> lengths_;
  std::vector<int64_t> document_indices_{0};
  bool finalized_ = false;
};

}  // namespace deco
