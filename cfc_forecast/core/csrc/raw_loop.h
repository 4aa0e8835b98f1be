// The CPU sequence loop and its backward on raw pointers, for the common configuration (no mixed memory, tanh or
// relu backbone, float or double): no ATen call per step.
//
// Why: at B = 64, H = 64 a forward step's arithmetic is ~25 us, and the ATen loop spent ~20 us more per step on
// views (7 selects), op dispatch and the ATen tanh (profiled 2026-11-28: select 4.8 us, addmm_/mm dispatch ~5 us);
// the backward, with 5 matmuls and ~10 views per step, more. Here every matmul is a BLAS call into the library ATen
// itself calls (MKL's sgemm_/dgemm_ in torch's CPU build, with its threads) and everything else runs the fused
// kernels of cell_cpu.h, on pointers computed from the buffers' layout.
// Where torch exports no Fortran BLAS symbols (other builds), `available()` is false and the ATen loop runs.
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#endif

#include "cell_cpu.h"
#include "common.h"
#include "small_gemm.h"

namespace cfc {

template <typename T>
using GemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*, const int*,
                        const T*, const int*, const T*, T*, const int*);

// torch's own BLAS, looked up once in the already loaded libtorch_cpu (no link-time dependency on the symbol).
template <typename T>
GemmFn<T> find_gemm() {
#if defined(__linux__)
  static const GemmFn<T> fn = [] {
    void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* sym = lib == nullptr ? nullptr : dlsym(lib, sizeof(T) == 4 ? "sgemm_" : "dgemm_");
    return reinterpret_cast<GemmFn<T>>(sym);
  }();
  return fn;
#else
  return nullptr;
#endif
}

// C (M, N) = op(A) (M, K) @ op(X) (K, N) + beta * C on contiguous row-major blocks, op = transpose where asked
// (then A is stored (K, M), X (N, K)): the column-major call C^T = op(X)^T op(A)^T.
// With CFC_FORECAST_GEMM=own (cfc_gemm::enabled()), our own small GEMM (small_gemm.h) runs instead of the BLAS.
template <typename T>
inline void gemm_rows(GemmFn<T> gemm, const T* A, const T* X, T* C, int64_t M, int64_t K, int64_t N, T beta,
                      bool trans_a = false, bool trans_x = false) {
  if (!trans_a && cfc_gemm::enabled().load(std::memory_order_relaxed)) {
    cfc_gemm::gemm<T>(A, X, C, M, K, N, beta, trans_x);
    return;
  }
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ldx = trans_x ? k : m, lda = trans_a ? n : k;
  const T one(1);
  gemm(trans_x ? "T" : "N", trans_a ? "T" : "N", &m, &n, &k, &one, X, &ldx, A, &lda, &beta, C, &m);
}

// Whether torch exports the BLAS the raw loop calls, for this tensor's dtype (float or double, on the CPU).
inline bool raw_blas_found(const at::Tensor& like) {
  if (!use_fused(like)) return false;
  return like.scalar_type() == at::kFloat ? find_gemm<float>() != nullptr : find_gemm<double>() != nullptr;
}

// Whether the raw loop (forward and backward alike) runs this configuration: the fused CPU kernels, no mixed
// memory, a tanh or relu backbone, and the BLAS found; otherwise the ATen loop runs.
inline bool raw_applies(bool allowed, bool fused, bool memory, int64_t act, const at::Tensor& like) {
  return allowed && fused && !memory && (act == kTanh || act == kRelu) && like.is_contiguous() && raw_blas_found(like);
}

struct RawForward {
  // inputs: as seq_forward's, each contiguous; outputs: seq_forward's buffers, filled in place
  at::Tensor first, h0, dt, mask_f, w_rec, w_head, b_head, A, w_tau_abs, drop, states, heads, ff, gate;
  std::vector<at::Tensor> w_layers, layer_bias, layer_bufs, in;
  int64_t n_layers, mode, act;
  double head_scale;
  bool save;

  template <typename T>
  void run() {
    const GemmFn<T> gemm = find_gemm<T>();
    const int64_t T_ = first.size(0), N1 = first.size(1), B = first.size(2), H = h0.size(0);
    const int64_t L = n_layers;
    const int64_t U = L > 0 ? w_rec.size(0) : 0, NH = L > 0 ? w_head.size(0) : N1;
    const int64_t F = mode == kPure ? H : 2 * H;
    auto p = [](const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr; };
    T *x = p(first), *st = p(states), *hd = p(heads), *f = p(ff), *g = p(gate);
    const T *h_init = p(h0), *d = p(dt), *m = p(mask_f), *wr = p(w_rec), *wh = p(w_head), *bh = p(b_head);
    const T *dr = p(drop);
    std::vector<T*> bufs, ins;
    std::vector<const T*> wl, bl;
    for (const auto& t : layer_bufs) bufs.push_back(p(t));
    for (const auto& t : in) ins.push_back(p(t));
    for (const auto& t : w_layers) wl.push_back(p(t));
    for (const auto& t : layer_bias) bl.push_back(p(t));
    const T scale = static_cast<T>(head_scale);
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t s = save ? t : 0;
      const T* hprev = t == 0 ? h_init : st + (t - 1) * H * B;
      T* z;
      if (L > 0) {
        const T* layer_in = hprev;
        for (int64_t l = 0; l < L; ++l) {
          T* pre = l == 0 ? x + t * N1 * B : bufs[l - 1] + s * U * B;
          if (l > 0) std::memcpy(pre, bl[l - 1], sizeof(T) * U * B);
          gemm_rows<T>(gemm, l == 0 ? wr : wl[l - 1], layer_in, pre, U, l == 0 ? H : U, B, T(1));
          if (act == kTanh) {
            cfc_cpu::tanh_inplace<T>(pre, U * B);
          } else {
            cfc_cpu::relu_inplace<T>(pre, U * B);
          }
          layer_in = pre;
          if (dr != nullptr) {
            T* out = ins[l] + s * U * B;
            cfc_cpu::mul_into<T>(out, pre, dr + (l * T_ + t) * U * B, U * B);
            layer_in = out;
          }
        }
        z = hd + s * NH * B;
        gemm_rows<T>(gemm, wh, layer_in, z, NH, U, B, T(0));
      } else {
        z = x + t * N1 * B;
        gemm_rows<T>(gemm, wr, hprev, z, NH, H, B, T(1));
      }
      const T* mt = m == nullptr ? nullptr : m + t * B;
      if (mode == kPure) {
        cfc_cpu::pure_forward<T>(z, bh, d + t * B, mt, hprev, p(A), p(w_tau_abs), f + s * F * B, st + t * H * B, H,
                                 B, save);
      } else {
        cfc_cpu::gated_forward<T>(z, bh, d + t * B, mt, hprev, f + s * F * B, g + s * H * B, st + t * H * B, H, B,
                                  mode == kNoGate, scale, save);
      }
    }
  }
};

