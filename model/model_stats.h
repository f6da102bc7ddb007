// Parameter counts and training FLOPs, computed from the real parameter
// layout so they cannot drift from the model.
#pragma once

#include <cstdint>

#include "model/model_config.h"

namespace deco {

struct ParamCounts {
  int64_t total = 0;
  int64_t embedding = 0;       // model.embed_tokens
  int64_t lm_head = 0;         // the untied output layer
  int64_t non_embedding = 0;   // total - embedding - lm_head (what the paper's names count)
  int64_t attention = 0;       // q, k, v, o projections
  int64_t norms = 0;           // RMSNorm weights
  int64_t dense_ffn = 0;       // SwiGLU FFNs of dense layers
  int64_t routed_experts = 0;  // expert up/gate/down projections
  int64_t shared_experts = 0;
  int64_t router = 0;          // router weights and expert scales
  int64_t expert_act = 0;      // NormSiLU gamma
};

ParamCounts count_params(const ModelConfig& config);

// Training FLOPs per token (forward + backward = 3 x forward), counting
// 2 FLOPs per multiply-add of every matrix product: 6 x the matrix
// parameters each token passes through (the routed experts' share scaled by
// `routed_fraction`, 1 for the dense path, the activation ratio for the
// sparse one), plus attention scores and values, 12 x layers x hidden x
// seq_length (PaLM's convention: the causal mask's skipped half is counted).
double training_flops_per_token(const ModelConfig& config, double routed_fraction);
// Its attention term, 12 x layers x hidden x seq_length per token: half of
// it is the causal mask's skipped half, which the kernels do not execute.
double attention_flops_per_token(const ModelConfig& config);

// Bytes of activations and backward temporaries the model holds for a
// micro-batch of `batch` sequences of seq_length tokens with activations in
// `dtype` (statistics and router values in its accumulate dtype: float32
// under bf16), under config.recompute (model/memory.h): what model/
// allocates, buffer by buffer, on one rank without expert parallelism. The
// sparse path's pairs are counted at `activation_ratio` in every layer (the
// ratio sizes them; training starts near 0.5 and settles at the target). On
// the CPU the attention keeps its probabilities [B, heads, S, S]; on the GPU
// only their row log-sum-exp. Checked against the allocations of real steps
// by tests/unit/test_recompute.cpp.
double activation_bytes(const ModelConfig& config, int64_t batch, DType dtype, Device device,
                        double activation_ratio);

}  // namespace deco
