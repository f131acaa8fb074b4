// The int8 KV cache's encode / decode (golden_ptq/quant_cells/kv_codecs.py) as MindSpore ``ops.Custom``
// "aot" kernels on CPU: one pass over the tensor where the MindSpore-op and numpy twins take several.
// Same bits as those twins: only IEEE-exact steps in the same order (true division, round half to
// even, clipping, one product per factor), the token scale from the same float32 table.
//
// ``x`` / codes are ``[B, Hkv, T, D]`` (token values: codes ``[B, Hkv, T, D + 1]``, the row exponent
// last); per-channel ``scale`` / ``zero_point`` hold ``Hkv * D`` floats (any shape), the token
// ``base`` ``Hkv``, ``steps`` the 256 floats ``2^(e/16)``, e = -128 .. 127.
//   GpKvEncodeSym     codes = clip(round(x / scale), -127, 127)
//   GpKvEncodeAsym    codes = clip(round(x / scale) + zero_point, -128, 127)
//   GpKvEncodeTokens  e = -128 + #{steps[i] < absmax(row) / base, i < 255},
//                     codes = clip(round(x / (steps[e + 128] * (base * float(1/127)))), -127, 127)
//   GpKvDecodeSym     float(codes) * scale
//   GpKvDecodeAsym    (float(codes) - zero_point) * scale
//   GpKvDecodeTokens  float(codes) * (steps[e + 128] * (base * float(1/127)))
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "gp_runtime.h"

namespace {

constexpr int64_t kParallelElements = int64_t(1) << 16;   // below this a call runs on the calling thread

struct Layout {
  int64_t rows, heads, length, dim;   // rows = B * Hkv * T; head of row r = (r / length) % heads
  int64_t Head(int64_t r) const { return (r / length) % heads; }
};

// Runs fn(r0, r1) over row ranges, split over the pool when the tensor is large.
template <class Fn>
void ForRows(const Layout& l, Fn fn) {
  if (l.rows * l.dim < kParallelElements) {
    fn(int64_t(0), l.rows);
    return;
  }
  const int tasks = static_cast<int>(std::min<int64_t>(l.rows, 64));
  gp::ParallelFor(tasks, [&](int t) { fn(l.rows * t / tasks, l.rows * (t + 1) / tasks); });
}

// ----- q = clip(round(x / scale) + zp, lo, hi) over one row -------------------------------------
inline void QuantRowScalar(const float* x, const float* scale, float one_scale, const float* zp, int64_t n, float lo,
                           float hi, int8_t* out) {
  for (int64_t d = 0; d < n; ++d) {
    float v = std::nearbyint(x[d] / (scale ? scale[d] : one_scale));
    if (zp) v = v + zp[d];
    out[d] = static_cast<int8_t>(std::min(std::max(v, lo), hi));
  }
}

__attribute__((target("avx2,fma"))) void QuantRowAvx2(const float* x, const float* scale, float one_scale,
                                                       const float* zp, int64_t n, float lo, float hi,
                                                       int8_t* out) {
  const __m256 lo8 = _mm256_set1_ps(lo), hi8 = _mm256_set1_ps(hi), s8 = _mm256_set1_ps(one_scale);
  int64_t d = 0;
  alignas(32) int32_t buf[8];
  for (; d + 8 <= n; d += 8) {
    __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + d), scale ? _mm256_loadu_ps(scale + d) : s8);
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (zp) v = _mm256_add_ps(v, _mm256_loadu_ps(zp + d));
    v = _mm256_min_ps(_mm256_max_ps(v, lo8), hi8);
    _mm256_store_si256(reinterpret_cast<__m256i*>(buf), _mm256_cvtps_epi32(v));
    for (int j = 0; j < 8; ++j) out[d + j] = static_cast<int8_t>(buf[j]);
  }
  QuantRowScalar(x + d, scale ? scale + d : nullptr, one_scale, zp ? zp + d : nullptr, n - d, lo, hi, out + d);
}

void QuantRow(const float* x, const float* scale, float one_scale, const float* zp, int64_t n, float lo, float hi,
              int8_t* out, int isa) {
  if (isa >= gp::kAvx2) {
    QuantRowAvx2(x, scale, one_scale, zp, n, lo, hi, out);
  } else {
    QuantRowScalar(x, scale, one_scale, zp, n, lo, hi, out);
  }
}

// Scale of a token row from its table row ``index`` (exponent + 128), as kv_codecs computes it.
inline float TokenScale(const float* steps, int index, float base) {
  return steps[index] * (base * static_cast<float>(1.0 / 127.0));
}

void EncodeChannels(const float* x, const float* scale, const float* zp, const Layout& l, int8_t* out) {
  const int isa = gp::CurrentIsa();
  const float lo = zp ? -128.0f : -127.0f;
  ForRows(l, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = l.Head(r) * l.dim;
      QuantRow(x + r * l.dim, scale + c, 0.0f, zp ? zp + c : nullptr, l.dim, lo, 127.0f, out + r * l.dim, isa);
    }
  });
}

void EncodeTokens(const float* x, const float* base, const float* steps, const Layout& l, int8_t* out) {
  const int isa = gp::CurrentIsa();
  ForRows(l, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * l.dim;
      const float b = base[l.Head(r)];
      float absmax = 0.0f;
      for (int64_t d = 0; d < l.dim; ++d) absmax = std::max(absmax, std::fabs(row[d]));
      const float ratio = absmax / b;
      const int index = static_cast<int>(std::lower_bound(steps, steps + 255, ratio) - steps);  // #{steps < ratio}
      int8_t* o = out + r * (l.dim + 1);
      QuantRow(row, nullptr, TokenScale(steps, index, b), nullptr, l.dim, -127.0f, 127.0f, o, isa);
      o[l.dim] = static_cast<int8_t>(index - 128);
    }
  });
}

