// Decode-step attention read directly from golden_ptq's KV cache buffers, as MindSpore ``ops.Custom``
// "aot" kernels on CPU. One new token per batch row; query head h reads KV head kv_map[h].
//
//   GpKvAttnFloat   the float cache: scores = q . k + mask,  out = softmax(scores) @ v
//                   (one operator where MindSpore's route runs two batched products, the mask
//                   addition and softmax over the whole buffer)
//   Gp...Write      each of the three, storing this step's keys/values into the buffers first, in
//                   place (compiled decode steps use these: no ScatterNdUpdate per buffer)
//
//   GpKvAttnStatic  keys and values symmetric per channel (the ``static`` layout):
//                   scores = (q * key_scale) . k + mask,  out = softmax(scores) @ v * value_scale
//   GpKvAttnTokens  keys asymmetric per channel, values with one scale per stored row (``token_values``):
//                   scores = (q * key_scale) . k + mask   (the zero point adds the same amount to every
//                   score of a query, which softmax ignores),
//                   out = (softmax(scores) * row_scale) @ v[:, :D],
//                   row_scale = steps[e + 128] * (value_base[head] * float(1/127)), e = v[:, D]
//
// Only positions inside each row's span of unmasked positions are read: masked positions at the
// ends of a row (left padding, slots past the filled length) are skipped, since their weight after
// softmax is exactly 0 in float32 (``kMasked``); masked positions inside the span are added as given.
// Work is therefore proportional to the filled length, not the buffer capacity.
// Float32 accumulation throughout; the summation order differs from the MindSpore-op route (results
// agree to rounding, not bit for bit). Instruction sets: AVX-512, AVX2 + FMA, portable C++.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gp_runtime.h"

namespace {

// An additive mask at or below this hides a position (golden_ptq's mask value is -1e9).
constexpr float kMasked = -1e8f;
// Below this many multiply-adds (queries x positions x head dim) a call runs on the calling thread.
constexpr int64_t kParallelWork = int64_t(1) << 20;

template <typename T>     // the stored element: int8_t (codes) or float
struct Attn {
  const float* q;          // [B, H, D]
  const T* k;              // [B, Hkv, C, D]
  const T* v;              // [B, Hkv, C, Dv]  (Dv = D, or D + 1 with the row exponent last)
  const float* mask;       // [B, H, C]
  const int32_t* kv_map;   // [H]
  const float* key_scale;  // [Hkv * D], or null (float cache)
  const float* value_scale;  // [Hkv * D] (static) or null
  const float* value_base;   // [Hkv] (token rows) or null
  const float* steps;        // [256] (token rows) or null
  float* out;              // [B, H, D]
  int64_t batch, heads, kv_heads, capacity, dim, vdim;
};

// ----- portable ----------------------------------------------------------------------------------
template <typename T>
void ScoresScalar(const float* qs, int64_t g, const T* k, int64_t dim, int64_t n, const float* mask,
                  int64_t mask_stride, float* scores) {
  for (int64_t s = 0; s < n; ++s) {
    const T* row = k + s * dim;
    for (int64_t j = 0; j < g; ++j) {
      float acc = 0.0f;
      for (int64_t d = 0; d < dim; ++d) acc += qs[j * dim + d] * static_cast<float>(row[d]);
      scores[j * n + s] = acc + mask[j * mask_stride + s];
    }
  }
}

float ExpScalar(float* x, int64_t n) {
  float top = x[0];
  for (int64_t i = 1; i < n; ++i) top = std::max(top, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - top);
    sum += x[i];
  }
  return sum;
}

template <typename T>
void ContextScalar(const float* w, int64_t g, const T* v, int64_t vdim, int64_t dim, int64_t n, float* ctx) {
  for (int64_t s = 0; s < n; ++s) {
    const T* row = v + s * vdim;
    for (int64_t j = 0; j < g; ++j) {
      const float p = w[j * n + s];
      for (int64_t d = 0; d < dim; ++d) ctx[j * dim + d] += p * static_cast<float>(row[d]);
    }
  }
}

