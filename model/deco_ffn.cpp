#include "model/deco_ffn.h"

#include "core/profile.h"

#include <algorithm>
#include <numeric>

namespace deco {
namespace {

Param optional_param(const ParamStore& values, const ParamStore& grads, const std::string& name) {
  return values.layout().find(name) ? bind_param(values, grads, name) : Param{};
}

// Per-expert counts (int64, any device) on the host: a synchronizing copy.
std::vector<int64_t> host_counts(const Tensor& counts) {
  std::vector<int64_t> out(static_cast<size_t>(counts.numel()), 0);
  if (!out.empty()) device_copy(Device::CPU, out.data(), counts.device(), counts.raw(), out.size() * sizeof(int64_t));
  return out;
}

int64_t total(const std::vector<int64_t>& counts) { return std::accumulate(counts.begin(), counts.end(), int64_t{0}); }

// Runs f when the scope ends, normally or by an exception.
template <typename F> struct AtScopeExit {
  F f;
  ~AtScopeExit() { f(); }
};
template <typename F> AtScopeExit(F) -> AtScopeExit<F>;

}  // namespace

DecoFfn::DecoFfn(const ModelConfig& c, const ParamStore& values, const ParamStore& grads, int64_t layer,
                 Communicator* expert_parallel, const ParamStore* master)
    : E_(values.layout().local_experts()),
      E_total_(c.num_experts),
      D_(c.moe_ffn_hidden_size),
      ep_(expert_parallel != nullptr && expert_parallel->size() > 1 ? expert_parallel : nullptr),
      ep_first_(values.layout().ep_rank() * values.layout().local_experts()),
      act_kind_(c.expert_act),
      gated_(c.expert_gated),
      compute_(c.expert_compute),
      overlap_shared_(c.moe_shared_expert_overlap),
      eps_(c.norm_epsilon),
      router_(bind_param(master ? *master : values, grads, layer_param(layer, "mlp.moe_router.weight"))),
      scale_(bind_param(master ? *master : values, grads, layer_param(layer, "mlp.router_norm.weight"))),
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
  act_proj_master_ = master ? master->get(layer_param(layer, c.expert_gated ? "mlp.expert_gate_proj.weight"
                                                                            : "mlp.expert_up_proj.weight"))
                            : w;
  w_bar_.ensure(router_.value.dtype(), w.device(), Shape{1, w.size(1)});
  if (w.dtype() != router_.value.dtype()) w_bar_compute_.ensure(w.dtype(), w.device(), Shape{1, w.size(1)});
  router_stats_.ensure(DType::F64, w.device(), Shape{3});
  if (shared_ && overlap_shared_ && w.device() == Device::CUDA) {
    // The side stream's GEMM workspace now, so the set-up memory report counts it.
    CudaStreamScope on_side(thread_side_stream().stream());
    ops::reserve_gemm_workspace(Device::CUDA);
  }
  DECO_ASSERT((ep_ ? ep_->size() : 1) == values.layout().ep_size(),
              "the parameter layout's expert-parallel size differs from the group's");
}

DecoFfn::~DecoFfn() { join_shared_quietly(); }

void DecoFfn::join_shared_quietly() noexcept {
  if (side_ == nullptr) return;
  SideStream* side = side_;
  side_ = nullptr;
  try {
    side->join();
  } catch (...) {  // an error of earlier GPU work: whoever threw is reporting one already
  }
}

void DecoFfn::use_memory(Saved* saved, Recomputable* recomputable, Scratch* scratch) {
  saved_ = saved;
  recomp_ = recomputable;
  scratch_ = scratch;
  if (shared_) shared_->use_memory(&saved->shared, &recomputable->shared, &scratch->shared);
}

void DecoFfn::refresh_derived() {
  ops::col_mean(w_bar_, act_proj_master_);
  if (ep_) {  // the mean over all E*D rows: the mean of the ranks' equal-sized shares
    ep_->all_reduce_sum(w_bar_);
    ops::scale(w_bar_, 1.0 / static_cast<double>(ep_->size()));
  }
  if (w_bar_compute_.numel()) ops::copy(w_bar_compute_, w_bar_);
}

template <typename F> void DecoFfn::start_shared(const Tensor& out, F&& run) {
  if (!overlap_shared_ || out.device() != Device::CUDA) {
    run();
    return;
  }
  SideStream& side = thread_side_stream();
  side.fork();
  side_ = &side;
  CudaStreamScope on_side(side.stream());
  run();
}

