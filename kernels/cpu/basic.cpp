// CPU reference: memory, elementwise, GEMM, gather/scatter and embedding ops.
// Loops that write disjoint rows run in parallel (OpenMP); reductions into
// a single output run in a fixed order so results are bit-identical run to run.
#include <cblas.h>

#include <cmath>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/bf16.h"
#include "kernels/cpu/widen.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"

namespace deco {
namespace detail {
void bad_dtype(DType dtype, const char* op) {
  internal_error(__FILE__, __LINE__, str(op, " does not support ", dtype_name(dtype)));
}
void no_cuda_kernel(const char* op) {
  fail("the op ", op, " has no CUDA kernel in this build yet; the model runs on the CPU backend.");
}
}  // namespace detail

namespace ops {
namespace {

void check_same_numel(const Tensor& a, const Tensor& b, const char* op) {
  DECO_ASSERT(a.numel() == b.numel(), op, ": ", a.shape().to_string(), " vs ", b.shape().to_string());
}

template <typename T> void gemm_cpu(const Matrix& C, const Matrix& A, bool ta, const Matrix& B,
                                    bool tb, double alpha, double beta);

template <> void gemm_cpu<float>(const Matrix& C, const Matrix& A, bool ta, const Matrix& B, bool tb,
                                 double alpha, double beta) {
  const int64_t k = ta ? A.rows : A.cols;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(C.rows), static_cast<int>(C.cols), static_cast<int>(k),
              static_cast<float>(alpha), A.data<float>(), static_cast<int>(A.ld), B.data<float>(),
              static_cast<int>(B.ld), static_cast<float>(beta), C.data<float>(),
              static_cast<int>(C.ld));
}

template <> void gemm_cpu<double>(const Matrix& C, const Matrix& A, bool ta, const Matrix& B, bool tb,
                                  double alpha, double beta) {
  const int64_t k = ta ? A.rows : A.cols;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(C.rows), static_cast<int>(C.cols), static_cast<int>(k), alpha,
              A.data<double>(), static_cast<int>(A.ld), B.data<double>(), static_cast<int>(B.ld),
              beta, C.data<double>(), static_cast<int>(C.ld));
}

}  // namespace

void zero(const Tensor& x) {
  if (x.numel() > 0) device_memset_zero(x.device(), x.raw(), x.nbytes());
}

void copy(const Tensor& dst, const Tensor& src) {
  check_same_numel(dst, src, "copy");
  if (dst.dtype() == src.dtype()) {
    device_copy(dst.device(), dst.raw(), src.device(), src.raw(), src.nbytes());
    return;
  }
#ifdef DECO_WITH_CUDA
  if (dst.device() == Device::CUDA && src.device() == Device::CUDA) {
    cuda::convert(dst, src);
    return;
  }
#endif
  if (dst.device() != src.device())
    fail("copy from ", device_name(src.device()), " ", dtype_name(src.dtype()), " to ", device_name(dst.device()), " ",
         dtype_name(dst.dtype()), " changes both device and dtype; copy first, then convert on one device.");
  const int64_t n = dst.numel();
  if (dst.dtype() == DType::BF16 || src.dtype() == DType::BF16) {  // through float32, rounding to nearest even
    cpu::Widen w;
    const Tensor wide_src = w.in(src);
    const Tensor wide_dst = w.out(dst);
    if (wide_dst.dtype() != wide_src.dtype()) copy(wide_dst, wide_src);
    else if (wide_dst.raw() != wide_src.raw()) device_copy(Device::CPU, wide_dst.raw(), Device::CPU, wide_src.raw(), wide_src.nbytes());
    return;
  }
  dispatch_float(dst.dtype(), [&](auto dst_tag) {
    dispatch_float(src.dtype(), [&](auto src_tag) {
      using TD = decltype(dst_tag);
      using TS = decltype(src_tag);
      TD* d = dst.data<TD>();
      const TS* s = src.data<TS>();
      for (int64_t i = 0; i < n; ++i) d[i] = static_cast<TD>(s[i]);
    });
  });
}

void axpy(const Tensor& y, const Tensor& x, double alpha) {
  check_same_numel(y, x, "axpy");
  DECO_CUDA_DISPATCH(y, cuda::axpy(y, x, alpha));
  if (cpu::any_bf16({&y, &x})) {
    cpu::Widen w;
    axpy(w.out(y, true), w.in(x), alpha);
    return;
  }
  const int64_t n = y.numel();
  dispatch_float(y.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* py = y.data<T>();
    const T* px = x.data<T>();
    const T a = static_cast<T>(alpha);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) py[i] += a * px[i];
  });
}

void scale(const Tensor& x, double alpha) {
  DECO_CUDA_DISPATCH(x, cuda::scale(x, alpha));
  if (cpu::any_bf16({&x})) {
    cpu::Widen w;
    scale(w.out(x, true), alpha);
    return;
  }
  const int64_t n = x.numel();
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* p = x.data<T>();
    const T a = static_cast<T>(alpha);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] *= a;
  });
}