// ----- AVX2 + FMA --------------------------------------------------------------------------------
__attribute__((target("avx2,fma"))) inline float Sum8(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

__attribute__((target("avx2,fma"))) inline __m256 Load8(const int8_t* p) {
  int64_t bits;
  std::memcpy(&bits, p, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bits)));
}

// One stored row as floats: codes converted into ``out``, a float row read in place.
__attribute__((target("avx2,fma"))) const float* RowAvx2(const int8_t* row, int64_t dim, float* out) {
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) _mm256_storeu_ps(out + d, Load8(row + d));
  for (; d < dim; ++d) out[d] = static_cast<float>(row[d]);
  return out;
}
inline const float* RowAvx2(const float* row, int64_t, float*) { return row; }

template <typename T>
__attribute__((target("avx2,fma"))) void ScoresAvx2(const float* qs, int64_t g, const T* k, int64_t dim,
                                                     int64_t n, const float* mask, int64_t mask_stride,
                                                     float* scores, float* buf) {
  const int64_t vec = dim & ~int64_t(7);
  for (int64_t s = 0; s < n; ++s) {
    const float* row = RowAvx2(k + s * dim, dim, buf);
    for (int64_t j = 0; j < g; ++j) {
      const float* qj = qs + j * dim;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t d = 0;
      for (; d + 16 <= vec; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qj + d), _mm256_loadu_ps(row + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qj + d + 8), _mm256_loadu_ps(row + d + 8), a1);
      }
      if (d < vec) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qj + d), _mm256_loadu_ps(row + d), a0);
      float acc = Sum8(_mm256_add_ps(a0, a1));
      for (d = vec; d < dim; ++d) acc += qj[d] * row[d];
      scores[j * n + s] = acc + mask[j * mask_stride + s];
    }
  }
}

// exp(x) for x <= 0: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, p the degree-6 Taylor polynomial
// (relative error about 2e-7); below -87.3 (under float's normal range) the result is 0.
__attribute__((target("avx2,fma"))) inline __m256 Exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx2,fma"))) float ExpAvx2(float* x, int64_t n) {
  int64_t i = 0;
  __m256 top8 = _mm256_set1_ps(x[0]);
  for (; i + 8 <= n; i += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(x + i));
  __m128 t = _mm_max_ps(_mm256_castps256_ps128(top8), _mm256_extractf128_ps(top8, 1));
  t = _mm_max_ps(t, _mm_movehl_ps(t, t));
  t = _mm_max_ss(t, _mm_movehdup_ps(t));
  float top = _mm_cvtss_f32(t);
  for (; i < n; ++i) top = std::max(top, x[i]);
  const __m256 top_v = _mm256_set1_ps(top);
  __m256 sum8 = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), top_v));
    _mm256_storeu_ps(x + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = Sum8(sum8);
  if (i < n) {   // the tail through the same approximation
    float buf[8] = {0};
    const int64_t rest = n - i;
    for (int64_t j = 0; j < 8; ++j) buf[j] = j < rest ? x[i + j] - top : -100.0f;
    _mm256_storeu_ps(buf, Exp8(_mm256_loadu_ps(buf)));
    for (int64_t j = 0; j < rest; ++j) {
      x[i + j] = buf[j];
      sum += buf[j];
    }
  }
  return sum;
}

template <typename T>
__attribute__((target("avx2,fma"))) void ContextAvx2(const float* w, int64_t g, const T* v, int64_t vdim,
                                                      int64_t dim, int64_t n, float* ctx, float* buf) {
  const int64_t vec = dim & ~int64_t(7);
  for (int64_t s = 0; s < n; ++s) {
    const float* row = RowAvx2(v + s * vdim, dim, buf);
    for (int64_t j = 0; j < g; ++j) {
      const __m256 p = _mm256_set1_ps(w[j * n + s]);
      float* cj = ctx + j * dim;
      int64_t d = 0;
      for (; d < vec; d += 8) _mm256_storeu_ps(cj + d, _mm256_fmadd_ps(p, _mm256_loadu_ps(row + d), _mm256_loadu_ps(cj + d)));
      for (; d < dim; ++d) cj[d] += w[j * n + s] * row[d];
    }
  }
}