void DecoFfn::join_shared() {
  if (side_ == nullptr) return;
  side_->join();
  side_ = nullptr;
}

DecoLayerStats DecoFfn::forward(const Tensor& y, const Tensor& x, RegType reg, bool statistics) {
  if (saved_ == nullptr) {
    own_memory_ = std::make_unique<OwnMemory>();
    use_memory(&own_memory_->saved, &own_memory_->recomputable, &own_memory_->scratch);
  }
  const int64_t N = x.size(0);
  const DType dt = x.dtype();
  const Device dev = x.device();
  Saved& s = *saved_;
  Scratch& w = *scratch_;
  // The shared expert first: overlapped, it runs beside everything below.
  // (An exception before the join still joins, so the next layer can fork.)
  AtScopeExit joined{[this] { join_shared_quietly(); }};
  if (shared_)
    start_shared(y, [&] {
      profile::Region region("deco_ffn.shared_expert.forward");  // on the side stream when overlapped
      shared_->forward(y, x, false);
    });
  else
    ops::zero(y);

  const DType rt = router_.value.dtype();  // float32 under mixed precision, the activations' dtype otherwise
  s.z.ensure(rt, dev, Shape{N, E_total_});
  w.g.ensure(rt, dev, Shape{N, E_total_});
  w.counts.ensure(DType::I64, dev, Shape{E_total_});
  ops::zero(w.counts);

  // Router in full precision (the spec keeps it fp32 even under bf16 training).
  ops::linear_forward(s.z, router_input(x), router_.value);
  ops::relu_route_forward(w.g, w.counts, s.z, scale_.value);

  DecoLayerStats stats;
  // The counts come to the host for the statistics, and for auto's choice
  // (also when recomputing: the choice must repeat the forward's), which
  // needs them at once; the statistics wait until the end of the forward.
  const bool choose_now = compute_ == ExpertCompute::Auto && !ep_;
  std::vector<int64_t> counts;
  if (statistics) {
    ops::router_statistics(router_stats_, s.z);
    staged_.fetch({&w.counts.tensor(), &router_stats_.tensor()});
  } else if (choose_now) {
    staged_.fetch({&w.counts.tensor()});
  }
  if (choose_now) {
    staged_.wait();
    counts.assign(staged_.data<int64_t>(0), staged_.data<int64_t>(0) + E_total_);
  }
  // Fills the statistics from the staged copy (the values of this forward's router).
  auto finish = [&]() {
    if (!statistics) return;
    staged_.wait();
    const int64_t* c = staged_.data<int64_t>(0);
    const double* r = staged_.data<double>(1);
    stats.tokens = N;
    stats.expert_tokens.assign(c, c + E_total_);
    stats.active_pairs = total(stats.expert_tokens);
    stats.entropy_sum = r[0];
    if (reg == RegType::Entropy) stats.reg_sum = r[0];
    if (reg == RegType::L1) stats.reg_sum = r[1];
    stats.idle_tokens = static_cast<int64_t>(r[2]);
  };

  if (!ep_) {
    s.compute = choose_path(total(counts), N * E_total_);
    stats.compute = s.compute;
    zx_ = s.z;
    gx_ = w.g;
    experts_forward(y, x);
    DECO_ASSERT(side_ == nullptr, "the expert paths join the shared expert before adding into y");
    finish();
    return stats;
  }
  // Expert parallel: the rows of tokens active on this rank's experts come
  // here (with their router values for these experts), the results go back.
  s.exchange.plan(s.z, *ep_);
  if (statistics) stats.sent_per_rank = s.exchange.sent_per_peer();
  const int64_t R = s.exchange.received(), H = x.size(1);
  s.xr.ensure(dt, dev, Shape{R, H});
  w.zr.ensure(rt, dev, Shape{R, E_});
  w.gr.ensure(rt, dev, Shape{R, E_});
  w.yr.ensure(dt, dev, Shape{R, H});
  s.exchange.dispatch(s.xr, x);
  s.exchange.dispatch_blocks(w.zr, s.z);
  // The source ranks counted these tokens for the statistics; auto decides
  // by the received rows' counts on this rank's experts, so only auto counts.
  const bool count = compute_ == ExpertCompute::Auto;
  if (count) {
    w.counts.ensure(DType::I64, dev, Shape{E_});
    ops::zero(w.counts);
  }
  ops::relu_route_forward(w.gr, count ? w.counts.tensor() : Tensor(), w.zr,
                          scale_.value.slice(ep_first_, ep_first_ + E_));
  s.compute = count ? choose_path(total(host_counts(w.counts)), R * E_) : compute_;
  stats.compute = s.compute;
  zx_ = w.zr;
  gx_ = w.gr;
  ops::zero(w.yr);
  experts_forward(w.yr, s.xr);
  join_shared();
  s.exchange.combine_add(y, w.yr);
  finish();
  return stats;
}

