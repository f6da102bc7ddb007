// The DECO layer (deco-model.md section 2): a ReLU router with learnable
// expert scales, E routed experts of width D with the NormSiLU activation,
// and an always-on shared SwiGLU expert.
//
// Two exact compute paths (ModelConfig::expert_compute):
//  - dense: every expert is computed and the zero scores of inactive ones
//    mask them; the activations live in [N, E*D] matrices.
//  - sparse: only active (token, expert) pairs are computed: pairs are
//    grouped by expert, each expert runs GEMMs over its own tokens' rows
//    (read by index), and the results are summed into their tokens
//    (ops::expert_gather_gemm, expert_scatter_gemm, expert_weight_grad). NormSiLU's mean over all E*D entries comes
//    from the precomputed mean row w_bar of the up-projection (mean(u) =
//    h . w_bar); in the backward pass the mean gives every row of that
//    projection the same rank-one gradient, added once at the end.
//
// With expert parallelism (an expert-parallel group of M > 1 ranks) this
// rank holds E/M of the routed experts. The router, its scales and the
// shared expert are replicated; each token is sent only to the ranks that
// own one of its active experts (ExpertExchange), their experts run on it
// with either path, and the weighted results come back. The mean row w_bar
// of the full projection is summed over the group; the backward pass
// returns each token's share of the mean's gradient (kappa) with its input
// gradient, so the rank-one terms are applied where the token lives.
//
// Where a GPU forward waits for the host (nothing else in the layer does):
//  - sparse path: build_routing's copy of the expert offsets (E + 1 ints),
//    which the host needs to size the grouped GEMMs: one sync per layer and
//    micro-batch, after the router, with the GPU idle from then until the
//    host has launched the gather (a few microseconds of launch latency).
//  - statistics (every training forward): counts, entropy, L1 and idle
//    rows in one staged copy, read at the end of the forward; on the sparse
//    path and under expert parallelism an earlier sync has already landed
//    it, on the dense path the host waits there once the layer is queued.
//  - auto without expert parallelism: the counts at once, to pick the path.
//  - expert parallelism: the exchange's counts (ExpertExchange::plan).
// The backward pass never waits.
#pragma once

#include <memory>
#include <vector>

#include "core/stream.h"
#include "model/expert_exchange.h"
#include "model/params.h"
#include "model/swiglu_ffn.h"
#include "parallel/comm.h"

namespace deco {

struct DecoLayerStats {
  int64_t tokens = 0;
  int64_t active_pairs = 0;                 // (token, expert) pairs with z > 0
  std::vector<int64_t> expert_tokens;       // [E] active tokens per expert
  double reg_sum = 0.0;                     // regularizer summed over tokens, before any coefficient
  double entropy_sum = 0.0;                 // routing entropy summed over tokens (the entropy regularizer's value)
  ExpertCompute compute = ExpertCompute::Sparse;  // the path the routed experts took (auto decides per call)
  int64_t idle_tokens = 0;                  // tokens with no active routed expert
  // Expert parallelism: token rows this rank sent to each expert-parallel
  // rank (itself included; a token counts once per rank owning one of its
  // active experts). Empty without expert parallelism.
  std::vector<int64_t> sent_per_rank;
};

class DecoFfn {
 public:
  // Activation memory (model/memory.h).
  struct Saved {  // forward -> backward
    ExpertCompute compute = ExpertCompute::Sparse;  // the path this forward took: Dense or Sparse
    Buffer z;                  // router pre-activation [N, E] (all experts of the layer)
    Buffer pre, lin, mean;     // projections [rows, D] (rows = N*E blocks dense, P pairs sparse), token means
    Buffer gscale;             // each block's expert score [rows]
    // Sparse routing: pairs grouped by expert (ops::build_routing); offsets in host memory.
    Buffer offsets, pair_token, pair_flat;
    int64_t pairs = 0;
    // Expert parallelism: the exchange's plan and the rows received [R, H].
    ExpertExchange exchange;
    Buffer xr;
    SwigluFfn::Saved shared;
  };
  struct Recomputable {  // rebuilt from Saved by recompute()
    Buffer xhat, rs, actn, act, ga;  // NormSiLU state and output, gated product, scaled by the scores
    SwigluFfn::Recomputable shared;
  };
  struct Scratch {  // temporaries of one forward or backward call
    Buffer x_router, dx_router;  // mixed precision: the input widened for the fp32 router, its gradient [N, H]
    Buffer g, counts;            // router scores [N, E], active tokens per expert
    Buffer zr, gr, yr;           // expert parallelism: router values and outputs of the received rows
    Buffer q, dgs, dact, dc, dlin, kappa, row_means, dg, dr, dz, kvec;
    Buffer dyr, dxr, dgr, kappa_tok;
    SwigluFfn::Scratch shared;
  };

  // `expert_parallel` is the group the routed experts are split over (null,
  // or a group of one, for all experts on this rank); `values` holds this
  // rank's experts (ParamLayout with the group's size and rank). Under mixed
  // precision `values` is the bf16 copy and `master` the float32 weights,
  // which the router and its scales use (deco-model.md: the router in fp32)
  // along with NormSiLU's mean row; null: `values` for everything.
  DecoFfn(const ModelConfig& config, const ParamStore& values, const ParamStore& grads, int64_t layer,
          Communicator* expert_parallel = nullptr, const ParamStore* master = nullptr);
  ~DecoFfn();
  // Where this layer keeps its activations (set once, before the first
  // forward). A DecoFfn used on its own (tests) owns one set instead.
  void use_memory(Saved* saved, Recomputable* recomputable, Scratch* scratch);

