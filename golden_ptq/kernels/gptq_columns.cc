// GPTQ's column loop (golden_ptq/algorithm/modules/gptq.py, gptq_round): round the columns of one
// block one at a time and spread each column's rounding error over the block's later columns.
//
// Called through ctypes on numpy arrays: float32, what GPTQ runs in, or float64 (``_f32`` / ``_f64``
// entry points, one template). It must give the numpy loop's bits exactly, so the arithmetic is the
// reference's, operation for operation: nearbyint is numpy's round (half to
// even under the default rounding mode), division stays division, and nothing here may use FMA
// (the package's flags do not enable it, the AVX2 clone is built for "avx2" alone, which does not
// include FMA, and the AVX-512 clone, whose target does, is compiled with fp-contract=off), so
// `b -= u * e` rounds the product and then the difference, as numpy's outer-product-then-subtract
// does. Wider vectors change nothing else: lanes are independent.
#include <cmath>
#include <cstdint>
#include <vector>

#include "gp_runtime.h"

namespace {

constexpr int64_t kRowTile = 256;   // rows whose errors stay in cache while the block's columns pass
constexpr int64_t kLanes = 32;      // rows held in registers while a column takes the errors

// x[l] -= f[k] * e[k * rows + l] for k = 0, 1, ... count - 1 in that order, l < lanes: the updates
// one column takes, each element seeing them in the same order as one column after the other.
template <typename T>
inline __attribute__((always_inline)) void take_errors(T* x, const T* e, const T* f, int64_t count, int64_t rows,
                                                      int64_t lanes) {
  if (lanes == kLanes) {
    T acc[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = x[l];
    for (int64_t k = 0; k < count; ++k) {
      const T factor = f[k];
      const T* ek = e + k * rows;
      for (int64_t l = 0; l < kLanes; ++l) acc[l] -= factor * ek[l];
    }
    for (int64_t l = 0; l < kLanes; ++l) x[l] = acc[l];
    return;
  }
  for (int64_t l = 0; l < lanes; ++l) {
    T acc = x[l];
    for (int64_t k = 0; k < count; ++k) acc -= f[k] * e[k * rows + l];
    x[l] = acc;
  }
}

// block_t [block_cols, rows]: the block's columns, one contiguous row each (updated in place).
// Columns [begin, end) are rounded, here rows [r0, r1) of them; column i of the block is input
// column start + i.
// u [in, in] (row stride u_stride): the upper Cholesky factor of the damped inverse Hessian.
// group_of[i]: the group whose scale/zero rows ([groups, rows]) column i uses.
// codes_t int8 [in, rows]: row start + i receives column i's codes (integers on the grid);
// errors_t [block_cols, rows]: their errors.
//
// The reference spreads each column's error over all later columns at once (right-looking); here
// each later column takes the errors of the columns before it just before it is rounded
// (left-looking), a few rows at a time in registers. Rows never mix, and every element gets the
// same operations in the same order, so the bits are the same.
#define GP_GPTQ_ARGS(T)                                                                              \
  T *block_t, int64_t block_cols, int64_t rows, int64_t begin, int64_t end, const T *u, int64_t u_stride, \
      int64_t start, const int64_t *group_of, const T *scale, const T *zero, double qmin, double qmax,   \
      int8_t *codes_t, T *errors_t
#define GP_GPTQ_PASS \
  block_t, block_cols, rows, begin, end, u, u_stride, start, group_of, scale, zero, qmin, qmax, codes_t, errors_t

// The tile's errors are also kept in a local copy ``local [end - begin, kPad]``: errors_t's rows lie
// ``rows`` floats apart, and for a head's 49152 rows (3 * 2^14) every row of a tile's errors falls
// in the same cache sets, so reading them back for each later column missed the caches.
constexpr int64_t kPad = kRowTile + 16;   // the local rows' stride: consecutive rows start in different sets

template <typename T>
inline __attribute__((always_inline)) void Columns(GP_GPTQ_ARGS(T), int64_t r0, int64_t r1) {
  const T lo = static_cast<T>(qmin), hi = static_cast<T>(qmax);
  std::vector<T> factors(static_cast<size_t>(block_cols));
  std::vector<T> local(static_cast<size_t>((end - begin) * kPad));
  for (int64_t j = begin; j < block_cols; ++j) {
    const int64_t taken = (j < end ? j : end) - begin;   // columns begin .. begin + taken - 1
    for (int64_t k = 0; k < taken; ++k) factors[k] = u[(start + begin + k) * u_stride + start + j];
    T* column = block_t + j * rows;
    const int64_t col = start + j;
    for (int64_t r = r0; r < r1; r += kLanes) {
      const int64_t lanes = r1 - r < kLanes ? r1 - r : kLanes;
      take_errors(column + r, local.data() + (r - r0), factors.data(), taken, kPad, lanes);
      if (j >= end) continue;
      const T* s = scale + group_of[j] * rows;
      const T* z = zero + group_of[j] * rows;
      const T diag = u[col * u_stride + col];
      int8_t* codes = codes_t + col * rows;
      T* err = errors_t + j * rows;
      T* kept = local.data() + (j - begin) * kPad - r0;
      for (int64_t l = r; l < r + lanes; ++l) {
        T q = std::nearbyint(column[l] / s[l]);
        q += z[l];
        q = q < lo ? lo : (q > hi ? hi : q);
        codes[l] = static_cast<int8_t>(q);
        err[l] = kept[l] = (column[l] - (q - z[l]) * s[l]) / diag;
      }
    }
  }
}

template <typename T>
__attribute__((target("avx2"))) void ColumnsAvx2(GP_GPTQ_ARGS(T), int64_t r0, int64_t r1) {
  Columns<T>(GP_GPTQ_PASS, r0, r1);
}
template <typename T>
__attribute__((target("avx512f"), optimize("fp-contract=off"))) void ColumnsAvx512(GP_GPTQ_ARGS(T), int64_t r0,
                                                                                    int64_t r1) {
  Columns<T>(GP_GPTQ_PASS, r0, r1);
}
template <typename T>
void ColumnsPortable(GP_GPTQ_ARGS(T), int64_t r0, int64_t r1) {
  Columns<T>(GP_GPTQ_PASS, r0, r1);
}

// GPTQ's column loop, as Columns above says, a tile of rows at a time, in the widest vectors the
// kernels may use. (Tiles could go to the thread pool; on two busy cores that measured slower.)
template <typename T>
int GptqColumns(GP_GPTQ_ARGS(T)) {
  if (begin < 0 || end > block_cols || rows <= 0) return 1;
  const int isa = gp::CurrentIsa();
  for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
    const int64_t r1 = r0 + kRowTile < rows ? r0 + kRowTile : rows;
    if (isa >= gp::kAvx512Vnni) {
      ColumnsAvx512<T>(GP_GPTQ_PASS, r0, r1);
    } else if (isa >= gp::kAvx2) {
      ColumnsAvx2<T>(GP_GPTQ_PASS, r0, r1);
    } else {
      ColumnsPortable<T>(GP_GPTQ_PASS, r0, r1);
    }
  }
  return 0;
}

// body(r0, r1, c0, c1) over [0, rows) x [0, cols) in 32 x 32 tiles, row tiles outermost: the
// transposing loops below read and write both sides a cache line at a time.
template <typename Body>
inline void ForTiles(int64_t rows, int64_t cols, Body body) {
  constexpr int64_t kTile = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = r0 + kTile < rows ? r0 + kTile : rows;
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) body(r0, r1, c0, c0 + kTile < cols ? c0 + kTile : cols);
  }
}