void DecoFfn::recompute(const Tensor& /*x*/) {
  if (shared_) shared_->recompute();
  activation_forward();  // the sparse path reads input rows by pair index: nothing gathered to rebuild
}

const Tensor& DecoFfn::router_input(const Tensor& x) {
  if (x.dtype() == router_.value.dtype()) return x;
  Buffer& wide = scratch_->x_router;
  wide.ensure(router_.value.dtype(), x.device(), x.shape());
  ops::copy(wide, x);
  return wide.tensor();
}

ExpertCompute DecoFfn::choose_path(int64_t active, int64_t slots) const {
  if (compute_ != ExpertCompute::Auto) return compute_;
  const double ratio = slots > 0 ? static_cast<double>(active) / static_cast<double>(slots) : 0.0;
  return ratio <= crossover_ ? ExpertCompute::Sparse : ExpertCompute::Dense;
}

void DecoFfn::experts_forward(const Tensor& y, const Tensor& x) {
  profile::Region region("deco_ffn.routed_experts.forward");  // with the routing and its host sync
  if (saved_->compute == ExpertCompute::Dense)
    experts_forward_dense(y, x);
  else
    experts_forward_sparse(y, x);
}

void DecoFfn::experts_backward(const Tensor& dx, const Tensor& dy, const Tensor& x) {
  profile::Region region("deco_ffn.routed_experts.backward");
  if (saved_->compute == ExpertCompute::Dense)
    experts_backward_dense(dx, dy, x);
  else
    experts_backward_sparse(dx, dy, x);
}

void DecoFfn::activation_forward() {
  const Saved& s = *saved_;
  Recomputable& r = *recomp_;
  const int64_t rows = s.pre.numel() / D_;  // N*E blocks (dense) or P pairs (sparse)
  const Tensor pre = s.pre.tensor().view(Shape{rows, D_});
  const DType dt = pre.dtype();
  const Device dev = pre.device();
  r.xhat.ensure(dt, dev, Shape{rows, D_});
  r.rs.ensure(accumulate_dtype(dt), dev, Shape{rows});
  r.actn.ensure(dt, dev, Shape{rows, D_});
  r.ga.ensure(dt, dev, Shape{rows, D_});
  // Block b belongs to the pair's token (sparse) or to token b / E (the dense [N, E*D] layout).
  const bool sparse = s.compute == ExpertCompute::Sparse;
  const Tensor block_token = sparse ? s.pair_token.tensor().slice(0, s.pairs) : Tensor();
  // Block b of the activation is scaled by its expert's score g (0 when inactive).
  if (!gated_) {  // one fused op (one kernel on the GPU)
    ops::normsilu_scaled_forward(r.ga, r.actn, r.xhat, r.rs, pre, s.mean.tensor(), block_token, sparse ? 0 : E_,
                                 gamma_.value, s.gscale, act_kind_, eps_);
    return;
  }
  ops::normsilu_forward(r.actn, r.xhat, r.rs, pre, s.mean.tensor(), block_token, sparse ? 0 : E_,
                        gamma_.value, act_kind_, eps_);
  r.act.ensure(dt, dev, Shape{rows, D_});
  ops::mul(r.act, r.actn, s.lin.tensor().view(Shape{rows, D_}));
  ops::scale_rows(r.ga, r.act, s.gscale);
}

