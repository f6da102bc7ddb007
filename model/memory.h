// The model's activation memory, by lifetime (training.recompute).
//
// Every block (attention, SwiGLU FFN, DECO FFN) splits its buffers three ways:
//  - Saved: what forward leaves for backward and is costly to rebuild (the
//    outputs of GEMMs, the routing, the exchange plan);
//  - Recomputable: what forward leaves for backward but is cheap to rebuild
//    from Saved: normalized inputs, activation-function outputs, the sparse
//    path's gathered input rows (memory-heavy, a few elementwise passes);
//  - Scratch: temporaries of one forward or backward call.
// training.recompute decides who owns what (ModelConfig::recompute):
//
//   mode       per layer                    shared by all layers            before a layer's backward
//   none       layer input, Saved,          Scratch                         nothing
//              Recomputable
//   selective  layer input, Saved           Recomputable, Scratch           Recomputable is rebuilt
//   full       layer input                  Saved, Recomputable, Scratch    the layer's forward runs again
//
// The last layer runs its backward right after its forward, so its shared
// state is still intact and is never rebuilt. Rebuilding runs the same ops
// on the same inputs, so every mode gives bit-identical losses and
// gradients (tests/unit/test_recompute.cpp); they differ in memory and in
// the extra forward work (full: about one more forward pass, ~1/3 of a
// step's FLOPs; selective: elementwise passes only).
#pragma once

#include "model/attention.h"
#include "model/deco_ffn.h"
#include "model/swiglu_ffn.h"

namespace deco {

// A decoder layer's own buffers (the blocks' structs hold theirs).
struct LayerSaved {
  Buffer rstd1, rstd2;   // RMSNorm statistics [N]
  Buffer residual_mid;   // the stream after the attention residual add [N, H]
  Attention::Saved attention;
  SwigluFfn::Saved dense_ffn;  // dense layers
  DecoFfn::Saved deco;         // DECO layers
};

struct LayerRecomputable {
  Buffer normed1, normed2;  // RMSNorm outputs, the attention's and the FFN's inputs [N, H]
  SwigluFfn::Recomputable dense_ffn;
  DecoFfn::Recomputable deco;
};

struct LayerScratch {
  Attention::Scratch attention;
  SwigluFfn::Scratch dense_ffn;
  DecoFfn::Scratch deco;
};

}  // namespace deco