// ----- AVX-512 -----------------------------------------------------------------------------------
__attribute__((target("avx512f,avx512bw,avx512vl"))) const float* RowAvx512(const int8_t* row, int64_t dim,
                                                                              float* out) {
  int64_t d = 0;
  for (; d + 16 <= dim; d += 16) {
    _mm512_storeu_ps(out + d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(row + d)))));
  }
  for (; d < dim; ++d) out[d] = static_cast<float>(row[d]);
  return out;
}
inline const float* RowAvx512(const float* row, int64_t, float*) { return row; }

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void ScoresAvx512(const float* qs, int64_t g, const T* k,
                                                                       int64_t dim, int64_t n, const float* mask,
                                                                       int64_t mask_stride, float* scores,
                                                                       float* buf) {
  const int64_t vec = dim & ~int64_t(15);
  for (int64_t s = 0; s < n; ++s) {
    const float* row = RowAvx512(k + s * dim, dim, buf);
    for (int64_t j = 0; j < g; ++j) {
      const float* qj = qs + j * dim;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      int64_t d = 0;
      for (; d + 32 <= vec; d += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qj + d), _mm512_loadu_ps(row + d), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qj + d + 16), _mm512_loadu_ps(row + d + 16), a1);
      }
      if (d < vec) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qj + d), _mm512_loadu_ps(row + d), a0);
      float acc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
      for (d = vec; d < dim; ++d) acc += qj[d] * row[d];
      scores[j * n + s] = acc + mask[j * mask_stride + s];
    }
  }
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void ContextAvx512(const float* w, int64_t g, const T* v,
                                                                        int64_t vdim, int64_t dim, int64_t n,
                                                                        float* ctx, float* buf) {
  const int64_t vec = dim & ~int64_t(15);
  for (int64_t s = 0; s < n; ++s) {
    const float* row = RowAvx512(v + s * vdim, dim, buf);
    for (int64_t j = 0; j < g; ++j) {
      const __m512 p = _mm512_set1_ps(w[j * n + s]);
      float* cj = ctx + j * dim;
      int64_t d = 0;
      for (; d < vec; d += 16) _mm512_storeu_ps(cj + d, _mm512_fmadd_ps(p, _mm512_loadu_ps(row + d), _mm512_loadu_ps(cj + d)));
      for (; d < dim; ++d) cj[d] += w[j * n + s] * row[d];
    }
  }
}

