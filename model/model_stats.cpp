#include "model/model_stats.h"

#include <algorithm>
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
  const double attention = 12.0 * static_cast<double>(config.num_layers) *
                           static_cast<double>(config.hidden_size) *
                           static_cast<double>(config.seq_length);
  return 6.0 * matmul + attention;
}

double cpu_activation_bytes(const ModelConfig& c, int64_t batch, size_t dtype_bytes) {
  const double N = static_cast<double>(batch * c.seq_length), H = static_cast<double>(c.hidden_size);
  const double S = static_cast<double>(c.seq_length), heads = static_cast<double>(c.num_attention_heads);
  const double kv = static_cast<double>(c.num_query_groups * c.head_dim());
  const double E = static_cast<double>(c.num_experts), D = static_cast<double>(c.moe_ffn_hidden_size);
  // Per layer: the residual stream and norms (4 [N, H] + 2 [N]); attention's
  // q, output, their gradients (4 [N, H]), k, v and theirs (4 [N, kv]) and
  // the saved probabilities [B, heads, S, S].
  double per_layer_common = 4 * N * H + 2 * N + 4 * N * H + 4 * N * kv + static_cast<double>(batch) * heads * S * S;
  double floats = 0.0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    floats += per_layer_common;
    if (!c.is_deco_layer(l)) {
      floats += 6 * N * static_cast<double>(c.ffn_hidden_size);  // gate, up, hidden and their gradients
      continue;
    }
    const double shared = 6 * N * static_cast<double>(c.moe_shared_expert_intermediate_size);
    const double router = 5 * N * E;  // z, g, dg, dr, dz
    // [rows, D] expert buffers (projection(s), NormSiLU state, activations,
    // scaled activations and their gradients), rows = N*E (dense) or P pairs.
    const double gated = c.expert_gated ? 3.0 : 0.0;
    const double rows = c.expert_compute == ExpertCompute::Dense ? N * E : 0.5 * N * E;
    double experts = (8 + gated) * rows * D;
    if (c.expert_compute == ExpertCompute::Sparse) experts += 2 * rows * H;  // gathered inputs, outputs
    floats += shared + router + experts;
  }
  const double vocab_chunk = std::min(N, std::max(1.0, static_cast<double>(int64_t{1} << 24) / c.vocab_size));
  floats += 4 * N * H + vocab_chunk * static_cast<double>(c.vocab_size);  // final norm, head, logits chunk
  return floats * static_cast<double>(dtype_bytes);
}

}  // namespace deco
