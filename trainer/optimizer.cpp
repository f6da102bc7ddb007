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
  } else {
    int64_t n = 0;
    for (const FlatRange& r : owned_) n += r.size();
    m_shard_ = Buffer(dtype, device, Shape{n});
    v_shard_ = Buffer(dtype, device, Shape{n});
  }
  // The chunk table of the fused update, built once: the layout and the
  // shards do not change during a run.
  const std::vector<ops::AdamWChunk> chunks = ops::adamw_chunks(segments());
  chunks_ = Buffer(DType::I64, device, Shape{static_cast<int64_t>(chunks.size()), 4});
  device_copy(device, chunks_.tensor().raw(), Device::CPU, chunks.data(), chunks.size() * sizeof(ops::AdamWChunk));
}

std::vector<ops::AdamWChunk> AdamW::segments() const {
  std::vector<ops::AdamWChunk> out;
  // Neighbouring parameters with the same decay rule whose moments are
  // neighbours too become one segment.
  auto add = [&](int64_t offset, int64_t moment_offset, int64_t size, bool decay) {
    if (size <= 0) return;
    if (!out.empty()) {
      ops::AdamWChunk& last = out.back();
      if (last.decay == int64_t{decay} && last.offset + last.size == offset &&
          last.moment_offset + last.size == moment_offset) {
        last.size += size;
        return;
      }
    }
    out.push_back({offset, moment_offset, size, int64_t{decay}});
  };
  // Each owned range (unsharded: the whole buffer) covers parts of one or
  // more parameters; each part is updated with its parameter's weight-decay
  // rule, its moments at its place in the moment buffers (the owned ranges
  // back to back).
  const std::vector<FlatRange> ranges =
      sharded() ? owned_ : std::vector<FlatRange>{{0, layout_->total_numel()}};
  int64_t moment_offset = 0;
  for (const FlatRange& r : ranges) {
    for (const ParamSpec& spec : layout_->specs()) {
      const int64_t lo = std::max(r.begin, spec.offset), hi = std::min(r.end, spec.offset + spec.shape.numel());
      if (lo < hi) add(lo, moment_offset + lo - r.begin, hi - lo, spec.weight_decay);
    }
    moment_offset += r.size();
  }
  return out;
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
  ops::adamw_update(params.flat(), grads.flat(), exp_avg_flat(), exp_avg_sq_flat(), chunks_, hp);
}

}  // namespace deco
