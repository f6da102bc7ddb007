#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"

namespace deco {
namespace {

// Parameters start on 64-element boundaries so vectorized GPU kernels and
// per-parameter collectives see aligned memory.
constexpr int64_t kAlign = 64;
int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The slice a sharded 2-D parameter holds, cut from its full row-major values.
std::vector<double> shard_of(const std::vector<double>& full, const ParamSpec& spec) {
  const int64_t full_cols = spec.full_shape[1], rows = spec.shape[0], cols = spec.shape[1];
  const int64_t row0 = spec.shard_dim == 0 ? spec.shard_begin : 0;
  const int64_t col0 = spec.shard_dim == 1 ? spec.shard_begin : 0;
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(full.begin() + (row0 + r) * full_cols + col0, cols, out.begin() + r * cols);
  return out;
}

}  // namespace

int64_t ModelConfig::num_deco_layers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_layers; ++l) n += is_deco_layer(l);
  return n;
}

const char* expert_act_name(ops::ExpertAct act) {
  switch (act) {
    case ops::ExpertAct::NormSilu: return "norm_silu";
    case ops::ExpertAct::NormSiluNoMean: return "norm_silu_nomean";
    case ops::ExpertAct::NormSiluNorms: return "norm_silu_norms";
    case ops::ExpertAct::Silu: return "silu";
  }
  return "?";
}

void use_gpu_kernels(const ModelConfig& config) {
  ops::set_attention_tensor_cores(config.attention_backend == AttentionBackend::TensorCores);
  ops::set_sparse_expert_kernels(config.sparse_expert_kernels);
}

const char* attention_backend_name(AttentionBackend backend) {
  switch (backend) {
    case AttentionBackend::TensorCores: return "tensor_cores";
    case AttentionBackend::CudaCores: return "cuda_cores";
  }
  return "?";
}

const char* expert_compute_name(ExpertCompute mode) {
  switch (mode) {
    case ExpertCompute::Dense: return "dense";
    case ExpertCompute::Sparse: return "sparse";
    case ExpertCompute::Auto: return "auto";
  }
  return "?";
}

const char* recompute_name(Recompute mode) {
  switch (mode) {
    case Recompute::None: return "none";
    case Recompute::Selective: return "selective";
    case Recompute::Full: return "full";
  }
  return "?";
}

const char* reg_type_name(RegType type) {
  switch (type) {
    case RegType::None: return "none";
    case RegType::Entropy: return "entropy";
    case RegType::L1: return "l1";
  }
  return "?";
}

