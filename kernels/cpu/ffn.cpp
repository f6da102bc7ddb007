// CPU reference: SwiGLU.
#include "kernels/cpu/widen.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/math.h"
#include "kernels/ops.h"

namespace deco::ops {

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  DECO_ASSERT(out.numel() == gate.numel() && gate.numel() == up.numel(), "swiglu_forward shapes");
  DECO_CUDA_DISPATCH(out, cuda::swiglu_forward(out, gate, up));
  if (cpu::any_bf16({&out, &gate, &up})) {
    cpu::Widen w;
    swiglu_forward(w.out(out), w.in(gate), w.in(up));
    return;
  }
  const int64_t n = out.numel();
  dispatch_float(out.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pg = gate.data<T>();
    const T* pu = up.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = math::silu(pg[i]) * pu[i];
  });
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
  DECO_ASSERT(dgate.numel() == dout.numel() && dup.numel() == dout.numel() && gate.numel() == dout.numel() &&
                  up.numel() == dout.numel(),
              "swiglu_backward shapes");
  DECO_CUDA_DISPATCH(dout, cuda::swiglu_backward(dgate, dup, dout, gate, up));
  if (cpu::any_bf16({&dgate, &dup, &dout, &gate, &up})) {
    cpu::Widen w;
    swiglu_backward(w.out(dgate), w.out(dup), w.in(dout), w.in(gate), w.in(up));
    return;
  }
  const int64_t n = dout.numel();
  dispatch_float(dout.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pg = gate.data<T>();
    const T* pu = up.data<T>();
    const T* pd = dout.data<T>();
    T* pdg = dgate.data<T>();
    T* pdu = dup.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      pdg[i] = pd[i] * pu[i] * math::silu_grad(pg[i]);
      pdu[i] = pd[i] * math::silu(pg[i]);
    }
  });
}

}  // namespace deco::ops
