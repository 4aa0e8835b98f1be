// The CfC sequence loop and its hand-written backward, in C++ over ATen.
//
// Why: the references loop over time in Python with ~45 small ops per step, each paying Python dispatch and
// autograd bookkeeping; at the sizes people use (B=64, H=64) that overhead, not arithmetic, is the cost
// (../shared/CFC.md). Here one call runs the whole sequence: per step only the state-dependent matmuls and a few
// element-wise kernels remain, called below the autograd dispatch key; the backward recomputes nothing and turns
// every weight gradient into one large matmul over all steps after the loop.
//
// Layout is time-major and feature-major: a step's tensors are (rows, B). The fused heads' rows
// [ff1; ff2; t_a; t_b] are then contiguous blocks, so every element-wise kernel runs on contiguous memory (a
// column slice of a (B, 4H) tensor is strided and several times slower), and matmul outputs accumulate in place
// into buffers pre-filled with the hoisted input projection or the bias (no bias-broadcast copy per step).
// The Python wrapper (cfc_forecast/native.py) hoists the input half of the first layer out of the loop (xproj),
// folds lecun_tanh's constants into the weights (so the loop only knows tanh) and owns the autograd Function.
// Only ATen ops are used, so the same code runs on CPU and CUDA tensors.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cell_cpu.h"

