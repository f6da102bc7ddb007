#include "model/model_stats.h"

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

}  // namespace deco
