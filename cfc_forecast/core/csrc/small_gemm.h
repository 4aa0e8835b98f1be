// Our own small GEMM for the raw loop's per-step matmuls (opt-in: CFC_FORECAST_GEMM=own, see native.py).
//
// Why: the raw loop calls torch's BLAS (MKL's sgemm_ in torch's CPU build) six times per step at tiny shapes
// (64 x 128 x 64 and the like); which kernel MKL picks depends on the CPU's vendor, not only on its ISA (on this
// project's AMD EPYC with AVX-512 its verbose header names the generic "Intel(R) Architecture processors" path).
// This kernel is compiled with the loop's own flags (AVX-512 or AVX2 through at::vec::Vectorized, native.py), so it
// takes the same ISA path on every x86 vendor. It is a plain register-blocked outer-product kernel: a block of MR
// rows of C times NV vectors of columns stays in registers over the whole K loop (the operands of these shapes fit
// in L1/L2), each step broadcasting one A value per row against NV loaded vectors of X's row k.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace cfc_gemm {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Whether gemm_rows (raw_loop.h) runs this kernel instead of the BLAS; set per call of the loop by native.py.
inline std::atomic<bool>& enabled() {
  static std::atomic<bool> flag{false};
  return flag;
}

// C[i:i+MR, j:j+NV*W] = A[i:i+MR, :] @ X[:, j:j+NV*W] + beta * C (the last vector may be partial: `tail` columns).
template <typename T, int MR, int NV>
inline void block(const T* A, const T* X, T* C, int64_t K, int64_t N, int64_t i, int64_t j, int64_t tail, T beta) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc[MR][NV];
  auto count = [&](int v) { return v == NV - 1 ? tail : W; };
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (beta == T(0)) {
        acc[r][v] = Vec<T>(T(0));  // C is not read: it may hold anything
      } else {
        const T* c = C + (i + r) * N + j + v * W;
        const Vec<T> old = count(v) == W ? Vec<T>::loadu(c) : Vec<T>::loadu(c, count(v));
        acc[r][v] = beta == T(1) ? old : old * Vec<T>(beta);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> x[NV];
    const T* xk = X + k * N + j;
    for (int v = 0; v < NV; ++v) x[v] = count(v) == W ? Vec<T>::loadu(xk + v * W) : Vec<T>::loadu(xk + v * W, count(v));
    for (int r = 0; r < MR; ++r) {
      const Vec<T> a(A[(i + r) * K + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(a, x[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      T* c = C + (i + r) * N + j + v * W;
      if (count(v) == W) {
        acc[r][v].store(c);
      } else {
        acc[r][v].store(c, count(v));
      }
    }
  }
}

// Rows [r0, r1) of C (M, N) = A (M, K) @ X (K, N) + beta * C, all row-major and contiguous.
template <typename T>
inline void rows_nn(const T* A, const T* X, T* C, int64_t K, int64_t N, int64_t r0, int64_t r1, T beta) {
  constexpr int MR = 4, NV = 2;
  constexpr int64_t W = Vec<T>::size(), NB = NV * W;
  for (int64_t j = 0; j < N; j += NB) {
    const int64_t cols = std::min(NB, N - j);
    int64_t i = r0;
    if (cols == NB) {
      for (; i + MR <= r1; i += MR) block<T, MR, NV>(A, X, C, K, N, i, j, W, beta);
      for (; i < r1; ++i) block<T, 1, NV>(A, X, C, K, N, i, j, W, beta);
    } else if (cols > W) {
      for (; i < r1; ++i) block<T, 1, 2>(A, X, C, K, N, i, j, cols - W, beta);
    } else {
      for (; i < r1; ++i) block<T, 1, 1>(A, X, C, K, N, i, j, cols, beta);
    }
  }
}

// C (M, N) = op(A) @ op(X) + beta * C as gemm_rows (raw_loop.h) asks: A (M, K), X (K, N), or X stored (N, K) when
// trans_x (then copied transposed into a scratch buffer first: at most K x N values, e.g. 64 x 128). Rows of C are
// split over torch's intra-op threads where the matmul is large enough to pay for it.
template <typename T>
void gemm(const T* A, const T* X, T* C, int64_t M, int64_t K, int64_t N, T beta, bool trans_x) {
  thread_local std::vector<T> scratch;
  if (trans_x) {
    scratch.resize(static_cast<size_t>(K * N));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) scratch[k * N + n] = X[n * K + k];
    }
    X = scratch.data();
  }
  constexpr int64_t MR = 4;
  const int64_t blocks = (M + MR - 1) / MR;
  // about 256 K-long row-block updates per task (~ 2 x 64 x 64 x 4 x 256 flops): below that, one thread
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, K * N));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    rows_nn<T>(A, X, C, K, N, b0 * MR, std::min(M, b1 * MR), beta);
  });
}

}  // namespace cfc_gemm
