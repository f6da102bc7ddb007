// The built-in synthetic corpus: needs no download, has structure a small
// model can learn, and is fully determined by the seed.
//
// Each sample is a run of segments of 8-32 tokens. A segment is either a
// walk of a sparse random Markov chain (every token has `successors`
// likely next tokens with Zipf probabilities 1/k, normalized), or, with
// probability `repeat_prob`, a verbatim copy of an earlier segment of the
// same sample, which attention can learn to look up. With the defaults the
// per-token entropy of the Markov part is about 1.2 nats, far below
// ln(vocab_size), so a falling loss shows real learning.
#pragma once

#include <cstdint>
#include <vector>

#include "data/sample_source.h"

namespace deco {

class SyntheticCorpus final : public SampleSource {
 public:
  SyntheticCorpus(int64_t vocab_size, int64_t seq_length, int64_t successors, double repeat_prob,
                  uint64_t seed, Split split);

  int64_t sample_tokens() const override { return seq_length_ + 1; }
  void read(int64_t index, int32_t* out) const override;
  std::string describe() const override;

  // Entropy in nats of one step of the Markov chain (a floor for the loss on walk tokens).
  double markov_entropy() const;

 private:
  int64_t vocab_, seq_length_, successors_;
  double repeat_prob_;
  uint64_t stream_;                 // key of this split's sample streams
  std::vector<int32_t> next_;       // [vocab, successors] successor table
  std::vector<double> cumulative_;  // [successors] cumulative Zipf probabilities
};

}  // namespace deco