// a [rows, cols] -= b^T, b [cols, rows]: GPTQ's lazy update of the later columns (a: rows of the
// transposed weight) by a product computed as [out, in]. One subtraction per element.
template <typename T>
void SubtractTransposed(T* a, int64_t rows, int64_t cols, const T* b) {
  ForTiles(rows, cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) a[r * cols + c] -= b[c * rows + r];
  });
}

// out [cols, rows], out[i, r] = w[r, perm[i]] (w [rows, w_cols]): GPTQ's transposed weight, its
// input columns in visiting order. Copies only.
template <typename T>
void GatherTransposed(const T* w, int64_t rows, int64_t w_cols, const int64_t* perm, int64_t cols, T* out) {
  ForTiles(rows, cols, [&](int64_t r0, int64_t r1, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* source = w + perm[i];
      T* target = out + i * rows;
      for (int64_t r = r0; r < r1; ++r) target[r] = source[r * w_cols];
    }
  });
}

// out [n, n], out[i, j] = h[order[i], order[j]] (h float64 [n, n]), stored as T; then the diagonal
// out[i, i] = diag[i]: GPTQ's damped Hessian in visiting order, in one pass and one array (numpy's
// two takes and the cast made three, the second take reading h down its columns).
template <typename T>
void PermuteSquare(const double* h, int64_t n, const int64_t* order, const double* diag, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double* source = h + order[i] * n;
    T* target = out + i * n;
    for (int64_t j = 0; j < n; ++j) target[j] = static_cast<T>(source[order[j]]);
    target[i] = static_cast<T>(diag[i]);
  }
}

// Whether every index[i] (i < count) lies in [0, bound).
bool InRange(const int64_t* index, int64_t count, int64_t bound) {
  for (int64_t i = 0; i < count; ++i)
    if (index[i] < 0 || index[i] >= bound) return false;
  return true;
}

}  // namespace

extern "C" {

int gp_gptq_columns_f32(GP_GPTQ_ARGS(float)) { return GptqColumns<float>(GP_GPTQ_PASS); }
int gp_gptq_columns_f64(GP_GPTQ_ARGS(double)) { return GptqColumns<double>(GP_GPTQ_PASS); }
void gp_subtract_transposed_f32(float* a, int64_t rows, int64_t cols, const float* b) {
  SubtractTransposed<float>(a, rows, cols, b);
}
void gp_subtract_transposed_f64(double* a, int64_t rows, int64_t cols, const double* b) {
  SubtractTransposed<double>(a, rows, cols, b);
}
// Returns 1 (nothing written) when a column index is out of range.
#define GP_GATHER_TRANSPOSED(T, SUFFIX)                                                                   \
  int gp_gather_transposed_##SUFFIX(const T* w, int64_t rows, int64_t w_cols, const int64_t* perm, int64_t cols, \
                                    T* out) {                                                              \
    if (!InRange(perm, cols, w_cols)) return 1;                                                          \
    GatherTransposed<T>(w, rows, w_cols, perm, cols, out);                                                 \
    return 0;                                                                                              \
  }
GP_GATHER_TRANSPOSED(float, f32)
GP_GATHER_TRANSPOSED(double, f64)

// Returns 1 (nothing written) when an index of ``order`` is out of range.
#define GP_PERMUTE_SQUARE(T, SUFFIX)                                                                        \
  int gp_permute_square_##SUFFIX(const double* h, int64_t n, const int64_t* order, const double* diag, T* out) { \
    if (!InRange(order, n, n)) return 1;                                                                 \
    PermuteSquare<T>(h, n, order, diag, out);                                                              \
    return 0;                                                                                              \
  }
GP_PERMUTE_SQUARE(float, f32)
GP_PERMUTE_SQUARE(double, f64)

}  // extern "C"
