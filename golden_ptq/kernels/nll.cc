// Perplexity's per-position negative log-likelihood (golden_ptq/eval/perplexity.py, log_softmax_nll):
// nll[r] = log(sum_j exp(x[r, j] - max_r)) + max_r - x[r, target[r]] over float32 logits, in float64.
//
// Called through ctypes on numpy arrays. numpy does it in float64 over a copy of every row, one
// thread; here each row is read once, in parallel over rows, with a float64 exp in vectors. The
// differences from numpy are float64 rounding: exp within about one ulp (a degree-13 polynomial on
// |r| <= ln2 / 2) and the sum in one partial sum per vector lane (8, 4 or 2 by instruction set), then
// in order; a position's nll agrees to ~1e-15 relative, and every run on a machine gives the same bits
// whatever the thread count.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gp_runtime.h"

namespace {

constexpr int64_t kRowsPerTask = 4;

template <int L>
struct DoubleVec {
  typedef double D __attribute__((vector_size(8 * L)));
  typedef int64_t I __attribute__((vector_size(8 * L)));
};

// exp(x) for x <= 0, x >= -708 (the caller clamps): 2^n * p(r), n = round(x / ln2), r = x - n ln2.
template <typename D, typename I>
inline __attribute__((always_inline)) D ExpNonPositive(D x) {
  const D magic = D{} + 6755399441055744.0;   // 1.5 * 2^52: adding it rounds to an integer in the low bits
  const D t = x * 1.4426950408889634 + magic;
  const D n = t - magic;
  const D r = (x - n * 0.693147180369123816490) - n * 1.90821492927058770002e-10;   // ln2 in two parts
  D p = D{} + 1.0 / 6227020800.0;   // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  I bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits - static_cast<int64_t>(0x4338000000000000LL) + 1023) << 52;   // 2^n (n >= -708)
  D scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Rows [r0, r1): returns false when a row's maximum is not finite.
template <int L>
inline __attribute__((always_inline)) bool NllRows(const float* x, const int64_t* target, int64_t r0, int64_t r1,
                                                    int64_t v, double* out) {
  typedef typename DoubleVec<L>::D D;
  typedef typename DoubleVec<L>::I I;
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * v;
    float top = row[0];
    for (int64_t j = 1; j < v; ++j) top = row[j] > top ? row[j] : top;
    if (!std::isfinite(top)) return false;
    const double m = top;
    D acc = D{};
    int64_t j = 0;
    for (; j + L <= v; j += L) {
      D d;
      for (int l = 0; l < L; ++l) d[l] = static_cast<double>(row[j + l]) - m;   // exact in float64
      d = d < -708.0 ? D{} - 708.0 : d;   // below: terms under 1e-307 of the largest (which is 1)
      acc += ExpNonPositive<D, I>(d);
    }
    double sum = 0.0;
    for (int l = 0; l < L; ++l) sum += acc[l];
    for (; j < v; ++j) sum += std::exp(static_cast<double>(row[j]) - m);
    out[r] = std::log(sum) + m - static_cast<double>(row[target[r]]);
  }
  return true;
}

__attribute__((target("avx512f"))) bool NllAvx512(const float* x, const int64_t* t, int64_t r0, int64_t r1, int64_t v,
                                                  double* out) {
  return NllRows<8>(x, t, r0, r1, v, out);
}
__attribute__((target("avx2"))) bool NllAvx2(const float* x, const int64_t* t, int64_t r0, int64_t r1, int64_t v,
                                             double* out) {
  return NllRows<4>(x, t, r0, r1, v, out);
}
bool NllBaseline(const float* x, const int64_t* t, int64_t r0, int64_t r1, int64_t v, double* out) {
  return NllRows<2>(x, t, r0, r1, v, out);
}

}  // namespace

extern "C" {

// logits f32 [rows, vocab], target int64 [rows] -> out f64 [rows]. Returns 1 (out unusable) when a
// target is outside [0, vocab) or a row's maximum is NaN or infinite: the numpy route then decides.
int gp_nll_rows(const float* logits, const int64_t* target, int64_t rows, int64_t vocab, double* out) {
  if (vocab < 1) return 1;
  for (int64_t r = 0; r < rows; ++r)
    if (target[r] < 0 || target[r] >= vocab) return 1;
  const int isa = gp::CurrentIsa();
  auto fn = isa >= gp::kAvx512Vnni ? NllAvx512 : isa >= gp::kAvx2 ? NllAvx2 : NllBaseline;
  const int tasks = static_cast<int>((rows + kRowsPerTask - 1) / kRowsPerTask);
  std::vector<char> ok(static_cast<size_t>(tasks), 1);
  gp::ParallelFor(tasks, [&](int t) {
    const int64_t r0 = t * kRowsPerTask, r1 = r0 + kRowsPerTask < rows ? r0 + kRowsPerTask : rows;
    ok[t] = fn(logits, target, r0, r1, vocab, out);
  });
  for (char v : ok)
    if (!v) return 1;
  return 0;
}

}  // extern "C"