double sum_squares(const Tensor& x) {
#ifdef DECO_WITH_CUDA
  if (x.device() == Device::CUDA) return cuda::sum_squares(x);
#else
  DECO_REQUIRE_CPU(x);
#endif
  double total = 0.0;
  const int64_t n = x.numel();
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* p = x.data<T>();
    for (int64_t i = 0; i < n; ++i) total += static_cast<double>(p[i]) * static_cast<double>(p[i]);
  });
  return total;
}

void row_mean(const Tensor& out, const Tensor& x) {
  const Matrix m = x.matrix();
  DECO_ASSERT(out.numel() == m.rows, "row_mean output size");
  DECO_CUDA_DISPATCH(x, cuda::row_mean(out, x));
  if (cpu::any_bf16({&out, &x})) {
    cpu::Widen w;
    row_mean(w.out(out), w.in(x));
    return;
  }
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r) {
      double acc = 0.0;
      for (int64_t c = 0; c < m.cols; ++c) acc += px[r * m.cols + c];
      po[r] = static_cast<T>(acc / static_cast<double>(m.cols));
    }
  });
}

void col_mean(const Tensor& out, const Tensor& x) {
  const Matrix m = x.matrix();
  DECO_ASSERT(out.numel() == m.cols, "col_mean output size");
  DECO_CUDA_DISPATCH(x, cuda::col_mean(out, x));
  if (cpu::any_bf16({&out, &x})) {
    cpu::Widen w;
    col_mean(w.out(out), w.in(x));
    return;
  }
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < m.cols; ++c) {
      double acc = 0.0;
      for (int64_t r = 0; r < m.rows; ++r) acc += px[r * m.cols + c];
      po[c] = static_cast<T>(acc / static_cast<double>(m.rows));
    }
  });
}

void row_dot(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_same_numel(a, b, "row_dot");
  const Matrix m = a.matrix();
  DECO_ASSERT(out.numel() == m.rows, "row_dot output size");
  DECO_CUDA_DISPATCH(a, cuda::row_dot(out, a, b));
  if (cpu::any_bf16({&out, &a, &b})) {
    cpu::Widen w;
    row_dot(w.out(out), w.in(a), w.in(b));
    return;
  }
  dispatch_float(a.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r) {
      T acc = 0;
      for (int64_t c = 0; c < m.cols; ++c) acc += pa[r * m.cols + c] * pb[r * m.cols + c];
      po[r] = acc;
    }
  });
}

void scale_rows(const Tensor& out, const Tensor& x, const Tensor& s) {
  check_same_numel(out, x, "scale_rows");
  const Matrix m = x.matrix();
  DECO_ASSERT(s.numel() == m.rows, "scale_rows: one scale per row");
  DECO_CUDA_DISPATCH(x, cuda::scale_rows(out, x, s));
  if (cpu::any_bf16({&out, &x, &s})) {
    cpu::Widen w;
    scale_rows(w.out(out), w.in(x), w.in(s));
    return;
  }
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    const T* ps = s.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r)
      for (int64_t c = 0; c < m.cols; ++c) po[r * m.cols + c] = px[r * m.cols + c] * ps[r];
  });
}

void add_to_rows(const Tensor& m, const Tensor& v, double alpha) {
  const Matrix mm = m.matrix();
  DECO_ASSERT(v.numel() == mm.cols, "add_to_rows: vector length");
  DECO_CUDA_DISPATCH(m, cuda::add_to_rows(m, v, alpha));
  if (cpu::any_bf16({&m, &v})) {
    cpu::Widen w;
    add_to_rows(w.out(m, true), w.in(v), alpha);
    return;
  }
  dispatch_float(m.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* pm = m.data<T>();
    const T* pv = v.data<T>();
    const T a = static_cast<T>(alpha);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < mm.rows; ++r)
      for (int64_t c = 0; c < mm.cols; ++c) pm[r * mm.cols + c] += a * pv[c];
  });
}

void sub_row_scalar(const Tensor& y, const Tensor& x, const Tensor& s) {
  check_same_numel(y, x, "sub_row_scalar");
  const Matrix m = x.matrix();
  DECO_ASSERT(s.numel() == m.rows, "sub_row_scalar: one scalar per row");
  DECO_CUDA_DISPATCH(x, cuda::sub_row_scalar(y, x, s));
  if (cpu::any_bf16({&y, &x, &s})) {
    cpu::Widen w;
    sub_row_scalar(w.out(y), w.in(x), w.in(s));
    return;
  }
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    const T* ps = s.data<T>();
    T* py = y.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r)
      for (int64_t c = 0; c < m.cols; ++c) py[r * m.cols + c] = px[r * m.cols + c] - ps[r];
  });
}

void mul(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_same_numel(out, a, "mul");
  check_same_numel(a, b, "mul");
  DECO_CUDA_DISPATCH(a, cuda::mul(out, a, b));
  if (cpu::any_bf16({&out, &a, &b})) {
    cpu::Widen w;
    mul(w.out(out), w.in(a), w.in(b));
    return;
  }
  const int64_t n = a.numel();
  dispatch_float(a.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] * pb[i];
  });
}

