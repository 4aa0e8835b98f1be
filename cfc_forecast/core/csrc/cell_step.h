// One step of the CfC cell update, from the heads to the state, and its backward: fused CPU kernels
// (cell_cpu.h) for float and double on the CPU, ATen kernels for everything else (CUDA, half precision).
#pragma once

#include <ATen/ATen.h>

#include "cell_cpu.h"
#include "common.h"

namespace cfc {

// One step's cell update from the heads z (NH, B): writes ff (2H, B) or E (H, B), gate, and the state h (H, B).
struct CellForward {
  int64_t mode;
  double scale;
  bool keep;  // saving for backward: the fused kernel writes f, gate and z + bias only then
  at::Tensor A, w_tau_abs, hbuf, tmp, bias, bias_block;

  void fused(at::Tensor& z, const at::Tensor& dtt, const at::Tensor& mask_f, const at::Tensor& hprev,
             at::Tensor& f, at::Tensor& g, at::Tensor& h) const {
    const int64_t H = h.size(0), B = h.size(1);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cfc_cell_forward", [&] {
      const scalar_t* m = ptr_or_null<scalar_t>(mask_f);
      const scalar_t* b = ptr_or_null<scalar_t>(bias);
      if (mode == kPure) {
        cfc_cpu::pure_forward<scalar_t>(z.data_ptr<scalar_t>(), b, dtt.data_ptr<scalar_t>(), m,
                                        hprev.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                                        w_tau_abs.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(),
                                        h.data_ptr<scalar_t>(), H, B, keep);
      } else {
        cfc_cpu::gated_forward<scalar_t>(z.data_ptr<scalar_t>(), b, dtt.data_ptr<scalar_t>(), m,
                                         hprev.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(),
                                         g.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), H, B,
                                         mode == kNoGate, static_cast<scalar_t>(scale), keep);
      }
    });
  }

  void generic(const at::Tensor& z, const at::Tensor& dtt, const at::Tensor& mask_t, const at::Tensor& hprev,
               at::Tensor& f, at::Tensor& g, at::Tensor& h) {
    const int64_t H = h.size(0);
    at::Tensor hn = mask_t.defined() ? hbuf : h;
    if (mode == kPure) {  // h' = A - A * E * ff1 with E = exp(-dt * (|w_tau| + |ff1|))
      at::abs_out(f, z);
      f.add_(w_tau_abs).mul_(dtt).neg_().exp_();
      at::mul_out(tmp, f, z);
      at::addcmul_out(hn, A, A, tmp, -1);
    } else {
      at::tanh_out(f, z.narrow(0, 0, 2 * H));
      at::addcmul_out(g, z.narrow(0, 3 * H, H), z.narrow(0, 2 * H, H), dtt);  // t_b + t_a * dt
      g.sigmoid_();
      if (mode == kDefault) {
        at::lerp_out(hn, f.narrow(0, 0, H), f.narrow(0, H, H), g);  // ff1 * (1 - g) + g * ff2
      } else {
        at::addcmul_out(hn, f.narrow(0, 0, H), g, f.narrow(0, H, H));
      }
      if (scale != 1.0) hn.mul_(scale);
    }
    if (mask_t.defined()) at::where_out(h, mask_t, hn, hprev);  // padding carries the state over
  }
};

// One step's backward of the cell update: from the state's gradient (grad + carry) to d z (NH, B) and d dt;
// leaves in carry what passes straight to the previous state at padding.
struct CellBackward {
  int64_t mode;
  double scale;
  at::Tensor A, w_tau_abs, acc_a, acc_wtau, g, gk, tmp, tmp2, d_ff;

  void fused(const at::Tensor& grad, at::Tensor& carry, const at::Tensor& mask_f, const at::Tensor& z,
             const at::Tensor& f, const at::Tensor& gate, const at::Tensor& dtt, at::Tensor& dz,
             at::Tensor& ddt) {
    const int64_t H = carry.size(0), B = carry.size(1);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cfc_cell_backward", [&] {
      const scalar_t* m = ptr_or_null<scalar_t>(mask_f);
      if (mode == kPure) {
        cfc_cpu::pure_backward<scalar_t>(grad.data_ptr<scalar_t>(), carry.data_ptr<scalar_t>(), m,
                                         z.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                                         w_tau_abs.data_ptr<scalar_t>(), dtt.data_ptr<scalar_t>(),
                                         dz.data_ptr<scalar_t>(), ddt.data_ptr<scalar_t>(),
                                         acc_a.data_ptr<scalar_t>(), acc_wtau.data_ptr<scalar_t>(), H, B);
      } else {
        cfc_cpu::gated_backward<scalar_t>(grad.data_ptr<scalar_t>(), carry.data_ptr<scalar_t>(), m,
                                          z.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(),
                                          gate.data_ptr<scalar_t>(), dtt.data_ptr<scalar_t>(),
                                          dz.data_ptr<scalar_t>(), ddt.data_ptr<scalar_t>(), H, B,
                                          mode == kNoGate, static_cast<scalar_t>(scale));
      }
    });
  }

  void generic(const at::Tensor& grad, at::Tensor& carry, const at::Tensor& mask_f, const at::Tensor& z,
               const at::Tensor& f, const at::Tensor& gate, const at::Tensor& dtt, at::Tensor& dz,
               at::Tensor& ddt) {
    const int64_t H = carry.size(0);
    at::add_out(g, grad, carry);
    if (mask_f.defined()) {
      at::mul_out(gk, g, mask_f);  // the step's own share
      at::sub_out(carry, g, gk);   // at padding the gradient passes straight to the previous state
    } else {
      gk.copy_(g);
      carry.zero_();
    }
    if (scale != 1.0) gk.mul_(scale);
    if (mode == kPure) {
      at::mul_out(tmp, f, z);                // u = E * ff1
      acc_a.add_(gk).addcmul_(gk, tmp, -1);  // dA = g * (1 - u)
      at::mul_out(tmp2, gk, A).neg_();       // du = -A * g
      tmp.mul_(tmp2);                        // du * u
      acc_wtau.addcmul_(tmp, dtt, -1);       // d|w_tau| = -dt * du * u
      at::abs_out(dz, z);
      at::sum_out(ddt, tmp * (dz + w_tau_abs), {0}, true).neg_();  // d dt = -sum du * u * (|w_tau| + |ff1|)
      dz.mul_(dtt).neg_().add_(1).mul_(f).mul_(tmp2);             // d ff1 = du * E * (1 - dt * |ff1|)
      return;
    }
    at::Tensor d_ff1 = d_ff.narrow(0, 0, H), d_ff2 = d_ff.narrow(0, H, H);
    at::mul_out(d_ff2, gk, gate);
    if (mode == kDefault) {
      at::sub_out(d_ff1, gk, d_ff2);
      at::sub_out(tmp, f.narrow(0, H, H), f.narrow(0, 0, H));
      tmp.mul_(gk);  // d gate = g * (ff2 - ff1)
    } else {
      d_ff1.copy_(gk);
      at::mul_out(tmp, gk, f.narrow(0, H, H));
    }
    at::Tensor d_ff_pre = dz.narrow(0, 0, 2 * H), d_tb = dz.narrow(0, 3 * H, H), d_ta = dz.narrow(0, 2 * H, H);
    at::tanh_backward_out(d_ff_pre, d_ff, f);
    at::sigmoid_backward_out(d_tb, tmp, gate);
    at::mul_out(d_ta, d_tb, dtt);
    at::mul_out(tmp, d_tb, z.narrow(0, 2 * H, H));
    at::sum_out(ddt, tmp, {0}, true);
  }
};

}  // namespace cfc
