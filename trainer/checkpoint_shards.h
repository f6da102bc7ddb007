// Sharded checkpoints: what each rank of a multi-process run writes when no
// rank holds the whole model and optimizer (expert parallelism, ZeRO-1), and
// how any layout reads them back (docs/checkpoints.md, "Several ranks").
//
// A step directory then holds state.h5 (rank 0) and one file per writing
// rank, rank_00003.h5, with the groups /model, /exp_avg and /exp_avg_sq.
// Every dataset is a piece of one logical tensor, named
//
//     <parameter>[r0:r1,c0:c1]{f0:f1}
//
// the elements f0..f1 (row-major) of the block rows r0..r1, columns c0..c1
// of the tensor at its logical shape (a 1-D tensor of n values is [n, 1]).
// The name is the index: a reader needs no other metadata to place the
// values, and h5ls shows who wrote what. Weights are written once: the
// replicated ones by rank 0, each expert block by the first rank holding
// it; AdamW moments likewise, or, with ZeRO-1, by each rank for its shards.
// Every piece carries its crc32 like any tensor file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/params.h"
#include "trainer/optimizer.h"

namespace deco {

// One rank's place in the run, as far as checkpoints care.
struct ShardContext {
  int64_t rank = 0;
  bool writes_dense = true;      // writes the replicated parameters (rank 0)
  bool writes_experts = true;    // writes its expert blocks (the first rank holding them)
  std::vector<FlatRange> owned;  // ZeRO-1: the flat ranges its moments cover; empty: the whole layout
};

// A block of a logical tensor [rows, cols]: rows [r0, r1), columns [c0, c1).
struct Block {
  int64_t r0 = 0, r1 = 0, c0 = 0, c1 = 0;
  int64_t rows() const { return r1 - r0; }
  int64_t cols() const { return c1 - c0; }
};

// The block a spec of a (possibly expert-sharded) layout holds.
Block block_of(const ParamSpec& spec);
std::string piece_name(const std::string& param, const Block& block, int64_t f0, int64_t f1);
// False when `name` is not a piece name (a whole tensor of an unsharded file).
bool parse_piece_name(const std::string& name, std::string* param, Block* block, int64_t* f0, int64_t* f1);

// The pieces one rank writes, and copying its live tensors into host stores of them.
class ShardPieces {
 public:
  ShardPieces(const ParamLayout& local, const ShardContext& context);
  bool empty() const { return model_.specs().empty() && moments_.specs().empty(); }
  const ParamLayout& model_layout() const { return model_; }
  const ParamLayout& moment_layout() const { return moments_; }
  // into: a store of model_layout() / moment_layout(); params: the local
  // weights; moment: an AdamW moment (the whole local layout, or the
  // ZeRO-1 shard buffer with the owned ranges back to back).
  void copy_model(const ParamStore& params, const ParamStore& into) const;
  void copy_moment(const Tensor& moment, const ParamStore& into) const;

 private:
  ParamLayout model_, moments_;
  std::vector<int64_t> model_from_, moment_from_;  // source element offset of each piece
};

// Reads every tensor this rank needs from the checkpoint files (rank files,
// or an unsharded checkpoint's model.h5 / optimizer.h5) into its local
// weights and moments, whatever layout wrote them. Everything is read and
// checked (checksums, every needed element present exactly once) before
// any store changes. params / exp_avg / exp_avg_sq may be null to skip them;
// the moments are flat tensors as for ShardPieces::copy_moment.
void load_pieces(const std::vector<std::string>& model_files, const std::vector<std::string>& moment_files,
                 const ParamLayout& local, const ShardContext& context, const ParamStore* params,
                 const Tensor* exp_avg, const Tensor* exp_avg_sq, const std::string& fix);

}  // namespace deco
