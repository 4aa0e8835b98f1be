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
// The Python wrapper (cfc_forecast/core/native.py) hoists the input half of the first layer out of the loop (xproj),
// folds lecun_tanh's constants into the weights (so the loop only knows tanh) and owns the autograd Function.
// Only ATen ops are used, so the same code runs on CPU and CUDA tensors.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cell_step.h"
#include "memory_step.h"
#include "pool.h"
#include "raw_loop.h"

using namespace cfc;

// xproj (T,N1,B), h0 (H,B), dt (T,1,B), mask (T,1,B) bool, w_rec (N1,H), w_layers (U,U), b_layers (U),
// w_head (NH,U), b_head (NH), A and w_tau (H,1), drop (L,T,U,B); with mixed memory (wiring 1: ncps, 2: paper)
// memory = [mproj (T,4H,B), c0 (H,B), w_mrec (4H,H)] and, paper wiring, w_x (N1,H), the CfC's input weight
// applied to the LSTM's output (xproj then holds only the first layer's bias). xproj and mproj are overwritten.
// Returns [states (T,H,B), heads (S,NH,B), ff (S,2H,B) | E (S,H,B), gate (S,H,B), then per backbone layer
// pre_l, out_l, in_l (S,U,B) (pre_0 is (T,U,B)), then c_states (T,H,B), lstm activations (T,4H,B),
// tanh(c') (S,H,B), lstm output (S,H,B)]; S = T when saving for backward, else 1. Buffers are shared
// where values are: without a backbone heads is the projected input; out_l is pre_l for tanh and relu
// (activated in place), in_l is out_l without dropout. Tensors a configuration does not use are empty.
std::vector<at::Tensor> seq_forward(const at::Tensor& xproj, const at::Tensor& h0, const at::Tensor& dt,
                                    const std::optional<at::Tensor>& mask, const at::Tensor& w_rec,
                                    at::TensorList w_layers, at::TensorList b_layers,
                                    const std::optional<at::Tensor>& w_head,
                                    const std::optional<at::Tensor>& b_head,
                                    const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& w_tau,
                                    const std::optional<at::Tensor>& drop, at::TensorList memory, int64_t n_layers,
                                    int64_t mode, int64_t act, int64_t wiring, double head_scale, double forget_bias,
                                    bool save, bool allow_fused, bool allow_raw) {
  at::AutoDispatchBelowADInplaceOrView guard;  // no autograd bookkeeping per op: the wrapper owns the graph
  DenormalsAreZero ftz(xproj.is_cpu());
  const int64_t T = xproj.size(0), B = xproj.size(2), H = h0.size(0);
  const int64_t L = n_layers;
  const int64_t U = L > 0 ? w_rec.size(0) : 0;
  const int64_t S = save ? T : 1;
  const auto opts = xproj.options();
  const bool masked = mask.has_value() && mask->defined();
  const bool dropping = drop.has_value() && drop->defined();
  const bool sep_pre = keeps_pre(act);

  at::Tensor states = pooled_empty({T, H, B}, opts);
  // the steps' matmuls accumulate in place onto the hoisted input projections: xproj and mproj are the
  // wrapper's temporaries (nothing else reads them), so the loop takes them over instead of copying
  at::Tensor first = xproj;
  std::vector<at::Tensor> layer_bufs, layer_bias;
  for (int64_t l = 1; l < L; ++l) {
    layer_bufs.push_back(pooled_empty({S, U, B}, opts));
    layer_bias.push_back(bias_block(b_layers[l - 1], B));
  }
  at::Tensor ff = pooled_empty({S, mode == kPure ? H : 2 * H, B}, opts);
  at::Tensor gate = mode == kPure ? none_like(xproj) : pooled_empty({S, H, B}, opts);
  at::Tensor heads = L > 0 ? pooled_empty({S, b_head->size(0), B}, opts) : first;
  // per layer: pre-activation (silu, gelu) or, activated in place, the output (tanh, relu); output; dropped
  std::vector<at::Tensor> pre, out, in;
  for (int64_t l = 0; l < L; ++l) {
    pre.push_back(l == 0 ? first : layer_bufs[l - 1]);
    out.push_back(sep_pre ? pooled_empty({S, U, B}, opts) : pre[l]);
    in.push_back(dropping ? pooled_empty({S, U, B}, opts) : out[l]);
  }
  const bool fused = allow_fused && use_fused(xproj);
  const at::Tensor mask_f = masked && fused ? mask->to(opts.dtype()) : at::Tensor();
  CellForward cell{mode, head_scale, save};
  if (mode == kPure) cell.A = *A, cell.w_tau_abs = w_tau->abs();
  if (!fused) cell.hbuf = at::empty({H, B}, opts), cell.tmp = at::empty({H, B}, opts);
  // the fused kernel adds the head bias itself, so the head matmul needs no pre-filled output
  if (L > 0 && fused) cell.bias = *b_head;
  if (L > 0 && !fused) cell.bias_block = bias_block(*b_head, B);
  // mixed memory: the LSTM's pre-activations accumulate onto its hoisted input projection like `first`
  const bool mem = wiring != kNoMemory;
  at::Tensor lstm = mem ? memory[0] : none_like(xproj);
  at::Tensor c_states = mem ? pooled_empty({T, H, B}, opts) : none_like(xproj);
  at::Tensor tc = mem ? pooled_empty({S, H, B}, opts) : none_like(xproj);
  at::Tensor m_out = mem ? pooled_empty({S, H, B}, opts) : none_like(xproj);
  MemoryStep memory_step{fused, forget_bias};
  if (mem && !fused) memory_step.c_buf = at::empty({H, B}, opts);

  const bool raw = raw_applies(allow_raw, fused, mem, act, xproj);
  if (raw) {
    auto c = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() ? t->contiguous() : at::Tensor(); };
    RawForward loop{first, h0.contiguous(), dt.contiguous(), mask_f, w_rec.contiguous(), c(w_head), c(b_head),
                    mode == kPure ? cell.A.contiguous() : at::Tensor(),
                    mode == kPure ? cell.w_tau_abs.contiguous() : at::Tensor(), dropping ? drop->contiguous() : at::Tensor(),
                    states, heads, ff, gate};
    for (const auto& w : w_layers) loop.w_layers.push_back(w.contiguous());
    for (const auto& b : layer_bias) loop.layer_bias.push_back(b);
    loop.layer_bufs = layer_bufs;
    if (dropping) loop.in = in;
    loop.n_layers = L, loop.mode = mode, loop.act = act, loop.head_scale = head_scale, loop.save = save;
    AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "cfc_raw_forward", [&] { loop.run<scalar_t>(); });
  }
  for (int64_t t = 0; t < (raw ? 0 : T); ++t) {
    const int64_t s = save ? t : 0;
    const at::Tensor hprev = t == 0 ? h0 : states[t - 1];
    at::Tensor rec_in = hprev;  // what the CfC's recurrent weights read
    if (mem) {
      at::Tensor zl = lstm[t], c_new = c_states[t], o = m_out[s], tct = tc[s];
      zl.addmm_(memory[2], hprev);  // (4H, B)
      memory_step.forward(zl, t == 0 ? memory[1] : c_states[t - 1], masked && fused ? mask_f[t] : at::Tensor(),
                          masked && !fused ? (*mask)[t] : at::Tensor(), c_new, o, tct);
      if (wiring == kNcpsWiring) {
        rec_in = o;  // ncps: the CfC reads the LSTM's output as its previous state
      } else {
        first[t].addmm_(memory[3], o);  // paper: the LSTM's output is the CfC's input
      }
    }
    at::Tensor z;  // (NH, B)
    if (L > 0) {
      at::Tensor layer_in;
      for (int64_t l = 0; l < L; ++l) {
        at::Tensor p = l == 0 ? first[t] : layer_bufs[l - 1][s];
        if (l > 0) p.copy_(layer_bias[l - 1]);
        p.addmm_(l == 0 ? w_rec : w_layers[l - 1], l == 0 ? rec_in : layer_in);  // (U, B)
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
      z.addmm_(w_rec, rec_in);
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
  result.insert(result.end(), {c_states, lstm, tc, m_out});
  return result;
}

// Gradients of seq_forward's states (and cell states, grad_c). Returns [d xproj (T,N1,B), d h0 (H,B),
// d dt (T,1,B), d w_rec, d w_head, d b_head, d A (H,1), d w_tau (H,1), d mproj, d c0, d w_mrec, d w_x,
// d w_layers..., d b_layers...], empty where a configuration has no such tensor.
std::vector<at::Tensor> seq_backward(const at::Tensor& grad_states, const at::Tensor& h0, const at::Tensor& dt,
                                     const std::optional<at::Tensor>& mask, const at::Tensor& w_rec,
                                     at::TensorList w_layers, const std::optional<at::Tensor>& w_head,
                                     const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& w_tau,
                                     const std::optional<at::Tensor>& drop, at::TensorList saved,
                                     at::TensorList memory, const at::Tensor& grad_c, int64_t n_layers,
                                     int64_t mode, int64_t act, int64_t wiring, double head_scale,
                                     bool allow_fused, bool allow_raw) {
  at::AutoDispatchBelowADInplaceOrView guard;
  DenormalsAreZero ftz(grad_states.is_cpu());
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

  at::Tensor d_heads = pooled_empty({T, NH, B}, opts);
  at::Tensor d_pre = pooled_empty({L, T, U, B}, opts);  // d_pre[0] is d xproj when L > 0
  at::Tensor d_dt = at::empty({T, 1, B}, opts);
  at::Tensor carry = at::zeros({H, B}, opts);
  at::Tensor d_x = at::empty({U, B}, opts);
  at::Tensor d_w_rec = at::zeros_like(w_rec);
  at::Tensor d_w_head = L > 0 ? at::zeros_like(*w_head) : at::Tensor();
  std::vector<at::Tensor> d_w_layers;
  for (const auto& w : w_layers) d_w_layers.push_back(at::zeros_like(w));
  at::Tensor mask_f = masked ? mask->to(opts.dtype()) : at::Tensor();
  std::vector<at::Tensor> w_layers_t;
  // transposed weights as contiguous copies: MKL runs these small matmuls 2-10x slower on transposed views
  auto transposed = [](const at::Tensor& w) { return w.t().contiguous(); };
  for (const auto& w : w_layers) w_layers_t.push_back(transposed(w));
  const at::Tensor w_rec_t = transposed(w_rec);
  const at::Tensor w_head_t = L > 0 ? transposed(*w_head) : at::Tensor();
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
  const bool mem = wiring != kNoMemory;
  const int64_t m0 = 4 + 3 * L;  // saved: c_states, lstm activations, tanh(c'), lstm output
  at::Tensor carry_c, d_lstm, d_out, d_w_mrec, d_w_x, g_c, w_mrec_t, w_x_t;
  MemoryStep memory_step{fused, 0.0};
  if (mem) {
    carry_c = at::zeros({H, B}, opts);
    d_lstm = pooled_empty({T, 4 * H, B}, opts);
    d_out = at::empty({H, B}, opts);
    d_w_mrec = at::zeros_like(memory[2]);
    w_mrec_t = transposed(memory[2]);
    if (wiring == kPaperWiring) d_w_x = at::zeros_like(memory[3]), w_x_t = transposed(memory[3]);
    g_c = fused ? grad_c.contiguous() : grad_c;
    if (!fused) {
      for (at::Tensor* b : {&memory_step.tmp, &memory_step.tmp2, &memory_step.dc}) *b = at::empty({H, B}, opts);
    }
  }

  const bool raw = raw_applies(allow_raw, fused, mem, act, states);
  if (raw) {
    RawBackward loop;
    loop.grad = grad, loop.h0 = h0.contiguous(), loop.dt = dt.contiguous(), loop.mask_f = mask_f;
    loop.states = states, loop.heads = heads, loop.ff = ff, loop.gate = gate;
    loop.drop = dropping ? drop->contiguous() : at::Tensor();
    loop.w_rec_t = w_rec_t, loop.w_head_t = w_head_t, loop.A = mode == kPure ? cell.A.contiguous() : at::Tensor();
    loop.w_tau_abs = mode == kPure ? cell.w_tau_abs.contiguous() : at::Tensor();
    loop.w_layers_t = w_layers_t;
    for (int64_t l = 0; l < L; ++l) loop.out.push_back(out(l)), loop.in.push_back(in(l));
    loop.d_heads = d_heads, loop.d_pre = d_pre, loop.d_dt = d_dt, loop.carry = carry, loop.d_w_rec = d_w_rec;
    loop.d_w_head = d_w_head, loop.acc_a = cell.acc_a, loop.acc_wtau = cell.acc_wtau, loop.d_x = d_x;
    loop.d_w_layers = d_w_layers;
    loop.n_layers = L, loop.mode = mode, loop.act = act, loop.head_scale = head_scale;
    AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "cfc_raw_backward", [&] { loop.run<scalar_t>(); });
  }
  for (int64_t t = raw ? -1 : T - 1; t >= 0; --t) {
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
    const at::Tensor rec_in = wiring == kNcpsWiring ? saved[m0 + 3][t] : hprev;
    d_w_rec.addmm_(first, rec_in.t());
    if (wiring == kNcpsWiring) {
      at::mm_out(d_out, w_rec_t, first);  // the LSTM's output was the CfC's previous state
    } else {
      carry.addmm_(w_rec_t, first);  // onto what padding passed straight through
    }
    if (wiring == kPaperWiring) {
      at::mm_out(d_out, w_x_t, first);  // the LSTM's output was the CfC's input
      d_w_x.addmm_(first, saved[m0 + 3][t].t());
    }
    if (mem) {
      at::Tensor dl = d_lstm[t];
      memory_step.backward(d_out, g_c[t], carry_c, mt, saved[m0 + 1][t], saved[m0 + 2][t],
                           t == 0 ? memory[1] : saved[m0][t - 1], dl);
      d_w_mrec.addmm_(dl, hprev.t());
      carry.addmm_(w_mrec_t, dl);
    }
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
  for (const at::Tensor& d : {d_lstm, carry_c, d_w_mrec, d_w_x}) result.push_back(d.defined() ? d : none_like(states));
  result.insert(result.end(), d_w_layers.begin(), d_w_layers.end());
  for (int64_t l = 1; l < L; ++l) result.push_back(d_pre[l].sum(tb));
  return result;
}

// An uninitialised CPU tensor from the loop's buffer cache, for the wrapper's own temporaries (the projections).
at::Tensor pool_empty(at::IntArrayRef size, at::ScalarType dtype) {
  return pooled_empty(size, at::TensorOptions().dtype(dtype));
}

// Whether the raw-pointer loop and backward run here (torch exports its BLAS), for float and double.
bool raw_loop_available() {
  return raw_blas_found(at::empty({0}, at::kFloat)) && raw_blas_found(at::empty({0}, at::kDouble));
}

// Our own small GEMM (small_gemm.h) instead of the BLAS in the raw loop, from now on in this process; returns the
// previous setting.
bool set_own_gemm(bool on) { return cfc_gemm::enabled().exchange(on); }

TORCH_LIBRARY(cfc_forecast, m) {
  m.def("raw_loop_available", &raw_loop_available);
  m.def("set_own_gemm", &set_own_gemm);
  m.def("pool_empty", &pool_empty);
  m.def("seq_forward", &seq_forward);
  m.def("seq_backward", &seq_backward);
}
