#include "data/synthetic_corpus.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace deco {
namespace {
constexpr int64_t kMinSegment = 8, kMaxSegment = 32;
}

SyntheticCorpus::SyntheticCorpus(int64_t vocab_size, int64_t seq_length, int64_t successors,
                                 double repeat_prob, uint64_t seed, Split split)
    : vocab_(vocab_size),
      seq_length_(seq_length),
      successors_(successors),
      repeat_prob_(repeat_prob),
      stream_(stream_key(seed, str("synthetic-corpus/", split_name(split)))) {
  DECO_ASSERT(vocab_size >= 1 && successors >= 1 && successors <= vocab_size, "validated by config");
  // The chain is shared by every split (same language); only the samples differ.
  Rng table_rng(stream_key(seed, "synthetic-corpus/chain"));
  next_.resize(static_cast<size_t>(vocab_ * successors_));
  std::vector<int32_t> pool(static_cast<size_t>(vocab_));
  for (int64_t v = 0; v < vocab_; ++v) pool[static_cast<size_t>(v)] = static_cast<int32_t>(v);
  for (int64_t v = 0; v < vocab_; ++v)
    for (int64_t k = 0; k < successors_; ++k) {  // partial Fisher-Yates: distinct successors
      const auto j = static_cast<size_t>(k + static_cast<int64_t>(table_rng.below(static_cast<uint64_t>(vocab_ - k))));
      std::swap(pool[static_cast<size_t>(k)], pool[j]);
      next_[static_cast<size_t>(v * successors_ + k)] = pool[static_cast<size_t>(k)];
    }
  double total = 0.0;
  for (int64_t k = 0; k < successors_; ++k) total += 1.0 / static_cast<double>(k + 1);
  double acc = 0.0;
  for (int64_t k = 0; k < successors_; ++k) {
    acc += 1.0 / static_cast<double>(k + 1) / total;
    cumulative_.push_back(acc);
  }
  cumulative_.back() = 1.0;
}

void SyntheticCorpus::read(int64_t index, int32_t* out) const {
  Rng rng(stream_key(stream_, static_cast<uint64_t>(index)));
  const int64_t len = sample_tokens();
  std::vector<std::pair<int64_t, int64_t>> segments;  // (start, length) of the segments so far
  int64_t pos = 0;
  int32_t token = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab_)));
  while (pos < len) {
    const int64_t seg_len = kMinSegment + static_cast<int64_t>(rng.below(kMaxSegment - kMinSegment + 1));
    const int64_t n = std::min(seg_len, len - pos);
    if (!segments.empty() && rng.uniform() < repeat_prob_) {
      const auto [src, src_len] = segments[rng.below(segments.size())];
      const int64_t m = std::min(n, src_len);
      for (int64_t i = 0; i < m; ++i) out[pos + i] = out[src + i];
      segments.emplace_back(pos, m);
      pos += m;
      token = out[pos - 1];
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      const double u = rng.uniform();
      const auto k = std::lower_bound(cumulative_.begin(), cumulative_.end(), u) - cumulative_.begin();
      token = next_[static_cast<size_t>(token * successors_ + k)];
      out[pos + i] = token;
    }
    segments.emplace_back(pos, n);
    pos += n;
  }
}

std::string SyntheticCorpus::describe() const {
  return str("synthetic corpus (vocab ", vocab_, ", ", successors_, " successors per token, repeat ",
             repeat_prob_, ", Markov entropy ", markov_entropy(), " nats)");
}

double SyntheticCorpus::markov_entropy() const {
  double h = 0.0, prev = 0.0;
  for (double c : cumulative_) {
    const double p = c - prev;
    prev = c;
    if (p > 0) h -= p * std::log(p);
  }
  return h;
}

}  // namespace deco