namespace {

enum Mode : int64_t { kDefault = 0, kNoGate = 1, kPure = 2 };
enum Act : int64_t { kTanh = 1, kRelu = 2, kSilu = 3, kGelu = 4 };

bool keeps_pre(int64_t act) { return act == kSilu || act == kGelu; }

// tanh and relu run in place (their backward needs only the output); silu and gelu keep the pre-activation.
void act_forward(at::Tensor& out, const at::Tensor& pre, int64_t act) {
  switch (act) {
    case kTanh: out.tanh_(); break;
    case kRelu: out.relu_(); break;
    case kSilu: at::silu_out(out, pre); break;
    case kGelu: at::gelu_out(out, pre); break;
    default: TORCH_CHECK(false, "cfc_forecast native: unknown activation code ", act);
  }
}

void act_backward(at::Tensor& grad_pre, const at::Tensor& grad_out, const at::Tensor& pre,
                  const at::Tensor& out, int64_t act) {
  switch (act) {
    case kTanh: at::tanh_backward_out(grad_pre, grad_out, out); break;
    case kRelu: at::threshold_backward_out(grad_pre, grad_out, out, 0); break;
    case kSilu: at::silu_backward_out(grad_pre, grad_out, pre); break;
    case kGelu: at::gelu_backward_out(grad_pre, grad_out, pre); break;
    default: TORCH_CHECK(false, "cfc_forecast native: unknown activation code ", act);
  }
}

at::Tensor none_like(const at::Tensor& like) { return at::empty({0}, like.options()); }

// A bias (N) as a contiguous (N, B) block, copied into a step's output before an in-place matmul: cheaper
// than broadcasting the bias into every step's buffer at once.
at::Tensor bias_block(const at::Tensor& bias, int64_t B) {
  return bias.view({bias.size(0), 1}).expand({bias.size(0), B}).contiguous();
}

// The fused CPU kernels take float and double; anything else (CUDA, half) runs the generic ATen kernels.
bool use_fused(const at::Tensor& t) {
  return t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

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

}  // namespace

// xproj (T,N1,B), h0 (H,B), dt (T,1,B), mask (T,1,B) bool, w_rec (N1,H), w_layers (U,U), b_layers (U),
// w_head (NH,U), b_head (NH), A and w_tau (H,1), drop (L,T,U,B).
// Returns [states (T,H,B), heads (S,NH,B), ff (S,2H,B) | E (S,H,B), gate (S,H,B), then per backbone layer
// pre_l, out_l, in_l (S,U,B) (pre_0 is (T,U,B)); S = T when saving for backward, else 1. Buffers are shared
// where values are: without a backbone heads is the projected input; out_l is pre_l for tanh and relu
// (activated in place), in_l is out_l without dropout.
std::vector<at::Tensor> seq_forward(const at::Tensor& xproj, const at::Tensor& h0, const at::Tensor& dt,
                                    const std::optional<at::Tensor>& mask, const at::Tensor& w_rec,
                                    at::TensorList w_layers, at::TensorList b_layers,
                                    const std::optional<at::Tensor>& w_head,
                                    const std::optional<at::Tensor>& b_head,
                                    const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& w_tau,
                                    const std::optional<at::Tensor>& drop, int64_t n_layers, int64_t mode,
                                    int64_t act, double head_scale, bool save, bool allow_fused) {
  at::AutoDispatchBelowADInplaceOrView guard;  // no autograd bookkeeping per op: the wrapper owns the graph
  const int64_t T = xproj.size(0), B = xproj.size(2), H = h0.size(0);
  const int64_t L = n_layers;
  const int64_t U = L > 0 ? w_rec.size(0) : 0;
  const int64_t S = save ? T : 1;
  const auto opts = xproj.options();
  const bool masked = mask.has_value() && mask->defined();
  const bool dropping = drop.has_value() && drop->defined();
  const bool sep_pre = keeps_pre(act);

  at::Tensor states = at::empty({T, H, B}, opts);
  at::Tensor first = xproj.clone();  // the step's matmul accumulates onto the hoisted input projection
  std::vector<at::Tensor> layer_bufs, layer_bias;
  for (int64_t l = 1; l < L; ++l) {
    layer_bufs.push_back(at::empty({S, U, B}, opts));
    layer_bias.push_back(bias_block(b_layers[l - 1], B));
  }
  at::Tensor ff = at::empty({S, mode == kPure ? H : 2 * H, B}, opts);
  at::Tensor gate = mode == kPure ? none_like(xproj) : at::empty({S, H, B}, opts);
  at::Tensor heads = L > 0 ? at::empty({S, b_head->size(0), B}, opts) : first;
  // per layer: pre-activation (silu, gelu) or, activated in place, the output (tanh, relu); output; dropped
  std::vector<at::Tensor> pre, out, in;
  for (int64_t l = 0; l < L; ++l) {
    pre.push_back(l == 0 ? first : layer_bufs[l - 1]);
    out.push_back(sep_pre ? at::empty({S, U, B}, opts) : pre[l]);
    in.push_back(dropping ? at::empty({S, U, B}, opts) : out[l]);
  }
  const bool fused = allow_fused && use_fused(xproj);
  const at::Tensor mask_f = masked && fused ? mask->to(opts.dtype()) : at::Tensor();
  CellForward cell{mode, head_scale, save};
  if (mode == kPure) cell.A = *A, cell.w_tau_abs = w_tau->abs();
  if (!fused) cell.hbuf = at::empty({H, B}, opts), cell.tmp = at::empty({H, B}, opts);
  // the fused kernel adds the head bias itself, so the head matmul needs no pre-filled output
  if (L > 0 && fused) cell.bias = *b_head;
  if (L > 0 && !fused) cell.bias_block = bias_block(*b_head, B);

  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = save ? t : 0;
    const at::Tensor hprev = t == 0 ? h0 : states[t - 1];
    at::Tensor z;  // (NH, B)
    if (L > 0) {
      at::Tensor layer_in;
      for (int64_t l = 0; l < L; ++l) {
        at::Tensor p = l == 0 ? first[t] : layer_bufs[l - 1][s];
        if (l > 0) p.copy_(layer_bias[l - 1]);
        p.addmm_(l == 0 ? w_rec : w_layers[l - 1], l == 0 ? hprev : layer_in);  // (U, B)
        at::Tensor o = sep_pre ? out[l][s] : p;  // pre_0 is indexed by t even when not saving
        act_forward(o, p, act);
        if (dropping) {
          at::Tensor d = in[l][s];
          at::mul_out(d, o, (*drop)[l][t]);
          layer_in = d;
        } else {
          layer_in = o;
        }
      }
      z = heads[s];
      if (fused) {
        at::mm_out(z, *w_head, layer_in);
      } else {
        z.copy_(cell.bias_block);
        z.addmm_(*w_head, layer_in);
      }
    } else {
      z = first[t];
      z.addmm_(w_rec, hprev);
    }

    at::Tensor st = states[t], f = ff[s], g = mode == kPure ? gate : gate[s];
    if (fused) {
      cell.fused(z, dt[t], masked ? mask_f[t] : at::Tensor(), hprev, f, g, st);
    } else {
      cell.generic(z, dt[t], masked ? (*mask)[t] : at::Tensor(), hprev, f, g, st);
    }
  }
  std::vector<at::Tensor> result = {states, heads, ff, gate};
  for (const auto* list : {&pre, &out, &in}) result.insert(result.end(), list->begin(), list->end());
  return result;
}