  // Recomputes state derived from the weights (the mean row w_bar). Call
  // after every change to the weights (optimizer step, load).
  void refresh_derived();
  // model.expert_compute auto: the sparse path runs when the activation
  // ratio of the rows the experts compute is at most this, the dense path
  // above it. Until set, auto takes the sparse path.
  void set_expert_crossover(double ratio) { crossover_ = ratio; }

  // y[N, H] (=) DECO FFN of x[N, H]; `reg` picks which regularizer value to
  // report. Without `statistics` (a recomputation) the returned stats are
  // empty and the host synchronizations they need are skipped.
  DecoLayerStats forward(const Tensor& y, const Tensor& x, RegType reg, bool statistics = true);
  // Rebuilds Recomputable from Saved for the forward input x, as forward left it.
  void recompute(const Tensor& x);
  // dx[N, H] (=) from dy; accumulates parameter gradients. reg_grad_coef is
  // d(loss)/d(reg_sum): lambda * loss scale / (num_layers * N).
  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, RegType reg, double reg_grad_coef);

 private:
  // x as the router takes it: x itself, or widened to float32 into scratch (mixed precision).
  const Tensor& router_input(const Tensor& x);
  // The path for rows whose router counted `active` (token, expert) pairs of `slots`.
  ExpertCompute choose_path(int64_t active, int64_t slots) const;
  // The routed experts this rank holds, on rows x (this rank's tokens, or
  // the rows other ranks sent) with router values zx_/gx_ [rows, E_];
  // outputs are added into y / dx, score gradients written to dgx_.
  void experts_forward(const Tensor& y, const Tensor& x);
  void experts_backward(const Tensor& dx, const Tensor& dy, const Tensor& x);
  // The mean's rank-one gradient terms for this rank's tokens x, from
  // kappa [N, 1] (sum over all E*D entries of dc / (E*D)).
  void mean_backward(const Tensor& dx, const Tensor& x, const Tensor& kappa);
  void experts_forward_dense(const Tensor& y, const Tensor& x);
  void experts_forward_sparse(const Tensor& y, const Tensor& x);
  void experts_backward_dense(const Tensor& dx, const Tensor& dy, const Tensor& x);
  void experts_backward_sparse(const Tensor& dx, const Tensor& dy, const Tensor& x);
  // NormSiLU (and the gate product) from pre/lin/mean/gscale into Recomputable, shared by both paths.
  void activation_forward();
  // The shared expert's forward (y =) or backward (dx =, its weights'
  // gradients +=). With moe_shared_expert_overlap on a GPU it is queued on
  // the thread's side stream and runs beside what follows, which must not
  // touch y / dx until join_shared(): the routed part adds into them after
  // it, so every sum is formed in the same order as without overlap.
  template <typename F> void start_shared(const Tensor& out, F&& run);
  // The current stream waits for the shared expert (nothing when it ran in line).
  void join_shared();
  // join_shared for scope exits and the destructor: errors are swallowed
  // (an exception is already on its way), the fork is closed either way.
  void join_shared_quietly() noexcept;
  // From q (d of the scaled activation) to dc (and dlin), shared by both paths.
  void activation_backward();

  int64_t E_;        // routed experts on this rank
  int64_t E_total_;  // routed experts in the layer
  int64_t D_;
  Communicator* ep_;  // null without expert parallelism
  int64_t ep_first_;  // index of this rank's first expert
  ops::ExpertAct act_kind_;
  bool gated_;
  ExpertCompute compute_;  // as configured (auto included)
  bool overlap_shared_;    // model.moe_shared_expert_overlap
  SideStream* side_ = nullptr;  // while the shared expert runs beside: the stream it runs on
  double crossover_ = 1.0;
  double eps_;

  Param router_, scale_, act_proj_, lin_proj_, down_, gamma_;  // act_proj_ feeds NormSiLU:
  // the up-projection, or the gate projection in the gated variant (lin_proj_ is then the up one)
  std::unique_ptr<SwigluFfn> shared_;  // absent when moe_shared_expert_intermediate_size is 0
  Tensor act_proj_master_;  // act_proj_'s float32 master values (mixed precision), else act_proj_.value
  Buffer w_bar_;          // [1, H] mean row of act_proj_, in the router's dtype (summed over expert-parallel ranks)
  Buffer w_bar_compute_;  // mixed precision: w_bar_ rounded to the activations' dtype for the mean GEMMs
  // The forward's statistics: ops::router_statistics into router_stats_ on
  // the layer's device, then counts and those three values to the host in
  // one staged copy, read at the end of the forward, where a GPU has been
  // synchronized already by the sparse path's routing or the expert-parallel
  // exchange (the dense path waits there, its expert GEMMs queued).
  Buffer router_stats_;   // float64 [3]: entropy sum, L1 sum, idle rows
  HostStaging staged_;
  const Tensor& w_bar() const { return w_bar_compute_.numel() ? w_bar_compute_.tensor() : w_bar_.tensor(); }

  Saved* saved_ = nullptr;
  Recomputable* recomp_ = nullptr;
  Scratch* scratch_ = nullptr;
  struct OwnMemory {
    Saved saved;
    Recomputable recomputable;
    Scratch scratch;
  };
  std::unique_ptr<OwnMemory> own_memory_;  // without use_memory
  Tensor zx_, gx_, dgx_;  // router values of the rows the experts run on, and their gradient (views)
};

}  // namespace deco