void DecodeChannels(const int8_t* q, const float* scale, const float* zp, const Layout& l, float* out) {
  ForRows(l, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = scale + l.Head(r) * l.dim;
      const int8_t* qr = q + r * l.dim;
      float* o = out + r * l.dim;
      if (zp) {
        const float* z = zp + l.Head(r) * l.dim;
        for (int64_t d = 0; d < l.dim; ++d) o[d] = (static_cast<float>(qr[d]) - z[d]) * s[d];
      } else {
        for (int64_t d = 0; d < l.dim; ++d) o[d] = static_cast<float>(qr[d]) * s[d];
      }
    }
  });
}

void DecodeTokens(const int8_t* q, const float* base, const float* steps, const Layout& l, float* out) {
  ForRows(l, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* qr = q + r * (l.dim + 1);
      const float s = TokenScale(steps, static_cast<int>(qr[l.dim]) + 128, base[l.Head(r)]);
      float* o = out + r * l.dim;
      for (int64_t d = 0; d < l.dim; ++d) o[d] = static_cast<float>(qr[d]) * s;
    }
  });
}

bool Is(const char* dtype, const char* want) { return std::strcmp(dtype, want) == 0; }

int64_t Count(int nd, const int64_t* shape) {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= shape[i];
  return n;
}

// The 4-D tensor operand 0 (``in``, dtype ``in_dtype``) and output (index ``out``, last axis ``extra``
// wider than the input's, dtype ``out_dtype``); ``dim`` is the float side's last axis. Operands 1 ..
// out-1 are float32. False on any mismatch.
bool Shapes(int nparam, int want, int* ndims, int64_t** shapes, const char** dtypes, const char* in_dtype,
            const char* out_dtype, int extra, Layout* l) {
  const int out = want - 1;
  if (nparam != want || ndims[0] != 4 || ndims[out] != 4 || !Is(dtypes[0], in_dtype) || !Is(dtypes[out], out_dtype))
    return false;
  for (int i = 0; i < 3; ++i)
    if (shapes[out][i] != shapes[0][i]) return false;
  if (shapes[out][3] != shapes[0][3] + extra) return false;
  for (int i = 1; i < out; ++i)
    if (!Is(dtypes[i], "float32")) return false;
  l->heads = shapes[0][1];
  l->length = shapes[0][2];
  l->dim = std::min(shapes[0][3], shapes[out][3]);
  l->rows = shapes[0][0] * l->heads * l->length;
  return l->dim >= 1;
}

}  // namespace

extern "C" {

// (x f32, scale) -> int8
int GpKvEncodeSym(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  Layout l{};
  if (!Shapes(nparam, 3, ndims, shapes, dtypes, "float32", "int8", 0, &l) ||
      Count(ndims[1], shapes[1]) != l.heads * l.dim) {
    return 1;
  }
  EncodeChannels(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]), nullptr, l,
                 static_cast<int8_t*>(params[2]));
  return 0;
}

// (x f32, scale, zero_point) -> int8
int GpKvEncodeAsym(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  Layout l{};
  if (!Shapes(nparam, 4, ndims, shapes, dtypes, "float32", "int8", 0, &l) ||
      Count(ndims[1], shapes[1]) != l.heads * l.dim || Count(ndims[2], shapes[2]) != l.heads * l.dim) {
    return 1;
  }
  EncodeChannels(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
                 static_cast<const float*>(params[2]), l, static_cast<int8_t*>(params[3]));
  return 0;
}

// (x f32 [.., D], base, steps) -> int8 [.., D + 1]
int GpKvEncodeTokens(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  Layout l{};
  if (!Shapes(nparam, 4, ndims, shapes, dtypes, "float32", "int8", 1, &l) || Count(ndims[1], shapes[1]) != l.heads ||
      Count(ndims[2], shapes[2]) != 256) {
    return 1;
  }
  EncodeTokens(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
               static_cast<const float*>(params[2]), l, static_cast<int8_t*>(params[3]));
  return 0;
}

// (codes int8, scale) -> f32
int GpKvDecodeSym(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  Layout l{};
  if (!Shapes(nparam, 3, ndims, shapes, dtypes, "int8", "float32", 0, &l) ||
      Count(ndims[1], shapes[1]) != l.heads * l.dim) {
    return 1;
  }
  DecodeChannels(static_cast<const int8_t*>(params[0]), static_cast<const float*>(params[1]), nullptr, l,
                 static_cast<float*>(params[2]));
  return 0;
}

// (codes int8, scale, zero_point) -> f32
int GpKvDecodeAsym(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  Layout l{};
  if (!Shapes(nparam, 4, ndims, shapes, dtypes, "int8", "float32", 0, &l) ||
      Count(ndims[1], shapes[1]) != l.heads * l.dim || Count(ndims[2], shapes[2]) != l.heads * l.dim) {
    return 1;
  }
  DecodeChannels(static_cast<const int8_t*>(params[0]), static_cast<const float*>(params[1]),
                 static_cast<const float*>(params[2]), l, static_cast<float*>(params[3]));
  return 0;
}

// (codes int8 [.., D + 1], base, steps) -> f32 [.., D]
int GpKvDecodeTokens(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  Layout l{};
  if (!Shapes(nparam, 4, ndims, shapes, dtypes, "int8", "float32", -1, &l) || Count(ndims[1], shapes[1]) != l.heads ||
      Count(ndims[2], shapes[2]) != 256) {
    return 1;
  }
  DecodeTokens(static_cast<const int8_t*>(params[0]), static_cast<const float*>(params[1]),
               static_cast<const float*>(params[2]), l, static_cast<float*>(params[3]));
  return 0;
}

}  // extern "C"
