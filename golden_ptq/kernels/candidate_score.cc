// Scoring one smoothing candidate (golden_ptq/algorithm/modules/smooth_search.py, CandidateScorer):
// quantize the balance layers' shared input rows and each layer's weight for the candidate's scales,
// take their exact integer product and sum the squared error against the float output.
//
// Called through ctypes on numpy float64 arrays. The codes and scales are the numpy reference's bit
// for bit (quant_math/functions.py: per_token_codes, act_codes, weight_codes): every division and
// product is the reference's own operation in the same precision (the weight in float32 as
// quantize_weight does, the rows in float64), nearbyint is numpy's round (half to even), and
// nothing here may use FMA (the package's flags enable none). Only the final sum is in another order
// (eight partial sums per row, then the rows in order; the same on every run and thread count), so an
// error differs from numpy's pairwise sum in its last bits at most, and equal candidates score equal.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gp_runtime.h"

namespace {

// The row loops are compiled for AVX2 and baseline x86-64 (target_clones: chosen when the library
// loads). "avx2" brings rounding and wider division instructions, not FMA, so the arithmetic stays
// the reference's.
#define GP_SCORE_CLONES __attribute__((target_clones("avx2", "default")))

constexpr double kSymQmax = 127.0;
constexpr double kTinyScale = 1e-8;   // quant_math.functions._TINY
constexpr int64_t kRowsPerTask = 16;
constexpr int kLanes = 8;             // partial sums of a row's squared errors, added in a fixed order

int Tasks(int64_t rows) { return static_cast<int>((rows + kRowsPerTask - 1) / kRowsPerTask); }

// max |v[i]| of a row and whether every v[i] is finite, in 32-byte vectors (GCC's vector extension:
// the plain loop stayed scalar). The maximum is exact in any order; v - v is 0 for a finite v and NaN
// for NaN or Inf, so a lane's sum of them is 0 exactly when its values are finite (the reference's
// isfinite check).
template <typename F>
inline __attribute__((always_inline)) bool AbsMaxFinite(const F* v, int64_t k, F* amax) {
  typedef F V __attribute__((vector_size(32)));
  constexpr int kWidth = 32 / sizeof(F);
  V vmax = {}, vprobe = {};
  int64_t i = 0;
  for (; i + kWidth <= k; i += kWidth) {
    V x;
    std::memcpy(&x, v + i, sizeof(V));
    const V a = x < 0 ? -x : x;
    vmax = a > vmax ? a : vmax;
    vprobe += x - x;
  }
  F m = 0, probe = 0;
  for (int l = 0; l < kWidth; ++l) {
    m = vmax[l] > m ? vmax[l] : m;
    probe += vprobe[l];
  }
  for (; i < k; ++i) {
    const F a = std::fabs(v[i]);
    m = a > m ? a : m;
    probe += v[i] - v[i];
  }
  *amax = m;
  return probe == 0;
}

// One row of gp_score_input_codes; false when it holds NaN or Inf.
GP_SCORE_CLONES bool InputRow(const double* x, const double* s, int64_t k, bool per_token, double step, double zp,
                              double lo, double hi, double* xs, int8_t* codes, double* row_scale) {
  for (int64_t i = 0; i < k; ++i) xs[i] = x[i] / s[i];
  double amax = 0.0;
  if (!AbsMaxFinite<double>(xs, k, &amax)) return false;
  if (per_token) {
    step = std::max(amax / kSymQmax, kTinyScale);
    *row_scale = step;
    lo = -kSymQmax;
    hi = kSymQmax;
    zp = 0.0;
  }
  for (int64_t i = 0; i < k; ++i)
    codes[i] = static_cast<int8_t>(std::min(hi, std::max(lo, std::nearbyint(xs[i] / step) + zp)));
  return true;
}

// One row of gp_score_weight_codes; false when it holds NaN or Inf.
GP_SCORE_CLONES bool WeightRow(const double* w, const double* s, int64_t k, float* ws, int8_t* codes, double* scale) {
  for (int64_t i = 0; i < k; ++i) ws[i] = static_cast<float>(w[i] * s[i]);
  float amax = 0.0f;
  if (!AbsMaxFinite<float>(ws, k, &amax)) return false;
  const float step = static_cast<float>(std::max(static_cast<double>(amax) / kSymQmax, kTinyScale));
  *scale = step;
  for (int64_t i = 0; i < k; ++i)
    codes[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::nearbyint(ws[i] / step))));
  return true;
}