// The backward of RawForward (saved buffers as seq_forward returns them): per step the fused cell backward, the
// backbone's backward and the weight gradients as BLAS calls on pointers, no ATen call per step.
struct RawBackward {
  at::Tensor grad, h0, dt, mask_f, states, heads, ff, gate, drop;    // inputs, contiguous
  at::Tensor w_rec_t, w_head_t, A, w_tau_abs;                       // transposed weights (contiguous copies)
  std::vector<at::Tensor> w_layers_t, out, in;                       // per layer
  at::Tensor d_heads, d_pre, d_dt, carry, d_w_rec, d_w_head, acc_a, acc_wtau, d_x;  // outputs and scratch
  std::vector<at::Tensor> d_w_layers;
  int64_t n_layers, mode, act;
  double head_scale;

  template <typename T>
  void run() {
    const GemmFn<T> gemm = find_gemm<T>();
    const int64_t T_ = states.size(0), H = states.size(1), B = states.size(2);
    const int64_t L = n_layers, NH = heads.size(1), U = L > 0 ? w_rec_t.size(1) : 0;
    const int64_t N1 = L > 0 ? U : NH, F = mode == kPure ? H : 2 * H;
    auto p = [](const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr; };
    const T *g_in = p(grad), *h_init = p(h0), *d = p(dt), *m = p(mask_f), *st = p(states), *hd = p(heads);
    const T *f = p(ff), *gt = p(gate), *dr = p(drop), *wr_t = p(w_rec_t), *wh_t = p(w_head_t);
    T *dh_all = p(d_heads), *dp_all = p(d_pre), *ddt = p(d_dt), *c = p(carry), *dwr = p(d_w_rec);
    T *dwh = p(d_w_head), *dx = p(d_x);
    std::vector<const T*> wl_t, outs, ins;
    std::vector<T*> dwl;
    for (const auto& t : w_layers_t) wl_t.push_back(p(t));
    for (const auto& t : out) outs.push_back(p(t));
    for (const auto& t : in) ins.push_back(p(t));
    for (const auto& t : d_w_layers) dwl.push_back(p(t));
    const T scale = static_cast<T>(head_scale);
    const int64_t UB = U * B;
    for (int64_t t = T_ - 1; t >= 0; --t) {
      T* dh = dh_all + t * NH * B;
      const T* mt = m == nullptr ? nullptr : m + t * B;
      if (mode == kPure) {
        cfc_cpu::pure_backward<T>(g_in + t * H * B, c, mt, hd + t * NH * B, f + t * F * B, p(A), p(w_tau_abs),
                                  d + t * B, dh, ddt + t * B, p(acc_a), p(acc_wtau), H, B);
      } else {
        cfc_cpu::gated_backward<T>(g_in + t * H * B, c, mt, hd + t * NH * B, f + t * F * B, gt + t * H * B,
                                   d + t * B, dh, ddt + t * B, H, B, mode == kNoGate, scale);
      }
      const T* hprev = t == 0 ? h_init : st + (t - 1) * H * B;
      const T* first = dh;
      if (L > 0) {
        gemm_rows<T>(gemm, dh, ins[L - 1] + t * UB, dwh, NH, B, U, T(1), false, true);  // d w_head += dh in^T
        gemm_rows<T>(gemm, wh_t, dh, dx, U, NH, B, T(0));                               // d x = w_head^T dh
        for (int64_t l = L - 1; l >= 0; --l) {
          if (dr != nullptr) cfc_cpu::mul_into<T>(dx, dx, dr + (l * T_ + t) * UB, UB);
          T* dp = dp_all + (l * T_ + t) * UB;
          if (act == kTanh) {
            cfc_cpu::tanh_backward<T>(dp, dx, outs[l] + t * UB, UB);
          } else {
            cfc_cpu::relu_backward<T>(dp, dx, outs[l] + t * UB, UB);
          }
          if (l > 0) {
            gemm_rows<T>(gemm, dp, ins[l - 1] + t * UB, dwl[l - 1], U, B, U, T(1), false, true);
            gemm_rows<T>(gemm, wl_t[l - 1], dp, dx, U, U, B, T(0));
          }
        }
        first = dp_all + t * UB;
      }
      gemm_rows<T>(gemm, first, hprev, dwr, N1, B, H, T(1), false, true);  // d w_rec += first hprev^T
      gemm_rows<T>(gemm, wr_t, first, c, H, N1, B, T(1));                  // carry += w_rec^T first
    }
  }
};

}  // namespace cfc
