// A small DECO model and random token batches, shared by the whole-model tests.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "model/model_config.h"

namespace deco::test {

// 3 layers (layer 0 dense, 1-2 DECO with 6 experts of width 4 and a shared
// expert of 8), hidden 16, 4 heads, vocabulary 32, sequences of 8.
inline ModelConfig small_model_config() {
  ModelConfig c;
  c.num_layers = 3;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_query_groups = 4;
  c.ffn_hidden_size = 24;
  c.vocab_size = 32;
  c.seq_length = 8;
  c.num_experts = 6;
  c.moe_ffn_hidden_size = 4;
  c.moe_shared_expert_intermediate_size = 8;
  c.dense_layers = 1;
  c.init_method_std = 0.3;  // O(1) activations so every term of every gradient matters
  return c;
}

// int32 [batch, seq + 1] token ids below `vocab`, row-major.
inline std::vector<int32_t> random_tokens(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(batch * (seq + 1)));
  for (int32_t& v : t) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return t;
}

}  // namespace deco::test
