#include "trainer/optimizer.h"

#include "kernels/ops.h"

namespace deco {

AdamW::AdamW(const OptimizerConfig& config, const ParamLayout& layout, DType dtype, Device device)
    : config_(config), m_(layout, dtype, device), v_(layout, dtype, device) {}

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
  for (const ParamSpec& spec : params.layout().specs())
    ops::adamw_update(params.get(spec), grads.get(spec), m_.get(spec), v_.get(spec), hp, spec.weight_decay);
}

}  // namespace deco