void DecoFfn::experts_forward_dense(const Tensor& y, const Tensor& x) {
  const int64_t N = x.size(0), ED = E_ * D_;
  const DType dt = x.dtype();
  const Device dev = x.device();
  Saved& s = *saved_;
  s.pre.ensure(dt, dev, Shape{N, ED});
  ops::linear_forward(s.pre, x, act_proj_.value);
  if (gated_) {
    s.lin.ensure(dt, dev, Shape{N, ED});
    ops::linear_forward(s.lin, x, lin_proj_.value);
  }
  if (ops::expert_act_has_mean(act_kind_)) {
    if (ep_) {  // this rank's rows are not all E*D: the mean comes from w_bar
      s.mean.ensure(dt, dev, Shape{N, 1});
      ops::linear_forward(s.mean, x, w_bar());
    } else {
      s.mean.ensure(dt, dev, Shape{N});
      ops::row_mean(s.mean, s.pre);
    }
  }
  s.gscale.ensure(gx_.dtype(), dev, Shape{N * E_});
  ops::copy(s.gscale, gx_.view(Shape{N * E_}));
  activation_forward();
  if (!ep_) join_shared();  // y holds the shared expert's output, which the routed one is added to
  ops::linear_forward(y, recomp_->ga.tensor().view(Shape{N, ED}), down_.value, /*accumulate=*/true);
}

void DecoFfn::experts_forward_sparse(const Tensor& y, const Tensor& x) {
  const int64_t N = x.size(0);
  const DType dt = x.dtype();
  const Device dev = x.device();
  Saved& s = *saved_;
  s.offsets.ensure(DType::I32, Device::CPU, Shape{E_ + 1});
  s.pair_token.ensure(DType::I32, dev, Shape{N * E_});
  s.pair_flat.ensure(DType::I32, dev, Shape{N * E_});
  s.pairs = ops::build_routing(s.offsets, s.pair_token, s.pair_flat, zx_);
  const int64_t P = s.pairs;
  const Tensor tokens = s.pair_token.tensor().slice(0, P);

  // Each expert's GEMM over its pairs' input rows, read by token index.
  using ops::GroupSplit;
  s.pre.ensure(dt, dev, Shape{P, D_});
  ops::expert_gather_gemm(s.pre, x, tokens, act_proj_.value, GroupSplit::ExpertRows, s.offsets, D_);
  if (gated_) {
    s.lin.ensure(dt, dev, Shape{P, D_});
    ops::expert_gather_gemm(s.lin, x, tokens, lin_proj_.value, GroupSplit::ExpertRows, s.offsets, D_);
  }
  if (ops::expert_act_has_mean(act_kind_)) {
    s.mean.ensure(dt, dev, Shape{N, 1});
    ops::linear_forward(s.mean, x, w_bar());  // mean(u) = h . w_bar, no expert computed
  }
  s.gscale.ensure(gx_.dtype(), dev, Shape{P, 1});
  ops::gather_rows(s.gscale, gx_.view(Shape{N * E_, 1}), s.pair_flat);
  activation_forward();

  // Down-projection per expert, every pair's row added into its token.
  if (!ep_) join_shared();  // y holds the shared expert's output (with ep_, y is the received rows' own buffer)
  ops::expert_scatter_gemm(y, recomp_->ga, tokens, down_.value, GroupSplit::ExpertCols, s.offsets, D_);
}

