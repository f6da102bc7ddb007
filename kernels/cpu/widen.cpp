#include "kernels/cpu/widen.h"

#include "core/bf16.h"
#include "core/error.h"

namespace deco::cpu {
namespace {

// Conversions are a few cycles per value: below this many values a
// parallel region costs more than it saves (a passive OpenMP wake-up is
// tens of microseconds), so small tensors convert on the calling thread.
constexpr int64_t kParallelValues = int64_t{1} << 16;

// dst = f(src) over rows x cols values at row strides ld_dst and ld_src,
// in one parallel region (over the rows, or over a single row's values).
template <typename D, typename S, typename F>
void convert(D* dst, int64_t ld_dst, const S* src, int64_t ld_src, int64_t rows, int64_t cols, F f) {
  const bool parallel = rows * cols >= kParallelValues;
  if (rows == 1) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t c = 0; c < cols; ++c) dst[c] = f(src[c]);
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[r * ld_dst + c] = f(src[r * ld_src + c]);
}

void widen_rows(float* dst, int64_t ld_dst, const uint16_t* src, int64_t ld_src, int64_t rows, int64_t cols) {
  convert(dst, ld_dst, src, ld_src, rows, cols, [](uint16_t b) { return bf16_bits_to_float(b); });
}

void round_rows(uint16_t* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) {
  convert(dst, ld_dst, src, ld_src, rows, cols, [](float v) { return float_to_bf16_bits(v); });
}

}  // namespace

bool any_bf16(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t->defined() && t->dtype() == DType::BF16) return true;
  return false;
}

bool any_bf16(std::initializer_list<const Matrix*> matrices) {
  for (const Matrix* m : matrices)
    if (m->dtype == DType::BF16) return true;
  return false;
}

Widen::~Widen() {
  for (auto& [target, scratch] : tensor_back_)
    round_rows(static_cast<uint16_t*>(target.raw()), 0, scratch.data<float>(), 0, 1, target.numel());
  for (auto& [target, scratch] : matrix_back_)
    round_rows(static_cast<uint16_t*>(target.ptr), target.ld, scratch.data<float>(), scratch.ld, target.rows,
               target.cols);
}

Tensor Widen::in(const Tensor& t) {
  if (!t.defined() || t.dtype() != DType::BF16) return t;
  DECO_ASSERT(t.device() == Device::CPU, "Widen: a host tensor");
  scratch_.emplace_back(DType::F32, Device::CPU, t.shape());
  widen_rows(scratch_.back().data<float>(), 0, static_cast<const uint16_t*>(t.raw()), 0, 1, t.numel());
  return scratch_.back().tensor();
}

Tensor Widen::out(const Tensor& t, bool keep) {
  if (!t.defined() || t.dtype() != DType::BF16) return t;
  Tensor wide;
  if (keep) {
    wide = in(t);
  } else {
    scratch_.emplace_back(DType::F32, Device::CPU, t.shape());
    wide = scratch_.back().tensor();
  }
  tensor_back_.push_back({t, wide});
  return wide;
}

Matrix Widen::widened(const Matrix& m, bool copy_values) {
  DECO_ASSERT(m.device == Device::CPU, "Widen: a host matrix");
  scratch_.emplace_back(DType::F32, Device::CPU, Shape{m.rows, m.cols});
  Matrix wide = scratch_.back().tensor().matrix();
  wide.rows = m.rows;  // a [0, cols] buffer's matrix() has no rows either way
  wide.cols = m.cols;
  wide.ld = m.cols;
  if (copy_values)
    widen_rows(wide.data<float>(), wide.ld, static_cast<const uint16_t*>(m.ptr), m.ld, m.rows, m.cols);
  return wide;
}

Matrix Widen::in(const Matrix& m) { return m.dtype == DType::BF16 ? widened(m, true) : m; }

Matrix Widen::out(const Matrix& m, bool keep) {
  if (m.dtype != DType::BF16) return m;
  const Matrix wide = widened(m, keep);
  matrix_back_.push_back({m, wide});
  return wide;
}

}  // namespace deco::cpu
