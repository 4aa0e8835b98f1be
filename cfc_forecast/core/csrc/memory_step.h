// One step of the mixed-memory LSTM cell and its backward (cfc_forecast/core/memory.py has the equations):
// fused CPU kernels for float and double, ATen kernels for everything else.
//
//   z = [i; ig; fg; og] (4H, B) = W_in x + b + W_rec h     (the loop's in-place matmul on the hoisted input)
//   c' = c * sigmoid(fg + forget_bias) + tanh(i) * sigmoid(ig);  out = tanh(c') * sigmoid(og)
//
// Forward overwrites z with the activations [tanh(i); s_ig; s_fg; s_og] and keeps tanh(c'): all the backward
// needs besides the previous cell state. Padding carries c over like h.
#pragma once

#include <ATen/ATen.h>

#include "cell_cpu.h"
#include "common.h"

namespace cfc_cpu {

template <typename T>
void lstm_forward(T* z, const T* c_prev, const T* mask, T* c_new, T* out, T* tc_out, int64_t H, int64_t B,
                  T forget_bias) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> fb(forget_bias);
  for (int64_t r = 0; r < H; ++r) {
    T *zi = z + r * B, *zg = z + (H + r) * B, *zf = z + (2 * H + r) * B, *zo = z + (3 * H + r) * B;
    for (int64_t b = 0; b < B; b += W) {
      const int64_t n = std::min(W, B - b), i = r * B + b;
      const Vec<T> ti = tanh_exp(Vec<T>::loadu(zi + b, n)), si = sigmoid(Vec<T>::loadu(zg + b, n));
      const Vec<T> sf = sigmoid(Vec<T>::loadu(zf + b, n) + fb), so = sigmoid(Vec<T>::loadu(zo + b, n));
      const Vec<T> c = Vec<T>::loadu(c_prev + i, n) * sf + ti * si;
      const Vec<T> tc = tanh_exp(c);
      ti.store(zi + b, n);
      si.store(zg + b, n);
      sf.store(zf + b, n);
      so.store(zo + b, n);
      tc.store(tc_out + i, n);
      (tc * so).store(out + i, n);
      keep_masked(c, c_prev + r * B, mask, b, n).store(c_new + i, n);
    }
  }
}

// d_out: gradient of the LSTM output (H, B); grad_c: the outer gradient of this step's cell state;
// carry_c: in, the gradient of this step's cell state from the next step; out, the previous cell state's.
template <typename T>
void lstm_backward(const T* d_out, const T* grad_c, T* carry_c, const T* mask, const T* z, const T* tc,
                   const T* c_prev, T* dz, int64_t H, int64_t B) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> one(T(1));
  for (int64_t r = 0; r < H; ++r) {
    for (int64_t b = 0; b < B; b += W) {
      const int64_t n = std::min(W, B - b), i = r * B + b;
      const Vec<T> gk = split_grad(grad_c, carry_c, mask, i, b, n, T(1));  // carry_c <- passthrough
      const Vec<T> ti = Vec<T>::loadu(z + i, n), si = Vec<T>::loadu(z + H * B + i, n);
      const Vec<T> sf = Vec<T>::loadu(z + 2 * H * B + i, n), so = Vec<T>::loadu(z + 3 * H * B + i, n);
      const Vec<T> t = Vec<T>::loadu(tc + i, n), d = Vec<T>::loadu(d_out + i, n);
      const Vec<T> dc = gk + d * so * (one - t * t);
      (dc * si * (one - ti * ti)).store(dz + i, n);
      (dc * ti * si * (one - si)).store(dz + H * B + i, n);
      (dc * Vec<T>::loadu(c_prev + i, n) * sf * (one - sf)).store(dz + 2 * H * B + i, n);
      (d * t * so * (one - so)).store(dz + 3 * H * B + i, n);
      (Vec<T>::loadu(carry_c + i, n) + dc * sf).store(carry_c + i, n);
    }
  }
}

}  // namespace cfc_cpu

