// The model's hyperparameters: model/ depends on nothing but this struct;
// trainer/config.cpp fills it from YAML (with Megatron's key names) and
// validates it.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/ops.h"

namespace deco {

// How a DECO layer computes its routed experts (engineering.md): "dense"
// computes all E experts and lets the zero scores mask them, as the authors'
// code does; "sparse" computes only the active (token, expert) pairs. Both
// are exact and agree to rounding. "auto" picks one per layer and
// micro-batch from the activation ratio its router just produced: sparse at
// or below a crossover ratio that the trainer measures on the device at
// start (model/layer_bench.h) and keeps in checkpoints, dense above it.
enum class ExpertCompute { Dense, Sparse, Auto };

// Activation recomputation (the YAML key is training.recompute; model/memory.h):
// none keeps every layer's activations for the backward pass; selective
// keeps the GEMM outputs and rebuilds the cheap elementwise ones; full keeps
// only each layer's input and runs the layer's forward again before its
// backward. All three give bit-identical results.
enum class Recompute { None, Selective, Full };

// The attention kernels a GPU runs (model.attention_backend, after Megatron's
// --attention-backend): tensor_cores runs the tensor-core flash kernels where
// they apply (bf16; kernels/cuda/attention_tc.cu says which shapes) and the
// CUDA-core kernels elsewhere; cuda_cores runs the CUDA-core kernels always.
// Both are exact up to rounding. No effect on the CPU.
enum class AttentionBackend { TensorCores, CudaCores };

// Sparsity regularizer on the router's ReLU outputs (deco-model.md section 3).
enum class RegType { None, Entropy, L1 };

struct ModelConfig {
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_query_groups = 0;
  int64_t ffn_hidden_size = 0;        // dense SwiGLU width
  int64_t vocab_size = 0;
  int64_t seq_length = 0;
  double norm_epsilon = 1e-5;
  double rotary_base = 10000.0;
  double init_method_std = 0.01;
  int64_t num_experts = 0;            // 0: a dense model
  int64_t moe_ffn_hidden_size = 64;   // routed expert width D
  int64_t moe_shared_expert_intermediate_size = 128;  // shared expert width S
  int64_t dense_layers = 1;           // leading layers that keep a dense FFN
  ops::ExpertAct expert_act = ops::ExpertAct::NormSilu;
  bool expert_gated = false;
  double router_scale_init = 0.1;
  ExpertCompute expert_compute = ExpertCompute::Sparse;
  // On a GPU, a DECO layer's shared expert runs on a second stream beside
  // its router and routed experts (Megatron's --moe-shared-expert-overlap);
  // the results are bit-identical either way. No effect on the CPU.
  bool moe_shared_expert_overlap = true;
  // GPU kernel choices, process-wide (use_gpu_kernels): neither changes
  // what is computed beyond rounding, so both may change on resume.
  AttentionBackend attention_backend = AttentionBackend::TensorCores;
  // The sparse path's expert products on a GPU in bf16 (ops::SparseExpertKernels):
  // wide or narrow tensor-core blocks, or the gather + cuBLAS grouped GEMM +
  // scatter composition (what the CPU always runs).
  ops::SparseExpertKernels sparse_expert_kernels = ops::SparseExpertKernels::Wide;
  Recompute recompute = Recompute::None;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  bool is_deco_layer(int64_t layer) const { return num_experts > 0 && layer >= dense_layers; }
  int64_t num_deco_layers() const;
  // Width of the routed up-projection, E * D.
  int64_t expert_rows() const { return num_experts * moe_ffn_hidden_size; }
};

// Sets kernels/ops.h's process-wide switches from the config's GPU kernel
// choices (attention_backend, sparse_expert_kernels).
void use_gpu_kernels(const ModelConfig& config);

const char* attention_backend_name(AttentionBackend backend);
const char* expert_act_name(ops::ExpertAct act);
const char* expert_compute_name(ExpertCompute mode);
const char* reg_type_name(RegType type);
const char* recompute_name(Recompute mode);

}  // namespace deco
