// The DECO transformer (deco-model.md section 1): embedding, pre-norm
// decoder layers (attention + dense SwiGLU or DECO FFN), final RMSNorm,
// untied LM head and cross-entropy, with an explicit backward pass.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/deco_ffn.h"
#include "model/memory.h"
#include "model/params.h"
#include "model/swiglu_ffn.h"

namespace deco {

// The backward pass finishes parameter gradients in groups ("grad units"):
// the head (lm_head and the final norm) first, then each decoder layer from
// the last, then the embedding. A unit is a layer index, or one of these.
constexpr int64_t kHeadGradUnit = -1;
constexpr int64_t kEmbeddingGradUnit = -2;
// The unit a parameter's gradient belongs to (deco-model.md section 6 names).
int64_t grad_unit_of(const std::string& param_name);

struct StepOptions {
  RegType reg = RegType::Entropy;
  double reg_coef = 0.0;    // lambda, the sparsity coefficient
  double grad_scale = 1.0;  // multiplies every gradient (1 / micro-batches per optimizer step)
  bool backward = true;     // false: loss and statistics only
  // Called by the backward pass as each unit's gradients are complete (their
  // kernels queued, on a GPU): where data-parallel reductions start early.
  std::function<void(int64_t unit)> on_grads_ready;
};

struct StepResult {
  double lm_loss_sum = 0.0;  // cross-entropy summed over target tokens
  int64_t tokens = 0;        // target tokens
  double reg_loss = 0.0;     // lambda * sum over DECO layers of mean_tokens(reg) / num_layers
  std::vector<DecoLayerStats> deco_layers;  // one per DECO layer, in layer order

  double lm_loss() const { return tokens ? lm_loss_sum / static_cast<double>(tokens) : 0.0; }
  int64_t active_pairs() const;
  int64_t routed_slots() const;  // tokens x experts, summed over DECO layers
};

class Model {
 public:
  // dtype: the activations' dtype. F32 or F64: everything in it. BF16:
  // mixed precision (deco-model.md section 4): float32 master weights
  // (params()), float32 gradients and optimizer state, a bfloat16 copy of
  // the weights for compute (refreshed by refresh_derived()), bfloat16
  // activations, and the router, its scales, the norms' statistics and
  // every reduction in float32 (accumulate_dtype).
  // expert_parallel: the group the DECO layers' routed experts are split
  // over (null or a group of one: every expert on this rank).
  // region_multiple: see ParamLayout (the distributed optimizer's shards).
  Model(const ModelConfig& config, DType dtype, Device device, Communicator* expert_parallel = nullptr,
        int64_t region_multiple = 1);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  ParamStore& params() { return params_; }  // the master weights (what the optimizer updates and checkpoints hold)
  const ParamStore& params() const { return params_; }
  ParamStore& grads() { return grads_; }
  DType dtype() const { return dtype_; }
  bool mixed_precision() const { return compute_ != nullptr; }
  // The weights the layers compute with: the bf16 copy under mixed precision, params() otherwise.
  const ParamStore& compute_params() const { return compute_ ? *compute_ : params_; }
  Device device() const { return device_; }

  // Initializes every parameter (deco-model.md section 4) and derived state.
  void init(uint64_t seed);
  // Recomputes state derived from the weights; call after any weight change.
  void refresh_derived();
  // model.expert_compute auto: every DECO layer's crossover ratio (DecoFfn::set_expert_crossover).
  void set_expert_crossover(double ratio);

  // One micro-batch: tokens is int32 [B, S+1] in host memory (inputs are
  // the first S columns, targets the last S). With options.backward, adds
  // the gradient of options.grad_scale * (mean lm loss + reg loss) into grads().
  StepResult step(const Tensor& tokens, const StepOptions& options);

 private:
  struct Layer;
  // One decoder layer from its input (residual_in). In the forward pass
  // (`result` given: the DECO layer's statistics go there) its input norm
  // is already done, by the layer before, and it ends by writing the next
  // layer's input and input norm (or the final stream and norm) in one fused
  // op. A recomputation (no `result`) normalizes its own input and stops
  // before the output, which is not needed.
  void forward_layer(size_t l, int64_t batch, int64_t seq, RegType reg, StepResult* result);
  // training.recompute: selective: Recomputable from Saved.
  void recompute_layer(size_t l);
  void backward_layer(size_t l, RegType reg, double reg_grad_coef);

  ModelConfig config_;
  DType dtype_;
  Device device_;
  ParamLayout layout_;
  ParamStore params_, grads_;
  std::unique_ptr<ParamStore> compute_;  // mixed precision: the bf16 copy the layers compute with
  Param embed_, final_norm_, lm_head_;
  std::vector<std::unique_ptr<Layer>> layers_;
  Buffer rope_;  // [seq_length, head_dim/2, 2]

  // Activations (model/memory.h): per layer or shared, by config_.recompute.
  std::vector<std::unique_ptr<LayerSaved>> saved_;
  std::vector<std::unique_ptr<LayerRecomputable>> recomputable_;
  LayerScratch scratch_;
  Buffer inputs_, targets_;   // int32 [N]
  Buffer residual_final_, normed_final_, rstd_final_;
  Buffer logits_;             // [chunk, V] workspace of the fused LM head
  Buffer branch_out_;         // [N, H] attention or FFN output before the residual add
  Buffer dresidual_, dnormed_;  // [N, H] backward
};

}  // namespace deco
