// The CPU reference for bfloat16 tensors (mixed-precision training): an op
// handed bf16 tensors runs its float32 code on their values widened to
// float32 and rounds each bf16 output once, at the end, which is what a GPU
// kernel with float registers and bf16 storage computes, up to the order
// of its sums. float32 and float64 tensors pass through untouched. An op
// starts with
//   if (cpu::any_bf16({&out, &x})) { cpu::Widen w; op(w.out(out), w.in(x)); return; }
#pragma once

#include <initializer_list>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace deco::cpu {

bool any_bf16(std::initializer_list<const Tensor*> tensors);
bool any_bf16(std::initializer_list<const Matrix*> matrices);

class Widen {
 public:
  Widen() = default;
  ~Widen();  // rounds every out() back into its bf16 tensor
  Widen(const Widen&) = delete;
  Widen& operator=(const Widen&) = delete;

  // t as float32: a widened copy when t is bf16, t itself otherwise
  // (an undefined tensor stays undefined).
  Tensor in(const Tensor& t);
  // An output: float32 scratch that is rounded back into t at destruction
  // (t itself when it is not bf16). `keep`: the scratch starts from t's
  // values (outputs that accumulate, ops in place).
  Tensor out(const Tensor& t, bool keep = false);
  // The same for strided matrices (dense float32 copies, ld = cols).
  Matrix in(const Matrix& m);
  Matrix out(const Matrix& m, bool keep);

 private:
  Matrix widened(const Matrix& m, bool copy_values);
  std::vector<Buffer> scratch_;
  std::vector<std::pair<Tensor, Tensor>> tensor_back_;  // (bf16 target, float32 scratch)
  std::vector<std::pair<Matrix, Matrix>> matrix_back_;
};

}  // namespace deco::cpu