std::string layer_param(int64_t layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

ParamLayout::ParamLayout(const ModelConfig& c, int64_t ep_size, int64_t ep_rank, int64_t region_multiple)
    : ep_size_(ep_size), ep_rank_(ep_rank) {
  DECO_ASSERT(ep_size >= 1 && ep_rank >= 0 && ep_rank < ep_size && c.num_experts % ep_size == 0,
              "expert-parallel layout ", ep_rank, " of ", ep_size, " for ", c.num_experts, " experts");
  local_experts_ = c.num_experts / ep_size;
  const int64_t H = c.hidden_size, hd = c.head_dim();
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, InitKind init, bool expert) {
    ParamSpec s;
    s.name = name;
    s.shape = Shape{rows, cols};
    s.full_shape = s.shape;
    s.init = init;
    s.expert = expert;
    if (expert && ep_size > 1) {  // this rank's experts: a block of E*D rows or columns
      s.shard_dim = name.find("expert_down_proj") == std::string::npos ? 0 : 1;  // down: [H, E*D]
      const int64_t block = local_experts_ * c.moe_ffn_hidden_size;
      s.shard_begin = ep_rank * block;
      s.shape = s.shard_dim == 0 ? Shape{block, cols} : Shape{rows, block};
    }
    specs_.push_back(s);
  };
  auto vector = [&](const std::string& name, int64_t n, double value) {
    ParamSpec s;
    s.name = name;
    s.shape = Shape{n};
    s.full_shape = s.shape;
    s.init = InitKind::Constant;
    s.init_value = value;
    s.weight_decay = false;
    specs_.push_back(s);
  };

  matrix("model.embed_tokens.weight", c.vocab_size, H, InitKind::Normal, false);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    vector(layer_param(l, "input_layernorm.weight"), H, 1.0);
    matrix(layer_param(l, "self_attn.q_proj.weight"), c.num_attention_heads * hd, H, InitKind::Normal, false);
    matrix(layer_param(l, "self_attn.k_proj.weight"), c.num_query_groups * hd, H, InitKind::Normal, false);
    matrix(layer_param(l, "self_attn.v_proj.weight"), c.num_query_groups * hd, H, InitKind::Normal, false);
    matrix(layer_param(l, "self_attn.o_proj.weight"), H, c.num_attention_heads * hd, InitKind::ScaledNormal, false);
    vector(layer_param(l, "post_attention_layernorm.weight"), H, 1.0);
    if (!c.is_deco_layer(l)) {
      matrix(layer_param(l, "mlp.gate_proj.weight"), c.ffn_hidden_size, H, InitKind::Normal, false);
      matrix(layer_param(l, "mlp.up_proj.weight"), c.ffn_hidden_size, H, InitKind::Normal, false);
      matrix(layer_param(l, "mlp.down_proj.weight"), H, c.ffn_hidden_size, InitKind::ScaledNormal, false);
      continue;
    }
    const int64_t ED = c.expert_rows(), S = c.moe_shared_expert_intermediate_size;
    matrix(layer_param(l, "mlp.moe_router.weight"), c.num_experts, H, InitKind::Normal, false);
    vector(layer_param(l, "mlp.router_norm.weight"), c.num_experts, c.router_scale_init);
    matrix(layer_param(l, "mlp.expert_up_proj.weight"), ED, H, InitKind::Normal, true);
    if (c.expert_gated)
      matrix(layer_param(l, "mlp.expert_gate_proj.weight"), ED, H, InitKind::Normal, true);
    // The reference code initializes expert_down_proj with the plain std (deco-model.md section 4).
    matrix(layer_param(l, "mlp.expert_down_proj.weight"), H, ED, InitKind::Normal, true);
    // gamma belongs to the per-expert RMS step; variants without it have no gamma.
    if (ops::expert_act_has_rms(c.expert_act))
      vector(layer_param(l, "mlp.expert_act.rms_norm.weight"), c.moe_ffn_hidden_size, 1.0);
    if (S > 0) {
      matrix(layer_param(l, "mlp.shared_experts.gate_proj.weight"), S, H, InitKind::Normal, false);
      matrix(layer_param(l, "mlp.shared_experts.up_proj.weight"), S, H, InitKind::Normal, false);
      matrix(layer_param(l, "mlp.shared_experts.down_proj.weight"), H, S, InitKind::ScaledNormal, false);
    }
  }
  vector("model.norm.weight", H, 1.0);
  matrix("lm_head.weight", c.vocab_size, H, InitKind::Normal, false);

  // Offsets: dense region first, then the expert region.
  for (ParamSpec& s : specs_)
    if (!s.expert) {
      s.offset = dense_numel_;
      dense_numel_ += align_up(s.shape.numel());
    }
  for (ParamSpec& s : specs_)
    if (s.expert) {
      s.offset = dense_numel_ + expert_numel_;
      expert_numel_ += align_up(s.shape.numel());
    }
  DECO_ASSERT(region_multiple >= 1, "region_multiple ", region_multiple);
  auto pad = [&](int64_t n) { return (n + region_multiple - 1) / region_multiple * region_multiple; };
  const int64_t dense_padded = pad(dense_numel_);
  for (ParamSpec& s : specs_)
    if (s.expert) s.offset += dense_padded - dense_numel_;
  dense_numel_ = dense_padded;
  expert_numel_ = pad(expert_numel_);
}

ParamLayout::ParamLayout(std::vector<ParamSpec> specs) : specs_(std::move(specs)) {
  for (ParamSpec& s : specs_) {
    s.expert = false;
    if (s.full_shape.ndim == 0) s.full_shape = s.shape;
    s.offset = dense_numel_;
    dense_numel_ += align_up(s.shape.numel());
  }
}