// ----- one batch row's run of query heads that read the same KV head ------------------------------
template <typename T>
void AttendRun(const Attn<T>& a, int64_t b, int64_t h0, int64_t g, int isa) {
  const int64_t dim = a.dim, cap = a.capacity, kvh = a.kv_map[h0];
  const float* mask = a.mask + (b * a.heads + h0) * cap;
  int64_t lo = cap, hi = 0;   // the union of the rows' spans of unmasked positions
  for (int64_t j = 0; j < g; ++j) {
    const float* m = mask + j * cap;
    int64_t first = 0, last = cap;
    while (first < cap && m[first] <= kMasked) ++first;
    while (last > first && m[last - 1] <= kMasked) --last;
    if (first < last) {
      lo = std::min(lo, first);
      hi = std::max(hi, last);
    }
  }
  if (lo >= hi) {   // every position masked: softmax of equal scores, as the op route computes it
    lo = 0;
    hi = cap;
  }
  const int64_t n = hi - lo;
  thread_local std::vector<float> buf;
  buf.resize(static_cast<size_t>(g * dim * 2 + g * n + dim + n));
  float* qs = buf.data();
  float* ctx = qs + g * dim;
  float* scores = ctx + g * dim;
  float* row = scores + g * n;
  float* row_scale = row + dim;
  const float* key_scale = a.key_scale ? a.key_scale + kvh * dim : nullptr;
  for (int64_t j = 0; j < g; ++j) {
    const float* qj = a.q + (b * a.heads + h0 + j) * dim;
    for (int64_t d = 0; d < dim; ++d) qs[j * dim + d] = key_scale ? qj[d] * key_scale[d] : qj[d];
  }
  std::fill(ctx, ctx + g * dim, 0.0f);
  const T* k = a.k + ((b * a.kv_heads + kvh) * cap + lo) * dim;
  const T* v = a.v + ((b * a.kv_heads + kvh) * cap + lo) * a.vdim;

  if (isa >= gp::kAvx512Vnni) {
    ScoresAvx512(qs, g, k, dim, n, mask + lo, cap, scores, row);
  } else if (isa >= gp::kAvx2) {
    ScoresAvx2(qs, g, k, dim, n, mask + lo, cap, scores, row);
  } else {
    ScoresScalar(qs, g, k, dim, n, mask + lo, cap, scores);
  }
  float inv_sum[64];
  std::vector<float> inv_sum_big;
  float* inv = g <= 64 ? inv_sum : (inv_sum_big.resize(static_cast<size_t>(g)), inv_sum_big.data());
  for (int64_t j = 0; j < g; ++j)
    inv[j] = 1.0f / (isa >= gp::kAvx2 ? ExpAvx2(scores + j * n, n) : ExpScalar(scores + j * n, n));
  if (a.value_base != nullptr) {   // token rows: each position's scale from its exponent column
    const float base = a.value_base[kvh] * static_cast<float>(1.0 / 127.0);
    for (int64_t s = 0; s < n; ++s) row_scale[s] = a.steps[static_cast<int>(v[s * a.vdim + dim]) + 128] * base;
    for (int64_t j = 0; j < g; ++j)
      for (int64_t s = 0; s < n; ++s) scores[j * n + s] = (scores[j * n + s] * inv[j]) * row_scale[s];
  } else {
    for (int64_t j = 0; j < g; ++j)
      for (int64_t s = 0; s < n; ++s) scores[j * n + s] *= inv[j];
  }
  if (isa >= gp::kAvx512Vnni) {
    ContextAvx512(scores, g, v, a.vdim, dim, n, ctx, row);
  } else if (isa >= gp::kAvx2) {
    ContextAvx2(scores, g, v, a.vdim, dim, n, ctx, row);
  } else {
    ContextScalar(scores, g, v, a.vdim, dim, n, ctx);
  }
  const float* value_scale = a.value_scale ? a.value_scale + kvh * dim : nullptr;
  for (int64_t j = 0; j < g; ++j) {
    float* o = a.out + (b * a.heads + h0 + j) * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = value_scale ? ctx[j * dim + d] * value_scale[d] : ctx[j * dim + d];
  }
}

template <typename T>
void Attend(const Attn<T>& a) {
  std::vector<int64_t> starts;   // runs of consecutive query heads with the same KV head
  for (int64_t h = 0; h < a.heads; ++h)
    if (h == 0 || a.kv_map[h] != a.kv_map[h - 1]) starts.push_back(h);
  starts.push_back(a.heads);
  const int64_t runs = static_cast<int64_t>(starts.size()) - 1;
  const int isa = gp::CurrentIsa();
  auto task = [&](int t) {
    const int64_t b = t / runs, r = t % runs;
    AttendRun(a, b, starts[r], starts[r + 1] - starts[r], isa);
  };
  const int tasks = static_cast<int>(a.batch * runs);
  if (a.batch * a.heads * a.capacity * a.dim < kParallelWork) {
    for (int t = 0; t < tasks; ++t) task(t);
  } else {
    gp::ParallelFor(tasks, task);
  }
}

bool Is(const char* dtype, const char* want) { return std::strcmp(dtype, want) == 0; }

