// Parameters: one flat buffer, laid out once from the config.
//
// Dense parameters (everything replicated on every rank) come first, expert
// parameters (the routed experts' up/gate/down projections, which expert
// parallelism shards) after, so each region is one contiguous span: a
// data-parallel reduction is one collective per region. Gradients and the
// optimizer's moments use the same layout.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

namespace deco {

enum class InitKind {
  Normal,        // N(0, init_method_std^2)
  ScaledNormal,  // N(0, (init_method_std / sqrt(2 * num_layers))^2), Megatron's output-layer init
  Constant,      // every element = init_value (norm weights, gamma, expert scales)
};

struct ParamSpec {
  std::string name;   // deco-model.md section 6, e.g. model.layers.3.mlp.expert_up_proj.weight
  Shape shape;        // logical shape, [out, in] for matrices
  InitKind init = InitKind::Normal;
  double init_value = 0.0;   // the constant for InitKind::Constant
  bool weight_decay = true;  // AdamW decay: matrices only (not norms, scales, gamma, 1-D)
  bool expert = false;       // lives in the expert region
  int64_t offset = 0;        // element offset in the flat buffer
  // Expert parallelism stores a routed-expert projection as one rank's
  // slice: shape is the slice, full_shape the logical tensor, and the slice
  // is [shard_begin, shard_begin + shape[shard_dim]) along shard_dim (rows
  // of up/gate [E*D, H], columns of down [H, E*D]). shard_dim is -1 for a
  // whole tensor (full_shape == shape).
  Shape full_shape;
  int shard_dim = -1;
  int64_t shard_begin = 0;
  bool sharded() const { return shard_dim >= 0; }
};

// A range [begin, end) of elements of the flat parameter buffer.
struct FlatRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// The `index`-th of `parts` equal contiguous shards of `region`: the one
// rule by which the ZeRO-1 optimizer's shards (Trainer::shard_context) and
// the gradient reducer's owners (GradReducer) cut a region. The region's
// size must divide by `parts` (ParamLayout pads the regions for it).
FlatRange equal_shard(const FlatRange& region, int64_t parts, int64_t index);

class ParamLayout {
 public:
  // The parameters one rank holds: everything, except that with expert
  // parallelism (ep_size > 1) each routed-expert projection holds only the
  // experts [ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size).
  // Each region's size is padded to a multiple of `region_multiple`
  // elements, so the distributed optimizer splits it into equal shards.
  explicit ParamLayout(const ModelConfig& config, int64_t ep_size = 1, int64_t ep_rank = 0,
                       int64_t region_multiple = 1);
  // A layout of arbitrary named tensors, all in the dense region, in the
  // given order (offsets are assigned): the pieces a rank writes into a
  // sharded checkpoint, for instance.
  explicit ParamLayout(std::vector<ParamSpec> specs);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(const std::string& name) const;  // internal lookups; asserts it exists
  const ParamSpec* find(const std::string& name) const;  // nullptr when absent
  int64_t dense_numel() const { return dense_numel_; }    // including alignment padding
  int64_t expert_numel() const { return expert_numel_; }
  int64_t total_numel() const { return dense_numel_ + expert_numel_; }
  int64_t num_parameters() const;  // real elements held, without padding
  int64_t ep_size() const { return ep_size_; }
  int64_t ep_rank() const { return ep_rank_; }
  int64_t local_experts() const { return local_experts_; }  // E / ep_size

 private:
  std::vector<ParamSpec> specs_;
  int64_t dense_numel_ = 0, expert_numel_ = 0;
  int64_t ep_size_ = 1, ep_rank_ = 0, local_experts_ = 0;
};

// A flat buffer with the layout's views: the parameters themselves, their
// gradients, or an optimizer moment.
class ParamStore {
 public:
  ParamStore(const ParamLayout& layout, DType dtype, Device device);

  const ParamLayout& layout() const { return *layout_; }
  Tensor get(const ParamSpec& spec) const;
  Tensor get(const std::string& name) const { return get(layout_->spec(name)); }
  const Tensor& flat() const { return buffer_.tensor(); }
  Tensor dense_region() const { return flat().slice(0, layout_->dense_numel()); }
  Tensor expert_region() const { return flat().slice(layout_->dense_numel(), layout_->total_numel()); }

 private:
  const ParamLayout* layout_;
  Buffer buffer_;
};

// Fills the store per deco-model.md section 4. Each parameter draws from its
// own stream keyed by (seed, name), so values do not depend on the layout:
// a sharded parameter gets its slice of the values the whole tensor has.
void init_params(const ParamStore& store, const ModelConfig& config, uint64_t seed);

// Parameter-name helpers (section 6).
std::string layer_param(int64_t layer, const std::string& suffix);

}  // namespace deco

namespace deco {

// One parameter as a layer sees it: its values and its gradient slot.
struct Param {
  Tensor value;
  Tensor grad;
};

// The Param for `name`, viewing into the value and gradient stores.
Param bind_param(const ParamStore& values, const ParamStore& grads, const std::string& name);

}  // namespace deco