FlatRange equal_shard(const FlatRange& region, int64_t parts, int64_t index) {
  DECO_ASSERT(parts >= 1 && index >= 0 && index < parts && region.size() % parts == 0, "equal_shard: a region of ",
              region.size(), " elements does not split into ", parts, " equal shards (the layout pads it for ZeRO-1)");
  const int64_t shard = region.size() / parts;
  return {region.begin + index * shard, region.begin + (index + 1) * shard};
}

const ParamSpec* ParamLayout::find(const std::string& name) const {
  for (const ParamSpec& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

const ParamSpec& ParamLayout::spec(const std::string& name) const {
  const ParamSpec* s = find(name);
  DECO_ASSERT(s != nullptr, "no parameter named ", name);
  return *s;
}

int64_t ParamLayout::num_parameters() const {
  int64_t n = 0;
  for (const ParamSpec& s : specs_) n += s.shape.numel();
  return n;
}

ParamStore::ParamStore(const ParamLayout& layout, DType dtype, Device device)
    : layout_(&layout), buffer_(dtype, device, Shape{layout.total_numel()}) {}

Tensor ParamStore::get(const ParamSpec& spec) const {
  return flat().slice(spec.offset, spec.offset + spec.shape.numel()).view(spec.shape);
}

void init_params(const ParamStore& store, const ModelConfig& config, uint64_t seed) {
  const double scaled_std = config.init_method_std / std::sqrt(2.0 * static_cast<double>(config.num_layers));
  const std::vector<ParamSpec>& specs = store.layout().specs();
  // Every tensor draws from its own stream, so tensors can be drawn in
  // parallel with the same values (Box-Muller in double costs ~30 ns a value:
  // a minute for deco-1.2b on one core). Largest first, so that the longest
  // draws do not start last; copies into the store one at a time.
  std::vector<size_t> order(specs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return specs[a].full_shape.numel() > specs[b].full_shape.numel();
  });
  std::exception_ptr error;  // the first failure of any thread, rethrown after the loop
  auto keep_error = [&error] {
#pragma omp critical(deco_init_params_error)
    if (!error) error = std::current_exception();
  };
  // The copies run on the worker threads: each makes the rank's GPU current
  // (a thread starts on GPU 0, not the one parallel/launch.cpp selected).
  const int device = cuda_current_device();
#pragma omp parallel
  {
    if (device >= 0) {
      try {
        cuda_set_current_device(device);
      } catch (...) {
        keep_error();
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < order.size(); ++i) {
      try {
        const ParamSpec& spec = specs[order[i]];
        // Values are drawn in double on the host, then copied in the store's
        // dtype and device, so every backend starts from the same numbers.
        std::vector<double> values(static_cast<size_t>(spec.full_shape.numel()));
        if (spec.init == InitKind::Constant) {
          std::fill(values.begin(), values.end(), spec.init_value);
        } else {
          const double std = spec.init == InitKind::Normal ? config.init_method_std : scaled_std;
          Rng rng(stream_key(seed, spec.name));
          for (double& v : values) v = std * rng.normal();
        }
        if (spec.sharded()) values = shard_of(values, spec);
        const Tensor host(values.data(), DType::F64, Device::CPU, spec.shape);
        std::exception_ptr copy_error;  // an exception may not leave a critical region
#pragma omp critical(deco_init_params_copy)
        try {
          const Tensor dst = store.get(spec);
          if (dst.device() == Device::CPU) {
            ops::copy(dst, host);
          } else {
            Buffer staging(dst.dtype(), Device::CPU, spec.shape);
            ops::copy(staging, host);
            ops::copy(dst, staging);
          }
        } catch (...) {
          copy_error = std::current_exception();
        }
        if (copy_error) std::rethrow_exception(copy_error);
      } catch (...) {
        keep_error();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace deco

namespace deco {

Param bind_param(const ParamStore& values, const ParamStore& grads, const std::string& name) {
  const ParamSpec& spec = values.layout().spec(name);
  return Param{values.get(spec), grads.get(spec)};
}

}  // namespace deco