void DecoFfn::backward(const Tensor& dx, const Tensor& dy, const Tensor& x, RegType reg,
                       double reg_grad_coef) {
  const int64_t N = x.size(0);
  const DType dt = x.dtype();
  const Device dev = x.device();
  Saved& s = *saved_;
  Scratch& w = *scratch_;
  AtScopeExit joined{[this] { join_shared_quietly(); }};  // as in forward
  if (shared_)
    start_shared(dx, [&] {
      profile::Region region("deco_ffn.shared_expert.backward");
      shared_->backward(dx, dy, x, false);
    });
  else
    ops::zero(dx);

  const DType rt = router_.value.dtype();
  w.dg.ensure(rt, dev, Shape{N, E_total_});
  if (!ep_) {
    dgx_ = w.dg;
    experts_backward(dx, dy, x);
  } else {
    // dy goes where the rows went; dx, the score gradients and kappa come back.
    const int64_t R = s.exchange.received(), H = x.size(1);
    w.dyr.ensure(dt, dev, Shape{R, H});
    w.dxr.ensure(dt, dev, Shape{R, H});
    w.dgr.ensure(rt, dev, Shape{R, E_});
    s.exchange.dispatch(w.dyr, dy);
    ops::zero(w.dxr);
    dgx_ = w.dgr;
    experts_backward(w.dxr, w.dyr, s.xr);
    join_shared();
    s.exchange.combine_add(dx, w.dxr);
    s.exchange.combine_blocks(w.dg, w.dgr);
    if (ops::expert_act_has_mean(act_kind_)) {
      w.kappa_tok.ensure(dt, dev, Shape{N, 1});
      ops::zero(w.kappa_tok);
      s.exchange.combine_add(w.kappa_tok, w.kappa.tensor().view(Shape{R, 1}));
      mean_backward(dx, x, w.kappa_tok);
    }
  }

  // Router: g = relu(z) * s, z = x W_r^T, plus the regularizer's gradient on r.
  Tensor dr;
  if (reg != RegType::None) {
    w.dr.ensure(rt, dev, Shape{N, E_total_});
    ops::zero(w.dr);
    if (reg == RegType::Entropy) ops::entropy_reg_backward(w.dr, s.z, reg_grad_coef);
    if (reg == RegType::L1) ops::l1_reg_backward(w.dr, s.z, reg_grad_coef);
    dr = w.dr;
  }
  w.dz.ensure(rt, dev, Shape{N, E_total_});
  ops::relu_route_backward(w.dz, scale_.grad, w.dg, dr, s.z, scale_.value);
  ops::linear_backward_weight(router_.grad, w.dz, router_input(x));
  DECO_ASSERT(side_ == nullptr, "the expert paths join the shared expert before adding into dx");
  if (dt == rt) {
    ops::linear_backward_input(dx, w.dz, router_.value, true);
  } else {  // the fp32 router's input gradient, added into the bf16 one
    w.dx_router.ensure(rt, dev, x.shape());
    ops::linear_backward_input(w.dx_router, w.dz, router_.value, false);
    ops::axpy(dx, w.dx_router);
  }
}

void DecoFfn::activation_backward() {
  const Saved& s = *saved_;
  const Recomputable& r = *recomp_;
  Scratch& w = *scratch_;
  const Tensor act = gated_ ? r.act.tensor() : r.actn.tensor();
  const int64_t rows = act.size(0);
  const DType dt = act.dtype();
  const Device dev = act.device();
  // q holds d(ga); ga = act * gscale: d(gscale) = rowdot(q, act), dact = q * gscale
  w.dgs.ensure(accumulate_dtype(dt), dev, Shape{rows});
  w.dc.ensure(dt, dev, Shape{rows, D_});
  const Tensor q = w.q.tensor().view(Shape{rows, D_});
  if (!gated_) {  // one fused op (one kernel on the GPU)
    ops::normsilu_scaled_backward(w.dc, w.dgs, gamma_.grad, q, act, r.xhat, r.rs, gamma_.value, s.gscale, act_kind_);
    return;
  }
  w.dact.ensure(dt, dev, Shape{rows, D_});
  ops::row_dot(w.dgs, q, act);
  ops::scale_rows(w.dact, q, s.gscale);
  w.dlin.ensure(dt, dev, Shape{rows, D_});  // act = actn * lin
  ops::mul(w.dlin, w.dact, r.actn);
  ops::mul(w.dact, w.dact, s.lin.tensor().view(Shape{rows, D_}));
  ops::normsilu_backward(w.dc, gamma_.grad, w.dact, r.xhat, r.rs, gamma_.value, act_kind_);
}

void DecoFfn::experts_backward_dense(const Tensor& dx, const Tensor& dy, const Tensor& x) {
  const int64_t N = x.size(0), ED = E_ * D_;
  const DType dt = x.dtype();
  const Device dev = x.device();
  Scratch& w = *scratch_;
  const Tensor ga = recomp_->ga.tensor().view(Shape{N, ED});
  w.q.ensure(dt, dev, Shape{N, ED});
  ops::linear_backward_input(w.q, dy, down_.value, false);
  ops::linear_backward_weight(down_.grad, dy, ga);
  activation_backward();
  ops::copy(dgx_, w.dgs.tensor().view(Shape{N, E_}));

  const Tensor dc = w.dc.tensor().view(Shape{N, ED});
  if (ops::expert_act_has_mean(act_kind_)) {  // c = u - mean(u): du = dc - mean(dc)
    w.kappa.ensure(dt, dev, Shape{N});
    ops::row_mean(w.kappa, dc);
    if (ep_)  // this rank's share of mean(dc) over all E*D entries; its terms apply where the token lives
      ops::scale(w.kappa, static_cast<double>(E_) / static_cast<double>(E_total_));
    else
      ops::sub_row_scalar(dc, dc, w.kappa);
  }
  ops::linear_backward_weight(act_proj_.grad, dc, x);
  const Tensor dlin = gated_ ? w.dlin.tensor().view(Shape{N, ED}) : Tensor();
  if (gated_) ops::linear_backward_weight(lin_proj_.grad, dlin, x);
  if (!ep_) join_shared();  // dx holds the shared expert's input gradient
  ops::linear_backward_input(dx, dc, act_proj_.value, true);
  if (gated_) ops::linear_backward_input(dx, dlin, lin_proj_.value, true);
}

