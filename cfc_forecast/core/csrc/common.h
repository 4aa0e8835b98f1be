// Shared helpers of the native loop: activation kernels by code, small tensor utilities.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cell_cpu.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace cfc {

enum Mode : int64_t { kDefault = 0, kNoGate = 1, kPure = 2 };
enum Act : int64_t { kTanh = 1, kRelu = 2, kSilu = 3, kGelu = 4 };
enum Wiring : int64_t { kNoMemory = 0, kNcpsWiring = 1, kPaperWiring = 2 };

inline bool keeps_pre(int64_t act) { return act == kSilu || act == kGelu; }

// tanh and relu run in place (their backward needs only the output); silu and gelu keep the pre-activation.
// The fused CPU kernels take float and double; anything else (CUDA, half) runs the generic ATen kernels.
inline bool use_fused(const at::Tensor& t) {
  return t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

// tanh on the CPU runs the fused kernel of cell_cpu.h (contiguous step blocks only).
inline void act_forward(at::Tensor& out, const at::Tensor& pre, int64_t act) {
  if (act == kTanh && use_fused(out) && out.is_contiguous()) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cfc_tanh", [&] {
      cfc_cpu::tanh_inplace<scalar_t>(out.data_ptr<scalar_t>(), out.numel());
    });
    return;
  }
  switch (act) {
    case kTanh: out.tanh_(); break;
    case kRelu: out.relu_(); break;
    case kSilu: at::silu_out(out, pre); break;
    case kGelu: at::gelu_out(out, pre); break;
    default: TORCH_CHECK(false, "cfc_forecast native: unknown activation code ", act);
  }
}

inline void act_backward(at::Tensor& grad_pre, const at::Tensor& grad_out, const at::Tensor& pre,
                  const at::Tensor& out, int64_t act) {
  if (act == kTanh && use_fused(out) && out.is_contiguous() && grad_out.is_contiguous() && grad_pre.is_contiguous()) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cfc_tanh_backward", [&] {
      cfc_cpu::tanh_backward<scalar_t>(grad_pre.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                       out.data_ptr<scalar_t>(), out.numel());
    });
    return;
  }
  switch (act) {
    case kTanh: at::tanh_backward_out(grad_pre, grad_out, out); break;
    case kRelu: at::threshold_backward_out(grad_pre, grad_out, out, 0); break;
    case kSilu: at::silu_backward_out(grad_pre, grad_out, pre); break;
    case kGelu: at::gelu_backward_out(grad_pre, grad_out, pre); break;
    default: TORCH_CHECK(false, "cfc_forecast native: unknown activation code ", act);
  }
}

inline at::Tensor none_like(const at::Tensor& like) { return at::empty({0}, like.options()); }

// A bias (N) as a contiguous (N, B) block, copied into a step's output before an in-place matmul: cheaper
// than broadcasting the bias into every step's buffer at once.
inline at::Tensor bias_block(const at::Tensor& bias, int64_t B) {
  return bias.view({bias.size(0), 1}).expand({bias.size(0), B}).contiguous();
}

// Flush denormals to zero (FTZ and DAZ) on every intra-op thread while a CPU loop runs, restoring each thread's
// setting after. Why: over long sequences the gradients carried back through the steps decay into denormal
// floats, on which the matmuls run about 8x slower (measured: 256 x 256 steps, 1.65 s against 0.21 s per
// training step). Values below 1.2e-38 carry no information for training.
#if defined(__x86_64__) || defined(_M_X64)
inline thread_local bool ftz_active = false;
inline thread_local unsigned int ftz_saved = 0;

class DenormalsAreZero {
 public:
  explicit DenormalsAreZero(bool on) : on_(on) {
    if (on_) each_thread([] {
        if (!ftz_active) ftz_saved = _mm_getcsr(), _mm_setcsr(ftz_saved | 0x8040), ftz_active = true;
      });
  }
  ~DenormalsAreZero() {
    if (on_) each_thread([] {
        if (ftz_active) _mm_setcsr(ftz_saved), ftz_active = false;
      });
  }

 private:
  template <typename F>
  static void each_thread(const F& f) {
    f();  // this thread, also when the pool runs the range inline
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { f(); });
  }
  bool on_;
};
#else
struct DenormalsAreZero {
  explicit DenormalsAreZero(bool) {}
};
#endif

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace cfc
