#include "trainer/optimizer.h"

#include <algorithm>

#include "core/caching_allocator.h"
#include "kernels/ops.h"

namespace deco {

AdamW::AdamW(const OptimizerConfig& config, const ParamLayout& layout, DType dtype, Device device,
             std::vector<FlatRange> owned)
    : config_(config), layout_(&layout), owned_(std::move(owned)) {
  MemoryCategoryScope scope(MemoryCategory::OptimizerState);
  if (owned_.empty()) {
    m_ = std::make_unique<ParamStore>(layout, dtype, device);
    v_ = std::make_unique<ParamStore>(layout, dtype, device);
    return;
  }
  int64_t n = 0;
  for (const FlatRange& r : owned_) n += r.size();
  m_shard_ = Buffer(dtype, device, Shape{n});
  v_shard_ = Buffer(dtype, device, Shape{n});
}

const ParamStore& AdamW::exp_avg() const {
  DECO_ASSERT(m_, "the distributed optimizer's moments are sharded");
  return *m_;
}

const ParamStore& AdamW::exp_avg_sq() const {
  DECO_ASSERT(v_, "the distributed optimizer's moments are sharded");
  return *v_;
}

int64_t AdamW::state_bytes() const {
  return m_ ? static_cast<int64_t>(2 * m_->flat().nbytes()) : static_cast<int64_t>(2 * m_shard_.tensor().nbytes());
}

void AdamW::step(const ParamStore& params, const ParamStore& grads, double lr, double grad_scale) {
  ++step_;
  ops::AdamWStep hp{};
  hp.lr = lr;
  hp.beta1 = config_.adam_beta1;
  hp.beta2 = config_.adam_beta2;
  hp.eps = config_.adam_eps;
  hp.weight_decay = config_.weight_decay;
  hp.step = step_;
  hp.grad_scale = grad_scale;
  if (!sharded()) {
    for (const ParamSpec& spec : layout_->specs())
      ops::adamw_update(params.get(spec), grads.get(spec), m_->get(spec), v_->get(spec), hp, spec.weight_decay);
    return;
  }
  // Each owned range covers parts of one or more parameters; each part is
  // updated with its parameter's weight-decay rule (the update is
  // elementwise, so a part gives the same values as the whole).
  const Tensor p = params.flat(), g = grads.flat(), m = m_shard_.tensor(), v = v_shard_.tensor();
  int64_t moment_offset = 0;
  for (const FlatRange& r : owned_) {
    for (const ParamSpec& spec : layout_->specs()) {
      const int64_t lo = std::max(r.begin, spec.offset), hi = std::min(r.end, spec.offset + spec.shape.numel());
      if (lo >= hi) continue;
      const int64_t mlo = moment_offset + lo - r.begin, mhi = moment_offset + hi - r.begin;
      ops::adamw_update(p.slice(lo, hi), g.slice(lo, hi), m.slice(mlo, mhi), v.slice(mlo, mhi), hp,
                        spec.weight_decay);
    }
    moment_offset += r.size();
  }
}

}  // namespace deco