// Shapes and dtypes of the first five operands every entry point shares (q, k, v, mask, kv_map, the
// buffers' element type ``elem``) and of the output at ``out``; fills ``a``. False on any mismatch.
template <typename T>
bool Common(int nparam, int want, void** params, int* ndims, int64_t** shapes, const char** dtypes, int out,
            const char* elem, Attn<T>* a) {
  if (nparam != want || ndims[0] != 3 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 4 || ndims[4] != 1 ||
      ndims[out] != 3) {
    return false;
  }
  if (!Is(dtypes[0], "float32") || !Is(dtypes[1], elem) || !Is(dtypes[2], elem) || !Is(dtypes[3], "float32") ||
      !Is(dtypes[4], "int32") || !Is(dtypes[out], "float32")) {
    return false;
  }
  a->batch = shapes[1][0];
  a->kv_heads = shapes[1][1];
  a->capacity = shapes[1][2];
  a->dim = shapes[1][3];
  a->heads = shapes[4][0];
  a->vdim = shapes[2][3];
  if (a->dim < 1 || a->heads < 1 || a->kv_heads < 1 || a->capacity < 1) return false;
  if (shapes[0][0] != a->batch || shapes[0][1] != 1 || shapes[0][2] != a->heads * a->dim) return false;
  if (shapes[2][0] != a->batch || shapes[2][1] != a->kv_heads || shapes[2][2] != a->capacity) return false;
  if (shapes[3][0] != a->batch || shapes[3][1] * shapes[3][2] != a->heads || shapes[3][3] != a->capacity) return false;
  for (int i = 0; i < 3; ++i)
    if (shapes[out][i] != shapes[0][i]) return false;
  a->q = static_cast<const float*>(params[0]);
  a->k = static_cast<const T*>(params[1]);
  a->v = static_cast<const T*>(params[2]);
  a->mask = static_cast<const float*>(params[3]);
  a->kv_map = static_cast<const int32_t*>(params[4]);
  a->out = static_cast<float*>(params[out]);
  for (int64_t h = 0; h < a->heads; ++h)
    if (a->kv_map[h] < 0 || a->kv_map[h] >= a->kv_heads) return false;
  return true;
}

// The int8 entry points' per-channel key scale (operand 5).
bool KeyScale(int* ndims, int64_t** shapes, const char** dtypes, void** params, Attn<int8_t>* a) {
  if (ndims[5] != 1 || shapes[5][0] != a->kv_heads * a->dim || !Is(dtypes[5], "float32")) return false;
  a->key_scale = static_cast<const float*>(params[5]);
  return true;
}

// The write-in-place variants' last three operands, from ``first``: this step's keys [B, Hkv, 1, D]
// and values [B, Hkv, 1, Dv] (the buffers' element type) and their slots int32 [B, Hkv, 1, 3]
// (b, head, position). Checks them all, then copies each row into the buffers at its slot. False on
// any mismatch (nothing is written).
template <typename T>
bool WriteNewRows(const Attn<T>& a, int first, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                  const char* elem) {
  for (int i = first; i < first + 3; ++i) {
    const int64_t want[4] = {a.batch, a.kv_heads, 1, i == first ? a.dim : (i == first + 1 ? a.vdim : 3)};
    if (ndims[i] != 4 || !Is(dtypes[i], i == first + 2 ? "int32" : elem)) return false;
    for (int j = 0; j < 4; ++j)
      if (shapes[i][j] != want[j]) return false;
  }
  const int32_t* slots = static_cast<const int32_t*>(params[first + 2]);
  const int64_t rows = a.batch * a.kv_heads;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* t = slots + 3 * r;
    if (t[0] < 0 || t[0] >= a.batch || t[1] < 0 || t[1] >= a.kv_heads || t[2] < 0 || t[2] >= a.capacity) return false;
  }
  const T* k_new = static_cast<const T*>(params[first]);
  const T* v_new = static_cast<const T*>(params[first + 1]);
  T* k = static_cast<T*>(params[1]);
  T* v = static_cast<T*>(params[2]);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* t = slots + 3 * r;
    const int64_t at = (int64_t(t[0]) * a.kv_heads + t[1]) * a.capacity + t[2];
    std::memcpy(k + at * a.dim, k_new + r * a.dim, sizeof(T) * a.dim);
    std::memcpy(v + at * a.vdim, v_new + r * a.vdim, sizeof(T) * a.vdim);
  }
  return true;
}

// The shared tail of each layout's attention below, its operands checked: the write-in-place
// variant (``write``) first stores the new rows, whose three operands follow the ``base`` ones.
template <typename T>
int WriteThenAttend(const Attn<T>& a, bool write, int base, void** params, int* ndims, int64_t** shapes,
                    const char** dtypes, const char* elem) {
  if (write && !WriteNewRows(a, base, params, ndims, shapes, dtypes, elem)) return 1;
  Attend(a);
  return 0;
}

