#include "model/deco_ffn.h"

#include <algorithm>

namespace deco {
namespace {

Param optional_param(const ParamStore& values, const ParamStore& grads, const std::string& name) {
  return values.layout().find(name) ? bind_param(values, grads, name) : Param{};
}

// Rows of z [N, E] with no positive entry: tokens no routed expert sees.
int64_t count_idle_tokens(const Tensor& z) {
  const int64_t N = z.size(0), E = z.size(1);
  Buffer host;
  const Tensor* zh = &z;
  if (z.device() != Device::CPU) {
    host.ensure(z.dtype(), Device::CPU, z.shape());
    device_copy(Device::CPU, host.tensor().raw(), z.device(), z.raw(), z.nbytes());
    zh = &host.tensor();
  }
  auto count = [&](const auto* p) {
    int64_t idle = 0;
    for (int64_t t = 0; t < N; ++t)
      idle += std::none_of(p + t * E, p + (t + 1) * E, [](auto v) { return v > 0; });
    return idle;
  };
  if (zh->dtype() == DType::F32) return count(zh->data<float>());
  return count(zh->data<double>());
}

}  // namespace

DecoFfn::DecoFfn(const ModelConfig& c, const ParamStore& values, const ParamStore& grads, int64_t layer,
                 Communicator* expert_parallel)
    : E_(values.layout().local_experts()),
      E_total_(c.num_experts),
      D_(c.moe_ffn_hidden_size),
      ep_(expert_parallel != nullptr && expert_parallel->size() > 1 ? expert_parallel : nullptr),
      ep_first_(values.layout().ep_rank() * values.layout().local_experts()),
      act_kind_(c.expert_act),
      gated_(c.expert_gated),
      compute_(c.expert_compute),
      eps_(c.norm_epsilon),
      router_(bind_param(values, grads, layer_param(layer, "mlp.moe_router.weight"))),
      scale_(bind_param(values, grads, layer_param(layer, "mlp.router_norm.weight"))),
      act_proj_(bind_param(values, grads,
                           layer_param(layer, c.expert_gated ? "mlp.expert_gate_proj.weight"
                                                             : "mlp.expert_up_proj.weight"))),
      lin_proj_(c.expert_gated ? bind_param(values, grads, layer_param(layer, "mlp.expert_up_proj.weight"))
                               : Param{}),
      down_(bind_param(values, grads, layer_param(layer, "mlp.expert_down_proj.weight"))),
      gamma_(optional_param(values, grads, layer_param(layer, "mlp.expert_act.rms_norm.weight"))),
      shared_(c.moe_shared_expert_intermediate_size > 0
                  ? std::make_unique<SwigluFfn>(values, grads, layer_param(layer, "mlp.shared_experts."))
                  : nullptr) {
  const Tensor& w = act_proj_.value;
  w_bar_.ensure(w.dtype(), w.device(), Shape{1, w.size(1)});
  offsets_.ensure(DType::I32, Device::CPU, Shape{E_ + 1});
  DECO_ASSERT((ep_ ? ep_->size() : 1) == values.layout().ep_size(),
              "the parameter layout's expert-parallel size differs from the group's");
}

void DecoFfn::refresh_derived() {
  ops::col_mean(w_bar_, act_proj_.value);
  if (ep_) {  // the mean over all E*D rows: the mean of the ranks' equal-sized shares
    ep_->all_reduce_sum(w_bar_);
    ops::scale(w_bar_, 1.0 / static_cast<double>(ep_->size()));
  }
}

DecoLayerStats DecoFfn::forward(const Tensor& y, const Tensor& x, RegType reg) {
  const int64_t N = x.size(0);
  const DType dt = x.dtype();
  const Device dev = x.device();
  z_.ensure(dt, dev, Shape{N, E_total_});
  g_.ensure(dt, dev, Shape{N, E_total_});
  Buffer counts(DType::I64, dev, Shape{E_total_});

  // Router in full precision (the spec keeps it fp32 even under bf16 training).
  ops::linear_forward(z_, x, router_.value);
  ops::relu_route_forward(g_, counts, z_, scale_.value);

  DecoLayerStats stats;
  stats.tokens = N;
  stats.expert_tokens.assign(static_cast<size_t>(E_total_), 0);
  device_copy(Device::CPU, stats.expert_tokens.data(), dev, counts.tensor().raw(),
              static_cast<size_t>(E_total_) * sizeof(int64_t));
  for (int64_t c : stats.expert_tokens) stats.active_pairs += c;
  stats.entropy_sum = ops::entropy_reg_forward(z_);
  if (reg == RegType::Entropy) stats.reg_sum = stats.entropy_sum;
  if (reg == RegType::L1) stats.reg_sum = ops::l1_reg_forward(z_);
  stats.idle_tokens = count_idle_tokens(z_);

  if (shared_)
    shared_->forward(y, x, false);
  else
    ops::zero(y);
  if (!ep_) {
    zx_ = z_;
    gx_ = g_;
    experts_forward(y, x);
    return stats;
  }
  // Expert parallel: the rows of tokens active on this rank's experts come
  // here (with their router values for these experts), the results go back.
  exchange_.plan(z_, *ep_);
  stats.sent_per_rank = exchange_.sent_per_peer();
  const int64_t R = exchange_.received(), H = x.size(1);
  xr_.ensure(dt, dev, Shape{R, H});
  zr_.ensure(dt, dev, Shape{R, E_});
  gr_.ensure(dt, dev, Shape{R, E_});
  yr_.ensure(dt, dev, Shape{R, H});
  Buffer counts_r(DType::I64, dev, Shape{E_});  // relu_route_forward wants them; the source counted
  exchange_.dispatch(xr_, x);
  exchange_.dispatch_blocks(zr_, z_);
  ops::relu_route_forward(gr_, counts_r, zr_, scale_.value.slice(ep_first_, ep_first_ + E_));
  zx_ = zr_;
  gx_ = gr_;
  ops::zero(yr_);
  experts_forward(yr_, xr_);
  exchange_.combine_add(y, yr_);
  return stats;
}

void DecoFfn::experts_forward(const Tensor& y, const Tensor& x) {
  if (compute_ == ExpertCompute::Dense)
    experts_forward_dense(y, x);
  else
    experts_forward_sparse(y, x);
}

void DecoFfn::experts_backward(const Tensor& dx, const Tensor& dy, const Tensor& x) {
  if (compute_ == ExpertCompute::Dense)
    experts_backward_dense(dx, dy, x);
  else
    experts_backward_sparse(dx, dy, x);
}

void DecoFfn::activation_forward(const Tensor& block_token, int64_t blocks_per_token) {
  const int64_t rows = pre_.numel() / D_;  // N*E blocks (dense) or P pairs (sparse)
  const Tensor pre = pre_.tensor().view(Shape{rows, D_});
  const DType dt = pre.dtype();
  const Device dev = pre.device();
  xhat_.ensure(dt, dev, Shape{rows, D_});
  rs_.ensure(dt, dev, Shape{rows});
  actn_.ensure(dt, dev, Shape{rows, D_});
  ga_.ensure(dt, dev, Shape{rows, D_});
  ops::normsilu_forward(actn_, xhat_, rs_, pre, mean_.tensor(), block_token, blocks_per_token,
                        gamma_.value, act_kind_, eps_);
  if (gated_) {
    act_.ensure(dt, dev, Shape{rows, D_});
    ops::mul(act_, actn_, lin_.tensor().view(Shape{rows, D_}));
  }
  // Block b of the activation is scaled by its expert's score g (0 when inactive).
  ops::scale_rows(ga_, gated_ ? act_.tensor() : actn_.tensor(), gscale_);
}

void DecoFfn::experts_forward_dense(const Tensor& y, const Tensor& x) {
  const int64_t N = x.size(0), ED = E_ * D_;
  const DType dt = x.dtype();
  const Device dev = x.device();
  pre_.ensure(dt, dev, Shape{N, ED});
  ops::linear_forward(pre_, x, act_proj_.value);
  if (gated_) {
    lin_.ensure(dt, dev, Shape{N, ED});
    ops::linear_forward(lin_, x, lin_proj_.value);
  }
  if (ops::expert_act_has_mean(act_kind_)) {
    if (ep_) {  // this rank's rows are not all E*D: the mean comes from w_bar
      mean_.ensure(dt, dev, Shape{N, 1});
      ops::linear_forward(mean_, x, w_bar_);
    } else {
      mean_.ensure(dt, dev, Shape{N});
      ops::row_mean(mean_, pre_);
    }
  }
  gscale_.ensure(dt, dev, Shape{N * E_});
  ops::copy(gscale_, gx_.view(Shape{N * E_}));
  activation_forward(Tensor(), E_);
  ops::linear_forward(y, ga_.tensor().view(Shape{N, ED}), down_.value, /*accumulate=*/true);
}

void DecoFfn::experts_forward_sparse(const Tensor& y, const Tensor& x) {
  const int64_t N = x.size(0), H = x.size(1);
  const DType dt = x.dtype();
  const Device dev = x.device();
  pair_token_.ensure(DType::I32, dev, Shape{N * E_});
  pair_flat_.ensure(DType::I32, dev, Shape{N * E_});
  pairs_ = ops::build_routing(offsets_, pair_token_, pair_flat_, zx_);
  const int64_t P = pairs_;
  const Tensor tokens = pair_token_.tensor().slice(0, P);

  // Each pair's input row, grouped by expert; then one GEMM per expert.
  xg_.ensure(dt, dev, Shape{P, H});
  ops::gather_rows(xg_, x, tokens);
  pre_.ensure(dt, dev, Shape{P, D_});
  ops::grouped_gemm({pre_.tensor().matrix(), ops::GroupSplit::Rows}, {xg_.tensor().matrix(), ops::GroupSplit::Rows},
                    false, {act_proj_.value.matrix(), ops::GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets_, D_);
  if (gated_) {
    lin_.ensure(dt, dev, Shape{P, D_});
    ops::grouped_gemm({lin_.tensor().matrix(), ops::GroupSplit::Rows}, {xg_.tensor().matrix(), ops::GroupSplit::Rows},
                      false, {lin_proj_.value.matrix(), ops::GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets_, D_);
  }
  if (ops::expert_act_has_mean(act_kind_)) {
    mean_.ensure(dt, dev, Shape{N, 1});
    ops::linear_forward(mean_, x, w_bar_);  // mean(u) = h . w_bar, no expert computed
  }
  gscale_.ensure(dt, dev, Shape{P, 1});
  ops::gather_rows(gscale_, gx_.view(Shape{N * E_, 1}), pair_flat_);
  activation_forward(tokens, 0);

  // Down-projection per expert, then every pair's row added into its token.
  yg_.ensure(dt, dev, Shape{P, H});
  ops::grouped_gemm({yg_.tensor().matrix(), ops::GroupSplit::Rows}, {ga_.tensor().matrix(), ops::GroupSplit::Rows},
                    false, {down_.value.matrix(), ops::GroupSplit::ExpertCols}, true, 1.0, 0.0, offsets_, D_);
  ops::scatter_add_rows(y, yg_, tokens);
}

void DecoFfn::backward(const Tensor& dx, const Tensor& dy, const Tensor& x, RegType reg,
                       double reg_grad_coef) {
  const int64_t N = x.size(0);
  const DType dt = x.dtype();
  const Device dev = x.device();
  if (shared_)
    shared_->backward(dx, dy, x, false);
  else
    ops::zero(dx);

  dg_.ensure(dt, dev, Shape{N, E_total_});
  if (!ep_) {
    dgx_ = dg_;
    experts_backward(dx, dy, x);
  } else {
    // dy goes where the rows went; dx, the score gradients and kappa come back.
    const int64_t R = exchange_.received(), H = x.size(1);
    dyr_.ensure(dt, dev, Shape{R, H});
    dxr_.ensure(dt, dev, Shape{R, H});
    dgr_.ensure(dt, dev, Shape{R, E_});
    exchange_.dispatch(dyr_, dy);
    ops::zero(dxr_);
    dgx_ = dgr_;
    experts_backward(dxr_, dyr_, xr_);
    exchange_.combine_add(dx, dxr_);
    exchange_.combine_blocks(dg_, dgr_);
    if (ops::expert_act_has_mean(act_kind_)) {
      kappa_tok_.ensure(dt, dev, Shape{N, 1});
      ops::zero(kappa_tok_);
      exchange_.combine_add(kappa_tok_, kappa_.tensor().view(Shape{R, 1}));
      mean_backward(dx, x, kappa_tok_);
    }
  }

  // Router: g = relu(z) * s, z = x W_r^T, plus the regularizer's gradient on r.
  Tensor dr;
  if (reg != RegType::None) {
    dr_.ensure(dt, dev, Shape{N, E_total_});
    ops::zero(dr_);
    if (reg == RegType::Entropy) ops::entropy_reg_backward(dr_, z_, reg_grad_coef);
    if (reg == RegType::L1) ops::l1_reg_backward(dr_, z_, reg_grad_coef);
    dr = dr_;
  }
  dz_.ensure(dt, dev, Shape{N, E_total_});
  ops::relu_route_backward(dz_, scale_.grad, dg_, dr, z_, scale_.value);
  ops::linear_backward_weight(router_.grad, dz_, x);
  ops::linear_backward_input(dx, dz_, router_.value, true);
}

void DecoFfn::activation_backward() {
  const Tensor act = gated_ ? act_.tensor() : actn_.tensor();
  const int64_t rows = act.size(0);
  const DType dt = act.dtype();
  const Device dev = act.device();
  // q_ holds d(ga); ga = act * gscale: d(gscale) = rowdot(q, act), dact = q * gscale
  dgs_.ensure(dt, dev, Shape{rows});
  dact_.ensure(dt, dev, Shape{rows, D_});
  const Tensor q = q_.tensor().view(Shape{rows, D_});
  ops::row_dot(dgs_, q, act);
  ops::scale_rows(dact_, q, gscale_);
  if (gated_) {  // act = actn * lin
    dlin_.ensure(dt, dev, Shape{rows, D_});
    ops::mul(dlin_, dact_, actn_);
    ops::mul(dact_, dact_, lin_.tensor().view(Shape{rows, D_}));
  }
  dc_.ensure(dt, dev, Shape{rows, D_});
  ops::normsilu_backward(dc_, gamma_.grad, dact_, xhat_, rs_, gamma_.value, act_kind_);
}

void DecoFfn::experts_backward_dense(const Tensor& dx, const Tensor& dy, const Tensor& x) {
  const int64_t N = x.size(0), ED = E_ * D_;
  const DType dt = x.dtype();
  const Device dev = x.device();
  const Tensor ga = ga_.tensor().view(Shape{N, ED});
  q_.ensure(dt, dev, Shape{N, ED});
  ops::linear_backward_input(q_, dy, down_.value, false);
  ops::linear_backward_weight(down_.grad, dy, ga);
  activation_backward();
  ops::copy(dgx_, dgs_.tensor().view(Shape{N, E_}));

  const Tensor dc = dc_.tensor().view(Shape{N, ED});
  if (ops::expert_act_has_mean(act_kind_)) {  // c = u - mean(u): du = dc - mean(dc)
    kappa_.ensure(dt, dev, Shape{N});
    ops::row_mean(kappa_, dc);
    if (ep_)  // this rank's share of mean(dc) over all E*D entries; its terms apply where the token lives
      ops::scale(kappa_, static_cast<double>(E_) / static_cast<double>(E_total_));
    else
      ops::sub_row_scalar(dc, dc, kappa_);
  }
  ops::linear_backward_weight(act_proj_.grad, dc, x);
  ops::linear_backward_input(dx, dc, act_proj_.value, true);
  if (gated_) {
    const Tensor dlin = dlin_.tensor().view(Shape{N, ED});
    ops::linear_backward_weight(lin_proj_.grad, dlin, x);
    ops::linear_backward_input(dx, dlin, lin_proj_.value, true);
  }
}

void DecoFfn::experts_backward_sparse(const Tensor& dx, const Tensor& dy, const Tensor& x) {
  const int64_t N = x.size(0), P = pairs_;
  const DType dt = x.dtype();
  const Device dev = x.device();
  const Tensor tokens = pair_token_.tensor().slice(0, P);
  using ops::GroupSplit;
  const ops::Grouped dyg{yg_.tensor().matrix(), GroupSplit::Rows}, ga{ga_.tensor().matrix(), GroupSplit::Rows},
      xg{xg_.tensor().matrix(), GroupSplit::Rows};

  // Through the down-projection: dy of each pair's token, per expert.
  ops::gather_rows(yg_, dy, tokens);
  q_.ensure(dt, dev, Shape{P, D_});
  ops::grouped_gemm({q_.tensor().matrix(), GroupSplit::Rows}, dyg, false,
                    {down_.value.matrix(), GroupSplit::ExpertCols}, false, 1.0, 0.0, offsets_, D_);
  ops::grouped_gemm({down_.grad.matrix(), GroupSplit::ExpertCols}, dyg, true, ga, false, 1.0, 1.0, offsets_, D_);
  activation_backward();
  ops::zero(dgx_);
  ops::scatter_add_rows(dgx_.view(Shape{N * E_, 1}), dgs_.tensor().view(Shape{P, 1}), pair_flat_);

  // Through the up (and gate) projections of the active pairs; yg_ now holds dx by pair.
  const ops::Grouped dc{dc_.tensor().matrix(), GroupSplit::Rows};
  ops::grouped_gemm({act_proj_.grad.matrix(), GroupSplit::ExpertRows}, dc, true, xg, false, 1.0, 1.0, offsets_, D_);
  ops::grouped_gemm({yg_.tensor().matrix(), GroupSplit::Rows}, dc, false,
                    {act_proj_.value.matrix(), GroupSplit::ExpertRows}, false, 1.0, 0.0, offsets_, D_);
  if (gated_) {
    const ops::Grouped dl{dlin_.tensor().matrix(), GroupSplit::Rows};
    ops::grouped_gemm({lin_proj_.grad.matrix(), GroupSplit::ExpertRows}, dl, true, xg, false, 1.0, 1.0, offsets_, D_);
    ops::grouped_gemm({yg_.tensor().matrix(), GroupSplit::Rows}, dl, false,
                      {lin_proj_.value.matrix(), GroupSplit::ExpertRows}, false, 1.0, 1.0, offsets_, D_);
  }
  ops::scatter_add_rows(dx, yg_, tokens);

  // The mean over all E*D entries: du_j = dc_j - kappa for every entry j of
  // the token (zero dc for inactive experts), kappa = sum(dc) / (E*D). Its
  // share on the weights is rank one, -1 (x) sum_t kappa_t x_t, and on the
  // input -E*D * kappa_t * w_bar.
  if (ops::expert_act_has_mean(act_kind_)) {
    row_means_.ensure(dt, dev, Shape{P, 1});
    kappa_.ensure(dt, dev, Shape{N, 1});
    ops::row_mean(row_means_, dc_);
    ops::zero(kappa_);
    ops::scatter_add_rows(kappa_, row_means_, pair_token_);
    ops::scale(kappa_, 1.0 / static_cast<double>(E_total_));  // sum of row means * D / (E*D)
    if (!ep_) mean_backward(dx, x, kappa_);  // with expert parallelism, where the token lives
  }
}

void DecoFfn::mean_backward(const Tensor& dx, const Tensor& x, const Tensor& kappa) {
  // Every row of the full projection gets -sum_t kappa_t x_t: with expert
  // parallelism the tokens of every rank of the group contribute to it.
  const int64_t H = x.size(1);
  kvec_.ensure(x.dtype(), x.device(), Shape{1, H});
  ops::gemm(kvec_.tensor().matrix(), kappa.matrix(), true, x.matrix(), false);
  if (ep_) ep_->all_reduce_sum(kvec_);
  ops::add_to_rows(act_proj_.grad, kvec_, -1.0);
  ops::gemm(dx.matrix(), kappa.matrix(), false, w_bar_.tensor().matrix(), false,
            -static_cast<double>(E_total_ * D_), 1.0);
}

}  // namespace deco