// Gradients of seq_forward's states. Returns [d xproj (T,N1,B), d h0 (H,B), d dt (T,1,B), d w_rec,
// d w_head, d b_head, d A (H,1), d w_tau (H,1), d w_layers..., d b_layers...].
std::vector<at::Tensor> seq_backward(const at::Tensor& grad_states, const at::Tensor& h0, const at::Tensor& dt,
                                     const std::optional<at::Tensor>& mask, const at::Tensor& w_rec,
                                     at::TensorList w_layers, const std::optional<at::Tensor>& w_head,
                                     const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& w_tau,
                                     const std::optional<at::Tensor>& drop, at::TensorList saved,
                                     int64_t n_layers, int64_t mode, int64_t act, double head_scale,
                                     bool allow_fused) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const at::Tensor &states = saved[0], &heads = saved[1], &ff = saved[2], &gate = saved[3];
  const int64_t L = n_layers;
  auto pre = [&](int64_t l) { return saved[4 + l]; };
  auto out = [&](int64_t l) { return saved[4 + L + l]; };
  auto in = [&](int64_t l) { return saved[4 + 2 * L + l]; };
  const int64_t T = states.size(0), H = states.size(1), B = states.size(2);
  const int64_t U = L > 0 ? w_rec.size(0) : 0;
  const int64_t NH = heads.size(1);
  const auto opts = states.options();
  const bool masked = mask.has_value() && mask->defined();
  const bool dropping = drop.has_value() && drop->defined();

  at::Tensor d_heads = at::empty({T, NH, B}, opts);
  at::Tensor d_pre = at::empty({L, T, U, B}, opts);  // d_pre[0] is d xproj when L > 0
  at::Tensor d_dt = at::empty({T, 1, B}, opts);
  at::Tensor carry = at::zeros({H, B}, opts);
  at::Tensor d_x = at::empty({U, B}, opts);
  at::Tensor d_w_rec = at::zeros_like(w_rec);
  at::Tensor d_w_head = L > 0 ? at::zeros_like(*w_head) : at::Tensor();
  std::vector<at::Tensor> d_w_layers;
  for (const auto& w : w_layers) d_w_layers.push_back(at::zeros_like(w));
  at::Tensor mask_f = masked ? mask->to(opts.dtype()) : at::Tensor();
  std::vector<at::Tensor> w_layers_t;
  for (const auto& w : w_layers) w_layers_t.push_back(w.t());
  const at::Tensor w_rec_t = w_rec.t();
  const at::Tensor w_head_t = L > 0 ? w_head->t() : at::Tensor();
  const bool fused = allow_fused && use_fused(states);
  const at::Tensor grad = fused ? grad_states.contiguous() : grad_states;
  CellBackward cell{mode, head_scale};
  if (mode == kPure) {
    cell.A = *A, cell.w_tau_abs = w_tau->abs();
    cell.acc_a = at::zeros({H, B}, opts), cell.acc_wtau = at::zeros({H, B}, opts);
  }
  if (!fused) {
    for (at::Tensor* b : {&cell.g, &cell.gk, &cell.tmp, &cell.tmp2}) *b = at::empty({H, B}, opts);
    cell.d_ff = at::empty({2 * H, B}, opts);
  }

  for (int64_t t = T - 1; t >= 0; --t) {
    at::Tensor dh = d_heads[t], ddt = d_dt[t];
    const at::Tensor mt = masked ? mask_f[t] : at::Tensor();
    const at::Tensor g = mode == kPure ? gate : gate[t];
    if (fused) {
      cell.fused(grad[t], carry, mt, heads[t], ff[t], g, dt[t], dh, ddt);
    } else {
      cell.generic(grad[t], carry, mt, heads[t], ff[t], g, dt[t], dh, ddt);
    }

    // weight gradients accumulate step by step while the step's tensors are hot in cache
    const at::Tensor hprev = t == 0 ? h0 : states[t - 1];
    at::Tensor first = dh;
    if (L > 0) {
      d_w_head.addmm_(dh, in(L - 1)[t].t());
      at::mm_out(d_x, w_head_t, dh);  // (U, B)
      for (int64_t l = L - 1; l >= 0; --l) {
        if (dropping) d_x.mul_((*drop)[l][t]);
        at::Tensor dp = d_pre[l][t];
        act_backward(dp, d_x, pre(l)[t], out(l)[t], act);
        if (l > 0) {
          d_w_layers[l - 1].addmm_(dp, in(l - 1)[t].t());
          at::mm_out(d_x, w_layers_t[l - 1], dp);
        }
      }
      first = d_pre[0][t];
    }
    d_w_rec.addmm_(first, hprev.t());
    carry.addmm_(w_rec_t, first);  // onto what padding passed straight through
  }

  const std::vector<int64_t> tb = {0, 2};
  at::Tensor d_first = L > 0 ? d_pre[0] : d_heads;  // (T, N1, B)
  std::vector<at::Tensor> result = {d_first, carry, d_dt, d_w_rec};
  result.push_back(L > 0 ? d_w_head : none_like(states));
  result.push_back(L > 0 ? d_heads.sum(tb) : none_like(states));
  if (mode == kPure) {
    result.push_back(cell.acc_a.sum(1, true));
    result.push_back(cell.acc_wtau.sum(1, true).mul_(w_tau->sign()));
  } else {
    result.push_back(none_like(states));
    result.push_back(none_like(states));
  }
  result.insert(result.end(), d_w_layers.begin(), d_w_layers.end());
  for (int64_t l = 1; l < L; ++l) result.push_back(d_pre[l].sum(tb));
  return result;
}

TORCH_LIBRARY(cfc_forecast, m) {
  m.def("seq_forward", &seq_forward);
  m.def("seq_backward", &seq_backward);
}