void reserve_gemm_workspace(Device device) {
  if (device == Device::CPU) return;
#ifdef DECO_WITH_CUDA
  cuda::reserve_gemm_workspace();
#else
  detail::no_cuda_kernel(__func__);
#endif
}

void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha, double beta) {
  const int64_t m = trans_a ? A.cols : A.rows;
  const int64_t k = trans_a ? A.rows : A.cols;
  const int64_t kb = trans_b ? B.cols : B.rows;
  const int64_t n = trans_b ? B.rows : B.cols;
  DECO_ASSERT(m == C.rows && n == C.cols && k == kb, "gemm shapes: C ", C.rows, "x", C.cols,
              " = op(A) ", m, "x", k, " @ op(B) ", kb, "x", n);
  if (C.rows == 0 || C.cols == 0) return;
  if (C.device == Device::CUDA) {
#ifdef DECO_WITH_CUDA
    cuda::gemm(C, A, trans_a, B, trans_b, alpha, beta);
    return;
#else
    detail::no_cuda_kernel(__func__);
#endif
  }
  if (cpu::any_bf16({&C, &A, &B})) {
    cpu::Widen w;
    gemm(w.out(C, beta != 0.0), w.in(A), trans_a, w.in(B), trans_b, alpha, beta);
    return;
  }
  if (k == 0) {  // BLAS leaves C untouched for k = 0 only when beta = 1; make it exact
    dispatch_float(C.dtype, [&](auto T_tag) {
    using T = decltype(T_tag);
      for (int64_t r = 0; r < C.rows; ++r)
        for (int64_t c = 0; c < C.cols; ++c) {
          T& x = C.data<T>()[r * C.ld + c];
          x = beta == 0.0 ? T(0) : static_cast<T>(beta) * x;
        }
    });
    return;
  }
  dispatch_float(C.dtype, [&](auto tag) {
    gemm_cpu<decltype(tag)>(C, A, trans_a, B, trans_b, alpha, beta);
  });
}

void linear_forward(const Tensor& y, const Tensor& x, const Tensor& w, bool accumulate) {
  gemm(y.matrix(), x.matrix(), false, w.matrix(), true, 1.0, accumulate ? 1.0 : 0.0);
}

void linear_backward_input(const Tensor& dx, const Tensor& dy, const Tensor& w, bool accumulate) {
  gemm(dx.matrix(), dy.matrix(), false, w.matrix(), false, 1.0, accumulate ? 1.0 : 0.0);
}

void linear_backward_weight(const Tensor& dw, const Tensor& dy, const Tensor& x) {
  gemm(dw.matrix(), dy.matrix(), true, x.matrix(), false, 1.0, 1.0);
}

void gather_rows(const Tensor& out, const Tensor& x, const Tensor& index) {
  const Matrix mo = out.matrix();
  const Matrix mx = x.matrix();
  DECO_ASSERT(mo.cols == mx.cols && index.numel() >= mo.rows, "gather_rows shapes");
  DECO_CUDA_DISPATCH(x, cuda::gather_rows(out, x, index));
  if (cpu::any_bf16({&out, &x})) {
    cpu::Widen w;
    gather_rows(w.out(out), w.in(x), index);
    return;
  }
  const int32_t* idx = index.data<int32_t>();
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    T* po = out.data<T>();
    const size_t row_bytes = static_cast<size_t>(mx.cols) * sizeof(T);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < mo.rows; ++p) std::memcpy(po + p * mo.cols, px + idx[p] * mx.cols, row_bytes);
  });
}

void scatter_add_rows(const Tensor& y, const Tensor& src, const Tensor& index) {
  const Matrix my = y.matrix();
  const Matrix ms = src.matrix();
  DECO_ASSERT(my.cols == ms.cols && index.numel() >= ms.rows, "scatter_add_rows shapes");
  DECO_CUDA_DISPATCH(y, cuda::scatter_add_rows(y, src, index));
  if (cpu::any_bf16({&y, &src})) {  // the sums in float32, y rounded once
    cpu::Widen w;
    scatter_add_rows(w.out(y, true), w.in(src), index);
    return;
  }
  const int32_t* idx = index.data<int32_t>();
  const int64_t cols = my.cols;
  dispatch_float(y.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* py = y.data<T>();
    const T* ps = src.data<T>();
    // Threads split the columns, and each walks all rows in order: every
    // output element is summed in the same order whatever the thread count.
#pragma omp parallel
    {
#ifdef _OPENMP
      const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
      const int64_t nt = 1, tid = 0;
#endif
      const int64_t c0 = cols * tid / nt, c1 = cols * (tid + 1) / nt;
      for (int64_t p = 0; p < ms.rows; ++p) {
        T* dst = py + idx[p] * cols;
        const T* s = ps + p * cols;
        for (int64_t c = c0; c < c1; ++c) dst[c] += s[c];
      }
    }
  });
}

void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) {
  DECO_CUDA_DISPATCH(out, cuda::embedding_forward(out, tokens, table));
  gather_rows(out, table, tokens);
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens) {
  scatter_add_rows(dtable, dout, tokens);
}

}  // namespace ops
}  // namespace deco