void DecoFfn::experts_backward_sparse(const Tensor& dx, const Tensor& dy, const Tensor& x) {
  const Saved& s = *saved_;
  Scratch& w = *scratch_;
  const int64_t N = x.size(0), P = s.pairs;
  const DType dt = x.dtype();
  const Device dev = x.device();
  const Tensor tokens = s.pair_token.tensor().slice(0, P);
  using ops::GroupSplit;

  // Through the down-projection: dy of each pair's token, per expert.
  w.q.ensure(dt, dev, Shape{P, D_});
  ops::expert_gather_gemm(w.q, dy, tokens, down_.value, GroupSplit::ExpertCols, s.offsets, D_);
  ops::expert_weight_grad(down_.grad, GroupSplit::ExpertCols, recomp_->ga, dy, tokens, s.offsets, D_);
  activation_backward();
  ops::zero(dgx_);
  ops::scatter_add_rows(dgx_.view(Shape{N * E_, 1}), w.dgs.tensor().view(Shape{P, 1}), s.pair_flat);

  // Through the up (and gate) projections of the active pairs, into dx by token.
  ops::expert_weight_grad(act_proj_.grad, GroupSplit::ExpertRows, w.dc, x, tokens, s.offsets, D_);
  if (gated_) ops::expert_weight_grad(lin_proj_.grad, GroupSplit::ExpertRows, w.dlin, x, tokens, s.offsets, D_);
  if (!ep_) join_shared();  // dx holds the shared expert's input gradient
  ops::expert_scatter_gemm(dx, w.dc, tokens, act_proj_.value, GroupSplit::ExpertRows, s.offsets, D_);
  if (gated_) ops::expert_scatter_gemm(dx, w.dlin, tokens, lin_proj_.value, GroupSplit::ExpertRows, s.offsets, D_);

  // The mean over all E*D entries: du_j = dc_j - kappa for every entry j of
  // the token (zero dc for inactive experts), kappa = sum(dc) / (E*D). Its
  // share on the weights is rank one, -1 (x) sum_t kappa_t x_t, and on the
  // input -E*D * kappa_t * w_bar.
  if (ops::expert_act_has_mean(act_kind_)) {
    w.row_means.ensure(dt, dev, Shape{P, 1});
    w.kappa.ensure(dt, dev, Shape{N, 1});
    ops::row_mean(w.row_means, w.dc);
    ops::zero(w.kappa);
    ops::scatter_add_rows(w.kappa, w.row_means, tokens);
    ops::scale(w.kappa, 1.0 / static_cast<double>(E_total_));  // sum of row means * D / (E*D)
    if (!ep_) mean_backward(dx, x, w.kappa);  // with expert parallelism, where the token lives
  }
}

void DecoFfn::mean_backward(const Tensor& dx, const Tensor& x, const Tensor& kappa) {
  // Every row of the full projection gets -sum_t kappa_t x_t: with expert
  // parallelism the tokens of every rank of the group contribute to it.
  const int64_t H = x.size(1);
  Buffer& kvec = scratch_->kvec;
  kvec.ensure(accumulate_dtype(x.dtype()), x.device(), Shape{1, H});  // a gradient, and all-reduced
  ops::gemm(kvec.tensor().matrix(), kappa.matrix(), true, x.matrix(), false);
  if (ep_) ep_->all_reduce_sum(kvec);
  ops::add_to_rows(act_proj_.grad, kvec, -1.0);
  ops::gemm(dx.matrix(), kappa.matrix(), false, w_bar().matrix(), false,
            -static_cast<double>(E_total_ * D_), 1.0);
}

}  // namespace deco