// Each layout's attention over ``base`` operands (the output follows them), or with ``write`` the
// write-in-place variant's three more.
int AttnStatic(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, bool write) {
  constexpr int base = 7;
  const int out = base + (write ? 3 : 0);
  Attn<int8_t> a{};
  if (!Common(nparam, out + 1, params, ndims, shapes, dtypes, out, "int8", &a) ||
      !KeyScale(ndims, shapes, dtypes, params, &a))
    return 1;
  if (ndims[6] != 1 || shapes[6][0] != a.kv_heads * a.dim || !Is(dtypes[6], "float32") || a.vdim != a.dim) return 1;
  a.value_scale = static_cast<const float*>(params[6]);
  return WriteThenAttend(a, write, base, params, ndims, shapes, dtypes, "int8");
}

int AttnTokens(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, bool write) {
  constexpr int base = 8;
  const int out = base + (write ? 3 : 0);
  Attn<int8_t> a{};
  if (!Common(nparam, out + 1, params, ndims, shapes, dtypes, out, "int8", &a) ||
      !KeyScale(ndims, shapes, dtypes, params, &a))
    return 1;
  if (ndims[6] != 1 || shapes[6][0] != a.kv_heads || !Is(dtypes[6], "float32") || a.vdim != a.dim + 1) return 1;
  if (ndims[7] != 1 || shapes[7][0] != 256 || !Is(dtypes[7], "float32")) return 1;
  a.value_base = static_cast<const float*>(params[6]);
  a.steps = static_cast<const float*>(params[7]);
  return WriteThenAttend(a, write, base, params, ndims, shapes, dtypes, "int8");
}

int AttnFloat(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, bool write) {
  constexpr int base = 5;
  const int out = base + (write ? 3 : 0);
  Attn<float> a{};
  if (!Common(nparam, out + 1, params, ndims, shapes, dtypes, out, "float32", &a) || a.vdim != a.dim) return 1;
  return WriteThenAttend(a, write, base, params, ndims, shapes, dtypes, "float32");
}

}  // namespace

extern "C" {

// (q f32 [B, 1, H*D], k int8 [B, Hkv, C, D], v int8 [B, Hkv, C, D], mask f32 [B, Hm, Gm, C] (Hm*Gm = H,
//  row h of query head h), kv_map int32 [H], key_scale f32 [Hkv*D], value_scale f32 [Hkv*D])
//  -> f32 [B, 1, H*D]
int GpKvAttnStatic(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return AttnStatic(nparam, params, ndims, shapes, dtypes, false);
}

// (q, k, v int8 [B, Hkv, C, D + 1], mask, kv_map, key_scale as above, value_base f32 [Hkv],
//  steps f32 [256] (2^(e/16) for e = -128 .. 127)) -> f32 [B, 1, H*D]
int GpKvAttnTokens(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return AttnTokens(nparam, params, ndims, shapes, dtypes, false);
}

// (q f32 [B, 1, H*D], k f32 [B, Hkv, C, D], v f32 [B, Hkv, C, D], mask f32 [B, Hm, Gm, C], kv_map int32 [H])
//  -> f32 [B, 1, H*D]
int GpKvAttnFloat(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return AttnFloat(nparam, params, ndims, shapes, dtypes, false);
}

// The same three with this step's keys, values and slots appended (see WriteNewRows): the rows are
// stored into the buffers k / v in place, then attended over with the rest -- one operator where the
// cache writes took two ScatterNdUpdates.
int GpKvAttnStaticWrite(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                        void*) {
  return AttnStatic(nparam, params, ndims, shapes, dtypes, true);
}
int GpKvAttnTokensWrite(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                        void*) {
  return AttnTokens(nparam, params, ndims, shapes, dtypes, true);
}
int GpKvAttnFloatWrite(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                       void*) {
  return AttnFloat(nparam, params, ndims, shapes, dtypes, true);
}

}  // extern "C"
