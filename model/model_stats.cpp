#include "model/model_stats.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "model/params.h"

namespace deco {
namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

ParamCounts count_params(const ModelConfig& config) {
  const ParamLayout layout(config);
  ParamCounts c;
  for (const ParamSpec& spec : layout.specs()) {
    const int64_t n = spec.shape.numel();
    const std::string& name = spec.name;
    c.total += n;
    if (name == "model.embed_tokens.weight") c.embedding += n;
    else if (name == "lm_head.weight") c.lm_head += n;
    else if (contains(name, "self_attn.")) c.attention += n;
    else if (contains(name, "layernorm") || name == "model.norm.weight") c.norms += n;
    else if (contains(name, "shared_experts.")) c.shared_experts += n;
    else if (spec.expert) c.routed_experts += n;
    else if (contains(name, "moe_router") || contains(name, "router_norm")) c.router += n;
    else if (contains(name, "expert_act.")) c.expert_act += n;
    else c.dense_ffn += n;
  }
  c.non_embedding = c.total - c.embedding - c.lm_head;
  return c;
}

double training_flops_per_token(const ModelConfig& config, double routed_fraction) {
  const ParamCounts c = count_params(config);
  // Matrix parameters a token multiplies through (norms, scales and gamma are
  // elementwise; the embedding is a lookup).
  const double matmul = static_cast<double>(c.attention + c.dense_ffn + c.shared_experts + c.router +
                                            c.lm_head) +
                        routed_fraction * static_cast<double>(c.routed_experts);
  return 6.0 * matmul + attention_flops_per_token(config);
}

double attention_flops_per_token(const ModelConfig& config) {
  return 12.0 * static_cast<double>(config.num_layers) * static_cast<double>(config.hidden_size) *
         static_cast<double>(config.seq_length);
}

double activation_bytes(const ModelConfig& c, int64_t batch, DType dtype, Device device,
                        double activation_ratio) {
  // Element counts by owner (model/memory.h), times the bytes of their dtype:
  // fb an activation, sb a statistic or router value (accumulate_dtype), 4
  // and 8 int32 and int64.
  const double fb = static_cast<double>(dtype_size(dtype));
  const double sb = static_cast<double>(dtype_size(accumulate_dtype(dtype)));
  const bool mixed = accumulate_dtype(dtype) != dtype;
  const double B = static_cast<double>(batch), S = static_cast<double>(c.seq_length);
  const double N = B * S, H = static_cast<double>(c.hidden_size);
  const double heads = static_cast<double>(c.num_attention_heads);
  const double A = heads * static_cast<double>(c.head_dim());                                   // q, attention output
  const double K = static_cast<double>(c.num_query_groups) * static_cast<double>(c.head_dim());  // k, v
  const double E = static_cast<double>(c.num_experts), D = static_cast<double>(c.moe_ffn_hidden_size);
  const double F = static_cast<double>(c.ffn_hidden_size);
  const double Sh = static_cast<double>(c.moe_shared_expert_intermediate_size);
  const double V = static_cast<double>(c.vocab_size);

  // The decoder layer and its attention, which every layer has: rstd1,
  // rstd2, the attention's log-sum-exp (the CPU keeps its probabilities);
  // residual_mid, q, k, v, att.
  const double lse = device == Device::CPU ? B * heads * S * S : B * heads * S;
  const double layer_saved = (2 * N + lse) * sb + (N * H + 2 * N * A + 2 * N * K) * fb;
  const double layer_recomp = 2 * N * H * fb;                     // normed1, normed2
  const double attention_scratch = (2 * N * A + 2 * N * K) * fb;  // datt, dq, dk, dv
  // A SwiGLU of width w: gate and up outputs; hidden; three gradients.
  auto swiglu = [&](double w, double parts[3]) {
    parts[0] = 2 * N * w * fb;
    parts[1] = N * w * fb;
    parts[2] = 3 * N * w * fb;
  };
  double dense_ffn[3] = {0, 0, 0}, deco[3] = {0, 0, 0};
  swiglu(F, dense_ffn);
  if (c.num_experts > 0) {
    swiglu(Sh, deco);  // the shared expert
    // Auto runs both paths over time: its buffers grow to the dense path's
    // [N*E, D] blocks. (The sparse path keeps no [P, H] rows: its products
    // read the input rows by index; where the GPU's tensor-core kernels do
    // not apply, each product borrows a [P, H] workspace for its call only.)
    const bool sparse = c.expert_compute != ExpertCompute::Dense;
    const bool mean = ops::expert_act_has_mean(c.expert_act);
    const double pairs = std::ceil(activation_ratio * N * E);
    const double rows = c.expert_compute == ExpertCompute::Sparse ? pairs : N * E;  // [rows, D] expert blocks
    const double gated = c.expert_gated ? 1.0 : 0.0;
    // Saved: z, gscale; pre (and lin), mean; the routing (int32, host offsets included).
    deco[0] += (N * E + rows) * sb + ((1 + gated) * rows * D + (mean ? N : 0)) * fb +
               (sparse ? ((E + 1) + 2 * N * E) * 4 : 0);
    // Recomputable: rs; xhat, actn, ga (and act).
    deco[1] += rows * sb + (3 + gated) * rows * D * fb;
    // Scratch: g, dg, dr, dz, dgs, kvec (with the mean, sparse); q, dc (and
    // dact, dlin: the gated variant's product is not fused), kappa, the
    // per-pair row means of dc; counts (int64); under mixed
    // precision the router's widened input and its gradient.
    deco[2] += (4 * N * E + rows + (sparse && mean ? H : 0) + (mixed ? 2 * N * H : 0)) * sb +
               ((2 + 2 * gated) * rows * D + (mean ? N : 0) + (sparse && mean ? pairs : 0)) * fb +
               E * 8;
  }

  const bool any_dense = c.num_experts == 0 || c.dense_layers > 0;
  const bool any_deco = c.num_deco_layers() > 0;
  double saved_sum = 0, recomp_sum = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const double* ffn = c.is_deco_layer(l) ? deco : dense_ffn;
    saved_sum += layer_saved + ffn[0];
    recomp_sum += layer_recomp + ffn[1];
  }
  // One shared set holds the attention's part once and each FFN kind's once.
  const double saved_max = layer_saved + (any_dense ? dense_ffn[0] : 0) + (any_deco ? deco[0] : 0);
  const double recomp_max = layer_recomp + (any_dense ? dense_ffn[1] : 0) + (any_deco ? deco[1] : 0);
  const double scratch = attention_scratch + (any_dense ? dense_ffn[2] : 0) + (any_deco ? deco[2] : 0);

  double layers = static_cast<double>(c.num_layers) * N * H * fb + scratch;  // the layer inputs, always kept
  switch (c.recompute) {
    case Recompute::None: layers += saved_sum + recomp_sum; break;
    case Recompute::Selective: layers += saved_sum + recomp_max; break;
    case Recompute::Full: layers += saved_max + recomp_max; break;
  }
  // The model's own: inputs and targets (int32); branch output, final
  // stream, its norm, the two backward streams; rstd_final; the logits chunk.
  const double chunk = std::min(N, std::max(1.0, std::floor(static_cast<double>(int64_t{1} << 24) / V)));
  const double model = 2 * N * 4 + (5 * N * H + chunk * V) * fb + N * sb;
  return layers + model;
}

}  // namespace deco