// sum_j ((p[j] - offset[j]) * xs * wscale[j] - ref[j])^2 of one row, in kLanes partial sums.
GP_SCORE_CLONES double ErrorRow(const int32_t* p, const double* offset, double xs, const double* wscale,
                                const double* ref, int64_t n) {
  double acc[kLanes] = {0.0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double d = ((static_cast<double>(p[j + l]) - offset[j + l]) * xs) * wscale[j + l] - ref[j + l];
      acc[l] += d * d;
    }
  }
  for (; j < n; ++j) {
    const double d = ((static_cast<double>(p[j]) - offset[j]) * xs) * wscale[j] - ref[j];
    acc[0] += d * d;
  }
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

}  // namespace

extern "C" {

// Codes of the rows xs = x / s (x f64 [rows, k], s f64 [k]) as int8 [rows, k].
//   per_token != 0: scale[r] = max(max_i |xs[r, i]| / 127, 1e-8), code = clip(round(xs / scale[r]), -127, 127)
//   per_token == 0: code = clip(round(xs / scale[0]) + zp, lo, hi)   (scale[0], zp, lo, hi given)
// Returns 1 (nothing usable written) when a row holds NaN or Inf: the numpy route then decides.
int gp_score_input_codes(const double* x, const double* s, int64_t rows, int64_t k, int per_token, double zp,
                         double lo, double hi, int8_t* codes, double* scale) {
  std::vector<int> bad(static_cast<size_t>(Tasks(rows)), 0);
  gp::ParallelFor(Tasks(rows), [&](int t) {
    std::vector<double> xs(static_cast<size_t>(k));
    for (int64_t r = t * kRowsPerTask; r < std::min(rows, (t + 1) * kRowsPerTask); ++r)
      if (!InputRow(x + r * k, s, k, per_token != 0, scale[0], zp, lo, hi, xs.data(), codes + r * k,
                    per_token ? scale + r : nullptr))
        bad[t] = 1;
  });
  return *std::max_element(bad.begin(), bad.end());
}

// Symmetric 8-bit per-output-channel codes of the weight w * s (w f64 [n, k], s f64 [k]) as
// quantize_weight computes them: the product rounded to float32, scale = float32(max(absmax / 127,
// 1e-8)), code = clip(round(w32 / scale), -127, 127) in float32. Writes codes int8 [n, k] and scale
// f64 [n] (float32 values). Returns 1 when a row holds NaN or Inf.
int gp_score_weight_codes(const double* w, const double* s, int64_t n, int64_t k, int8_t* codes, double* scale) {
  std::vector<int> bad(static_cast<size_t>(Tasks(n)), 0);
  gp::ParallelFor(Tasks(n), [&](int t) {
    std::vector<float> ws(static_cast<size_t>(k));
    for (int64_t r = t * kRowsPerTask; r < std::min(n, (t + 1) * kRowsPerTask); ++r)
      if (!WeightRow(w + r * k, s, k, ws.data(), codes + r * k, scale + r)) bad[t] = 1;
  });
  return *std::max_element(bad.begin(), bad.end());
}

// sum over r, j of ((p[r, j] * xscale[r]) * wscale[j] - ref[r, j])^2 with p = xc @ wc^T - zp * sum_i wc[j, i]
// exact (xc int8 [rows, k], wc int8 [n, k], ref f64 [rows, n]); xscale has one value per row when
// per_row, else one. Writes the sum to *out.
void gp_score_error(const int8_t* xc, const double* xscale, int per_row, double zp, const int8_t* wc,
                    const double* wscale, const double* ref, int64_t rows, int64_t n, int64_t k, double* out) {
  std::vector<int32_t> product(static_cast<size_t>(rows * n));
  gp::I8GemmInt32(xc, wc, product.data(), rows, n, k);
  std::vector<double> offset(static_cast<size_t>(n), 0.0);
  if (zp != 0.0) {
    for (int64_t j = 0; j < n; ++j) {
      int64_t sum = 0;
      for (int64_t i = 0; i < k; ++i) sum += wc[j * k + i];
      offset[j] = zp * static_cast<double>(sum);   // an integer below 2^53: exact
    }
  }
  std::vector<double> row_sums(static_cast<size_t>(rows), 0.0);
  gp::ParallelFor(Tasks(rows), [&](int t) {
    for (int64_t r = t * kRowsPerTask; r < std::min(rows, (t + 1) * kRowsPerTask); ++r)
      row_sums[r] = ErrorRow(product.data() + r * n, offset.data(), xscale[per_row ? r : 0], wscale, ref + r * n, n);
  });
  double total = 0.0;
  for (double v : row_sums) total += v;
  *out = total;
}

}  // extern "C"