namespace cfc {

struct MemoryStep {
  bool fused;
  double forget_bias;
  at::Tensor c_buf, tmp, tmp2, dc;  // generic path only

  // z (4H, B) pre-activations -> activations in place; writes c (H, B, padding carried), out, tanh(c').
  void forward(at::Tensor& z, const at::Tensor& c_prev, const at::Tensor& mask_f, const at::Tensor& mask_b,
               at::Tensor& c_new, at::Tensor& out, at::Tensor& tc) {
    const int64_t H = c_prev.size(0), B = c_prev.size(1);
    if (fused) {
      AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cfc_lstm_forward", [&] {
        cfc_cpu::lstm_forward<scalar_t>(z.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
                                        ptr_or_null<scalar_t>(mask_f), c_new.data_ptr<scalar_t>(),
                                        out.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(), H, B,
                                        static_cast<scalar_t>(forget_bias));
      });
      return;
    }
    z.narrow(0, 0, H).tanh_();
    z.narrow(0, 2 * H, H).add_(forget_bias);
    z.narrow(0, H, 3 * H).sigmoid_();
    at::mul_out(c_buf, c_prev, z.narrow(0, 2 * H, H));
    c_buf.addcmul_(z.narrow(0, 0, H), z.narrow(0, H, H));
    at::tanh_out(tc, c_buf);
    at::mul_out(out, tc, z.narrow(0, 3 * H, H));
    if (mask_b.defined()) {
      at::where_out(c_new, mask_b, c_buf, c_prev);
    } else {
      c_new.copy_(c_buf);
    }
  }

  // Gradient of the pre-activations dz (4H, B) from d_out and the cell state's gradients (see lstm_backward).
  void backward(const at::Tensor& d_out, const at::Tensor& grad_c, at::Tensor& carry_c, const at::Tensor& mask_f,
                const at::Tensor& z, const at::Tensor& tc, const at::Tensor& c_prev, at::Tensor& dz) {
    const int64_t H = c_prev.size(0), B = c_prev.size(1);
    if (fused) {
      AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cfc_lstm_backward", [&] {
        cfc_cpu::lstm_backward<scalar_t>(d_out.data_ptr<scalar_t>(), grad_c.data_ptr<scalar_t>(),
                                         carry_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(mask_f),
                                         z.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(),
                                         c_prev.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), H, B);
      });
      return;
    }
    const at::Tensor ti = z.narrow(0, 0, H), si = z.narrow(0, H, H), sf = z.narrow(0, 2 * H, H),
                     so = z.narrow(0, 3 * H, H);
    at::add_out(dc, grad_c, carry_c);  // the cell state's whole gradient
    if (mask_f.defined()) {
      at::mul_out(tmp, dc, mask_f);
      at::sub_out(carry_c, dc, tmp);  // passes straight to the previous cell state at padding
      dc.copy_(tmp);
    } else {
      carry_c.zero_();
    }
    at::mul_out(tmp, d_out, so);
    at::tanh_backward_out(tmp2, tmp, tc);
    dc.add_(tmp2);
    at::Tensor d_i = dz.narrow(0, 0, H), d_ig = dz.narrow(0, H, H), d_fg = dz.narrow(0, 2 * H, H),
               d_og = dz.narrow(0, 3 * H, H);
    at::mul_out(tmp, d_out, tc);
    at::sigmoid_backward_out(d_og, tmp, so);
    at::mul_out(tmp, dc, c_prev);
    at::sigmoid_backward_out(d_fg, tmp, sf);
    at::mul_out(tmp, dc, si);
    at::tanh_backward_out(d_i, tmp, ti);
    at::mul_out(tmp, dc, ti);
    at::sigmoid_backward_out(d_ig, tmp, si);
    carry_c.addcmul_(dc, sf);
  }
};

}  // namespace cfc
