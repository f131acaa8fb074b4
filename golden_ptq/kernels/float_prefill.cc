// Float kernels of the eager (PyNative) full forward / prefill, as MindSpore ``ops.Custom`` "aot"
// operators on CPU (RMSNorm, SwiGLU, rope and the transform are also bound into compiled graphs). Each replaces MindSpore ops whose broadcasts, copies and separate passes cost
// more than the arithmetic (RMSNorm's two broadcasting multiplies: ~0.9 ms each on a [512, 576]
// input; rope's gather and three passes; the attention core's head transposes, full-shape mask and
// softmax passes).
//
//   GpRmsNorm         x [..., N], w [N], eps [1] -> RMSNorm(x) * w, statistics included (one call instead of
//                     five; inv_rms in its own summation order)
//   GpRope            x, cos, sin [B, T, W], index int32 [W] -> x * cos + x[..., index] * sin
//   GpCausalAttention q [B, T, H*D] (rope and 1/sqrt(D) applied), k, v [B, Hkv, S, D], key_mask int32 [B, S]
//                     -> context [B, T, H*D]. Query row i (absolute position S - T + i) reads the keys
//                     j <= S - T + i with key_mask[b, j] != 0; query head h reads KV head h / (H / Hkv).
//                     A row with no such key (left padding) gets what the MindSpore route's additive
//                     -1e9 mask gives it: the softmax of (score - 1e9) over all S keys.
//   GpSwiglu          gate, up [...] -> silu(gate) * up (one pass instead of MindSpore's SiLU and Mul; its
//                     exp is this file's polynomial, so the bits differ from MindSpore's by ~5e-6 relative)
//   GpAdd             x, y [...] -> x + y (the residual connections, MindSpore's bits)
//   GpToHeads         x [B, T, Hin*D], heads int32 [H] -> [B, H, T, D], head i of the output being head
//                     heads[i] of x (D from the output's shape): the keys' and values' head layout in one
//                     copy (MindSpore's transpose + Contiguous took ~1.5 ms for SmolLM2's 512 x 192 floats)
//   GpFwht            x [..., W], block int32 [1] -> per block of ``block`` (a power of two dividing W)
//                     the fast Walsh-Hadamard transform in Sylvester (natural) order times
//                     1/sqrt(block): the rotation's online transform (an [n, B] x [B, B] matmul on the
//                     MindSpore route, B / log2(B) times the arithmetic).
//
// RMSNorm, rope and the addition are plain loops compiled per function for AVX-512F, AVX2 and baseline
// x86-64 (target_clones: resolved from the CPU flags when the library loads). The attention kernel,
// SwiGLU and the Walsh-Hadamard transform are written with GCC vector extensions, one instantiation per
// instruction set (AttentionTaskFor, SwigluFor, FwhtRowsFor).
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#define GP_INLINE inline __attribute__((always_inline))
#define GP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
// RMSNorm's scaling and rope round every product and sum as MindSpore's separate ops do (no fused
// multiply-add), so they equal the MindSpore route bit for bit: SmolLM2's 30 layers amplify a
// last-bit difference in a norm to ~1e-4 of the logits.
#define GP_NO_FMA __attribute__((optimize("fp-contract=off")))

namespace {

// Vectors of L floats, one native register: 16 (AVX-512), 8 (AVX2) or 4 (SSE2). GCC lowers vectors
// wider than the target's registers through the stack once many are live (16-float vectors under AVX2
// made the attention kernel 17x slower).
template <int L>
struct Vec {
  typedef float F __attribute__((vector_size(4 * L)));
  typedef int32_t I __attribute__((vector_size(4 * L)));   // shuffle masks
};

template <typename V>
GP_INLINE V LoadV(const float* p) {
  typedef float U __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
  return *reinterpret_cast<const U*>(p);
}
template <typename V>
GP_INLINE void StoreV(float* p, V v) {
  typedef float U __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
  *reinterpret_cast<U*>(p) = v;
}
template <typename V>
GP_INLINE V SplatV(float f) { return V{} + f; }


// exp(x) for the softmax (x <= 0): 2^n * p(r), |rel err| < 2e-7 on [-87, 88].
template <typename V>
GP_INLINE V Exp(V x) {
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  const V lo = SplatV<V>(-87.3f), hi = SplatV<V>(88.3f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = SplatV<V>(12582912.0f);   // 1.5 * 2^23: adding it rounds to an integer
  V t = x * SplatV<V>(1.44269504088896341f) + magic;
  V n = t - magic;
  V r = x - n * SplatV<V>(0.693359375f);
  r = r - n * SplatV<V>(-2.12194440e-4f);
  V p = SplatV<V>(1.9875691500e-4f);
  p = p * r + SplatV<V>(1.3981999507e-3f);
  p = p * r + SplatV<V>(8.3334519073e-3f);
  p = p * r + SplatV<V>(4.1665795894e-2f);
  p = p * r + SplatV<V>(1.6666665459e-1f);
  p = p * r + SplatV<V>(5.0000001201e-1f);
  p = p * r * r + r + SplatV<V>(1.0f);
  I e = ((I)t - (I)magic + 127) << 23;
  return p * (V)e;
}

template <typename V>
GP_INLINE float HSum(V v) {
  float s = 0.0f;
  for (int i = 0; i < static_cast<int>(sizeof(V) / 4); ++i) s += v[i];
  return s;
}

template <typename V>
GP_INLINE float HMax(V v) {
  float m = v[0];
  for (int i = 1; i < static_cast<int>(sizeof(V) / 4); ++i) m = std::max(m, v[i]);
  return m;
}

int AffinityCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

int g_threads = std::min(AffinityCpus(), 8);

// Runs fn(0 .. tasks - 1) on the caller and up to g_threads - 1 short-lived helpers, tasks claimed
// one at a time (causal attention's tasks differ in size).
void ParallelFor(int tasks, int max_threads, const std::function<void(int)>& fn) {
  const int threads = std::max(1, std::min({g_threads, max_threads, tasks}));
  std::atomic<int> next{0};
  auto work = [&] {
    for (int t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) fn(t);
  };
  std::vector<std::thread> helpers;
  for (int i = 1; i < threads; ++i) helpers.emplace_back(work);
  work();
  for (auto& h : helpers) h.join();
}

// Elementwise calls split over threads from this many floats (below, waking a thread costs more),
// in parts of about kPartFloats claimed one at a time: when a helper gets its core late (other
// processes), the caller does its parts instead of waiting for it.
constexpr int64_t kParallelFloats = int64_t(1) << 19;
constexpr int64_t kPartFloats = int64_t(1) << 16;

int ThreadsFor(int64_t floats) { return floats >= kParallelFloats ? g_threads : 1; }

// Runs part(r0, r1) over [0, rows) split in parts of about kPartFloats floats (rows of ``width``).
void ParallelRows(int64_t rows, int64_t width, const std::function<void(int64_t, int64_t)>& part) {
  const int threads = ThreadsFor(rows * width);
  if (threads == 1) return part(0, rows);
  const int64_t per = std::max<int64_t>(1, kPartFloats / std::max<int64_t>(1, width));
  const int parts = static_cast<int>((rows + per - 1) / per);
  ParallelFor(parts, threads, [&](int t) { part(t * per, std::min(rows, (t + 1) * per)); });
}

// ----- RMSNorm -------------------------------------------------------------------------------------
// x * (1 / sqrt(mean(x^2) + eps)) * w in one pass per row: the statistics summed in 16 float32 lanes
// (not MindSpore's ReduceMean order, so inv_rms may differ from the MindSpore route in its last bit),
// then the scaling in that route's order, (x * inv_rms) * w without fused multiply-adds.
GP_CLONES GP_NO_FMA void RmsNormRows(const float* x, const float* w, float eps, float* out, int64_t r0, int64_t r1,
                                     int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float lanes[16] = {0.0f};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      for (int l = 0; l < 16; ++l) lanes[l] += xr[i + l] * xr[i + l];
    for (int l = 0; i < n; ++i, ++l) lanes[l] += xr[i] * xr[i];
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += lanes[l];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
    float* o = out + r * n;
    for (int64_t c = 0; c < n; ++c) o[c] = (xr[c] * inv) * w[c];
  }
}

// out = x + y (the residual connections; MindSpore's Add, the same bits).
GP_CLONES void AddRange(const float* x, const float* y, float* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) out[i] = x[i] + y[i];
}

// ----- rotary embedding ----------------------------------------------------------------------------
GP_CLONES GP_NO_FMA void RopeRows(const float* x, const float* cos, const float* sin, const int32_t* index, float* out,
                        int64_t r0, int64_t r1, int64_t w) {
  std::vector<float> partner(static_cast<size_t>(w));
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * w;
    for (int64_t i = 0; i < w; ++i) partner[i] = xr[index[i]];
    const float* c = cos + r * w;
    const float* s = sin + r * w;
    float* o = out + r * w;
    for (int64_t i = 0; i < w; ++i) o[i] = xr[i] * c[i] + partner[i] * s[i];
  }
}

// ----- causal attention ----------------------------------------------------------------------------
constexpr float kMaskValue = -1e9f;   // golden_ptq.networks.llama._MASK_VALUE
constexpr int kQb = 32;   // query rows per task
constexpr int kRb = 4;    // query rows per register block

struct AttnArgs {
  const float* q;
  const float* kt;      // keys transposed per (b, kv head): [B, Hkv, D, Sp]
  const float* v;       // [B, Hkv, S, D]
  const int32_t* key_mask;
  float* out;
  int64_t b, t, s, sp, h, hkv, d;
};

// Register blocking: V is one native register (L = 16, 8 or 4 floats under AVX-512, AVX2, SSE2);
// the row and chunk blocks below keep the accumulators, loaded keys/values and the broadcast within
// 16 registers, the smallest file (see AttentionTaskFor).

// Scores of kRb query rows against the keys [0, jend) (jend a multiple of 16, <= sp), RB rows per pass.
template <typename V, int RB>
GP_INLINE void Scores(const float* const* qrows, const float* kt, int64_t sp, int64_t d, int64_t jend,
                      float* scores) {
  constexpr int L = sizeof(V) / 4;
  for (int r0 = 0; r0 < kRb; r0 += RB) {
    for (int64_t j = 0; j < jend; j += 2 * L) {
      const bool two = j + L < jend;
      V a0[RB] = {}, a1[RB] = {};
      for (int64_t c = 0; c < d; ++c) {
        const float* kc = kt + c * sp + j;
        V k0 = LoadV<V>(kc);
        V k1 = two ? LoadV<V>(kc + L) : V{};
        for (int r = 0; r < RB; ++r) {
          V qv = SplatV<V>(qrows[r0 + r][c]);
          a0[r] += qv * k0;
          a1[r] += qv * k1;
        }
      }
      for (int r = 0; r < RB; ++r) {   // rows past ``rows`` (zero queries) too: Context reads them
        StoreV<V>(scores + (r0 + r) * sp + j, a0[r]);
        if (two) StoreV<V>(scores + (r0 + r) * sp + j + L, a1[r]);
      }
    }
  }
}

// out rows = sum_j p[r][j] * v[j] for j < jend, V rows of DC vectors; RB rows and DH vectors per pass.
template <typename V, int DC, int RB, int DH>
GP_INLINE void ContextFixed(const float* probs, int rows, int64_t sp, const float* v, int64_t jend,
                            float* const* orows) {
  constexpr int L = sizeof(V) / 4;
  for (int r0 = 0; r0 < rows; r0 += RB) {
    for (int c0 = 0; c0 < DC; c0 += DH) {
      V acc[RB][DH] = {};
      for (int64_t j = 0; j < jend; ++j) {
        const float* vj = v + (j * DC + c0) * L;
        V vv[DH];
        for (int c = 0; c < DH; ++c) vv[c] = LoadV<V>(vj + c * L);
        for (int r = 0; r < RB; ++r) {
          V p = SplatV<V>(probs[(r0 + r) * sp + j]);   // rows up to kRb hold scores (zero queries)
          for (int c = 0; c < DH; ++c) acc[r][c] += p * vv[c];
        }
      }
      for (int r = 0; r < RB && r0 + r < rows; ++r)
        for (int c = 0; c < DH; ++c) StoreV<V>(orows[r0 + r] + (c0 + c) * L, acc[r][c]);
    }
  }
}

template <typename V, int RB, int DH>
GP_INLINE void Context(const float* probs, int rows, int64_t sp, const float* v, int64_t d, int64_t jend,
                       float* const* orows) {
  constexpr int L = sizeof(V) / 4;
  if (d == 64) return ContextFixed<V, 64 / L, RB, (DH < 64 / L ? DH : 64 / L)>(probs, rows, sp, v, jend, orows);
  if (d == 128) return ContextFixed<V, 128 / L, RB, DH>(probs, rows, sp, v, jend, orows);
  for (int r = 0; r < rows; ++r) {
    float* o = orows[r];
    std::fill(o, o + d, 0.0f);
    for (int64_t j = 0; j < jend; ++j) {
      const V p = SplatV<V>(probs[r * sp + j]);
      for (int64_t c = 0; c < d; c += L) StoreV<V>(o + c, LoadV<V>(o + c) + p * LoadV<V>(v + j * d + c));
    }
  }
}

// Softmax of one score row in place over keys [0, jend): keys beyond ``limit`` or masked become 0.
// Returns 1 / sum, or 0 when no key is allowed.
template <typename V>
GP_INLINE float SoftmaxRow(float* row, int64_t jend, int64_t limit, const int32_t* key_mask) {
  constexpr int L = sizeof(V) / 4;
  const float neg = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < jend; ++j)
    if (j > limit || key_mask[j] == 0) row[j] = neg;
  V mx = SplatV<V>(neg);
  for (int64_t j = 0; j < jend; j += L) {
    V x = LoadV<V>(row + j);
    mx = x > mx ? x : mx;
  }
  const float m = HMax(mx);
  if (m == neg) return 0.0f;
  const V vm = SplatV<V>(m);
  V sum{};
  for (int64_t j = 0; j < jend; j += L) {
    V e = Exp(LoadV<V>(row + j) - vm);
    e = LoadV<V>(row + j) == SplatV<V>(neg) ? V{} : e;
    StoreV<V>(row + j, e);
    sum += e;
  }
  return 1.0f / HSum(sum);
}

// A query row with no visible key (a left-padding position): the MindSpore route adds the same
// -1e9 to every score and takes the softmax over all S keys; so does this (plain loops, rare rows).
void MaskedRow(const float* q, const float* kt, int64_t sp, int64_t s, int64_t d, const float* v, float* row,
               float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < s; ++j) {
    float dot = 0.0f;
    for (int64_t c = 0; c < d; ++c) dot += q[c] * kt[c * sp + j];
    row[j] = dot + kMaskValue;
    m = std::max(m, row[j]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < s; ++j) {
    row[j] = std::exp(row[j] - m);
    sum += row[j];
  }
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < s; ++j)
    for (int64_t c = 0; c < d; ++c) out[c] += (row[j] / sum) * v[j * d + c];
}

template <typename V, int SCORE_ROWS, int CONTEXT_ROWS, int CONTEXT_CHUNKS>
GP_INLINE void AttentionTask(const AttnArgs& a, int task, std::vector<float>* scratch) {
  const int64_t blocks = (a.t + kQb - 1) / kQb;
  const int64_t bh = task / blocks, blk = task % blocks;
  const int64_t b = bh / a.h, h = bh % a.h, g = h / (a.h / a.hkv);
  const int64_t i0 = blk * kQb, i1 = std::min(a.t, i0 + kQb);
  const int64_t offset = a.s - a.t;
  const float* kt = a.kt + (b * a.hkv + g) * a.d * a.sp;
  const float* v = a.v + (b * a.hkv + g) * a.s * a.d;
  const int32_t* key_mask = a.key_mask + b * a.s;
  const int64_t width = a.h * a.d;
  scratch->resize(static_cast<size_t>((kRb + 1) * a.sp));   // kRb score rows, one for MaskedRow
  float* probs = scratch->data();
  std::vector<float> zeros(static_cast<size_t>(a.d), 0.0f);
  for (int64_t i = i0; i < i1; i += kRb) {
    const int rows = static_cast<int>(std::min<int64_t>(kRb, i1 - i));
    const float* qrows[kRb];
    float* orows[kRb];
    float dummy_out[kRb][256];
    for (int r = 0; r < kRb; ++r) {
      qrows[r] = r < rows ? a.q + ((b * a.t + i + r) * a.h + h) * a.d : zeros.data();
      orows[r] = r < rows ? a.out + (b * a.t + i + r) * width + h * a.d : dummy_out[r];
    }
    const int64_t last = std::min(a.s - 1, offset + i + rows - 1);   // the block's last visible key
    const int64_t jend = std::min(a.sp, (last + 16) / 16 * 16);
    Scores<V, SCORE_ROWS>(qrows, kt, a.sp, a.d, jend, probs);
    float inv[kRb];
    for (int r = 0; r < rows; ++r) inv[r] = SoftmaxRow<V>(probs + r * a.sp, jend, offset + i + r, key_mask);
    Context<V, CONTEXT_ROWS, CONTEXT_CHUNKS>(probs, rows, a.sp, v, a.d, std::min(jend, a.s), orows);   // v: no padding rows
    for (int r = 0; r < rows; ++r) {
      float* o = orows[r];
      if (inv[r] != 0.0f) {
        for (int64_t c = 0; c < a.d; ++c) o[c] *= inv[r];
        continue;
      }
      MaskedRow(qrows[r], kt, a.sp, a.s, a.d, v, probs + kRb * a.sp, o);
    }
  }
}

// One instantiation per instruction set (row and chunk blocks that fit its registers), each compiled
// for its set; g_isa picks one.
__attribute__((target("avx512f"))) void AttentionTaskAvx512(const AttnArgs& a, int task, std::vector<float>* s) {
  AttentionTask<Vec<16>::F, 4, 4, 4>(a, task, s);
}
__attribute__((target("avx2,fma"))) void AttentionTaskAvx2(const AttnArgs& a, int task, std::vector<float>* s) {
  AttentionTask<Vec<8>::F, 4, 2, 4>(a, task, s);
}
void AttentionTaskBaseline(const AttnArgs& a, int task, std::vector<float>* s) {
  AttentionTask<Vec<4>::F, 4, 2, 4>(a, task, s);
}

// ----- fast Walsh-Hadamard transform ---------------------------------------------------------------
// Butterfly stage h of a block: (x[i], x[i + h]) -> (x[i] + x[i + h], x[i] - x[i + h]) for every i with
// bit h clear. Stages with h < L stay inside one vector: y = x[i ^ h] + (i & h ? -x[i] : x[i]), the
// same sums and differences (a + b and b + a round alike). Wider stages pair whole vectors.
template <typename V, int H>
GP_INLINE V InVectorStage(V v) {
  constexpr int L = sizeof(V) / 4;
  typename Vec<L>::I perm;
  V sign;
  for (int i = 0; i < L; ++i) {
    perm[i] = i ^ H;
    sign[i] = (i & H) ? -1.0f : 1.0f;
  }
  return __builtin_shuffle(v, perm) + v * sign;
}

template <typename V>
GP_INLINE V InVectorStages(V v) {
  constexpr int L = sizeof(V) / 4;
  v = InVectorStage<V, 1>(v);
  v = InVectorStage<V, 2>(v);
  if (L > 4) v = InVectorStage<V, (L > 4 ? 4 : 1)>(v);
  if (L > 8) v = InVectorStage<V, (L > 8 ? 8 : 1)>(v);
  return v;
}

// Scalar transform of one block shorter than a vector (small widths only).
void FwhtBlockScalar(const float* x, float* o, int64_t block, float scale) {
  std::copy(x, x + block, o);
  for (int64_t h = 1; h < block; h *= 2)
    for (int64_t i = 0; i < block; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = o[j], b = o[j + h];
        o[j] = a + b;
        o[j + h] = a - b;
      }
  for (int64_t j = 0; j < block; ++j) o[j] *= scale;
}

// Rows [r0, r1) of x [rows, width] into out: the in-vector stages on the way in, then the wider
// stages in place in ``out`` (a block stays in L1), the scale folded into the last stage.
template <typename V>
GP_INLINE void FwhtRows(const float* x, float* out, int64_t r0, int64_t r1, int64_t width, int64_t block,
                        float scale) {
  constexpr int L = sizeof(V) / 4;
  const V vs = SplatV<V>(scale);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b0 = r * width; b0 < (r + 1) * width; b0 += block) {
      const float* xb = x + b0;
      float* o = out + b0;
      if (block < L) {
        FwhtBlockScalar(xb, o, block, scale);
        continue;
      }
      const bool last = block == L;
      for (int64_t i = 0; i < block; i += L) {
        const V v = InVectorStages<V>(LoadV<V>(xb + i));
        StoreV<V>(o + i, last ? v * vs : v);
      }
      for (int64_t h = L; h < block; h *= 2) {
        const V m = 2 * h == block ? vs : SplatV<V>(1.0f);
        for (int64_t i = 0; i < block; i += 2 * h)
          for (int64_t j = i; j < i + h; j += L) {
            const V a = LoadV<V>(o + j), b = LoadV<V>(o + j + h);
            StoreV<V>(o + j, (a + b) * m);
            StoreV<V>(o + j + h, (a - b) * m);
          }
      }
    }
  }
}

// ----- SwiGLU ---------------------------------------------------------------------------------------
// out = silu(gate) * up = gate * up / (1 + exp(-gate)), with Exp's polynomial (|rel err| < 2e-7; past
// -87 or 88 it saturates, so silu goes to 0 or to gate as it should). MindSpore's SiLU uses another
// exp approximation (~5e-6 relative): the two routes differ in the last bits, not in rounding order.
template <typename V>
GP_INLINE void SwigluRows(const float* gate, const float* up, float* out, int64_t i0, int64_t i1) {
  constexpr int L = sizeof(V) / 4;
  const V one = SplatV<V>(1.0f);
  int64_t i = i0;
  for (; i + L <= i1; i += L) {
    const V g = LoadV<V>(gate + i);
    StoreV<V>(out + i, g * LoadV<V>(up + i) / (one + Exp<V>(-g)));
  }
  for (; i < i1; ++i) out[i] = gate[i] * up[i] / (1.0f + std::exp(-gate[i]));
}

typedef void (*SwigluFn)(const float*, const float*, float*, int64_t, int64_t);
__attribute__((target("avx512f"))) void SwigluAvx512(const float* g, const float* u, float* o, int64_t i0, int64_t i1) {
  SwigluRows<Vec<16>::F>(g, u, o, i0, i1);
}
__attribute__((target("avx2,fma"))) void SwigluAvx2(const float* g, const float* u, float* o, int64_t i0, int64_t i1) {
  SwigluRows<Vec<8>::F>(g, u, o, i0, i1);
}
void SwigluBaseline(const float* g, const float* u, float* o, int64_t i0, int64_t i1) {
  SwigluRows<Vec<4>::F>(g, u, o, i0, i1);
}

typedef void (*FwhtFn)(const float*, float*, int64_t, int64_t, int64_t, int64_t, float);
__attribute__((target("avx512f"))) void FwhtRowsAvx512(const float* x, float* o, int64_t r0, int64_t r1, int64_t w,
                                                       int64_t block, float scale) {
  FwhtRows<Vec<16>::F>(x, o, r0, r1, w, block, scale);
}
__attribute__((target("avx2,fma"))) void FwhtRowsAvx2(const float* x, float* o, int64_t r0, int64_t r1, int64_t w,
                                                      int64_t block, float scale) {
  FwhtRows<Vec<8>::F>(x, o, r0, r1, w, block, scale);
}
void FwhtRowsBaseline(const float* x, float* o, int64_t r0, int64_t r1, int64_t w, int64_t block, float scale) {
  FwhtRows<Vec<4>::F>(x, o, r0, r1, w, block, scale);
}

enum Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

int DetectIsa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kBaseline;
}

const int g_cpu_isa = DetectIsa();
int g_isa = g_cpu_isa;

void (*AttentionTaskFor(int isa))(const AttnArgs&, int, std::vector<float>*) {
  if (isa == kAvx512) return AttentionTaskAvx512;
  if (isa == kAvx2) return AttentionTaskAvx2;
  return AttentionTaskBaseline;
}

SwigluFn SwigluFor(int isa) {
  if (isa == kAvx512) return SwigluAvx512;
  if (isa == kAvx2) return SwigluAvx2;
  return SwigluBaseline;
}

FwhtFn FwhtRowsFor(int isa) {
  if (isa == kAvx512) return FwhtRowsAvx512;
  if (isa == kAvx2) return FwhtRowsAvx2;
  return FwhtRowsBaseline;
}

bool Is(const char* dtype, const char* want) { return std::strcmp(dtype, want) == 0; }

// The first ``count`` operands are float32.
bool Floats(const char** dtypes, int count) {
  for (int i = 0; i < count; ++i)
    if (!Is(dtypes[i], "float32")) return false;
  return true;
}

int64_t Elements(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool SameShape(int nd0, const int64_t* s0, int nd1, const int64_t* s1) {
  if (nd0 != nd1) return false;
  for (int i = 0; i < nd0; ++i)
    if (s0[i] != s1[i]) return false;
  return true;
}

// An elementwise operator of two float32 operands and one output of the same shape: fn(a, b, out, i0,
// i1) over [i0, i1), split in parts of kPartFloats over threads when large.
int Elementwise2(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                 void (*fn)(const float*, const float*, float*, int64_t, int64_t)) {
  if (nparam != 3 || !Floats(dtypes, 3)) return 1;
  if (!SameShape(ndims[0], shapes[0], ndims[1], shapes[1]) || !SameShape(ndims[0], shapes[0], ndims[2], shapes[2]))
    return 1;
  const int64_t n = Elements(ndims[0], shapes[0]);
  const float* a = static_cast<const float*>(params[0]);
  const float* b = static_cast<const float*>(params[1]);
  float* out = static_cast<float*>(params[2]);
  ParallelRows(n / kPartFloats + 1, kPartFloats, [&](int64_t p0, int64_t p1) {
    fn(a, b, out, std::min(n, p0 * kPartFloats), std::min(n, p1 * kPartFloats));
  });
  return 0;
}

}  // namespace

extern "C" {

int gp_prefill_threads() { return g_threads; }
void gp_prefill_set_threads(int threads) { g_threads = std::max(1, std::min(threads, 64)); }
// The attention kernel's and the Walsh-Hadamard transform's instruction set: 0 baseline x86-64, 1 AVX2 + FMA, 2 AVX-512F. Setting asks for
// at most ``isa`` (tests run each set the CPU has); returns the one now in use.
int gp_prefill_isa() { return g_isa; }
int gp_prefill_set_isa(int isa) {
  g_isa = std::max(0, std::min(isa, g_cpu_isa));
  return g_isa;
}

// (x f32 [..., N], w f32 [N], eps f32 [1]) -> f32 like x
int GpRmsNorm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  if (nparam != 4 || ndims[0] < 1 || !Floats(dtypes, 4)) return 1;
  const int64_t n = shapes[0][ndims[0] - 1];
  if (n == 0 || ndims[1] != 1 || shapes[1][0] != n || Elements(ndims[2], shapes[2]) != 1) return 1;
  if (!SameShape(ndims[0], shapes[0], ndims[3], shapes[3])) return 1;
  const int64_t rows = Elements(ndims[0], shapes[0]) / n;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float eps = *static_cast<const float*>(params[2]);
  float* out = static_cast<float*>(params[3]);
  ParallelRows(rows, n, [&](int64_t r0, int64_t r1) { RmsNormRows(x, w, eps, out, r0, r1, n); });
  return 0;
}

// (x f32 [B, T, W], cos f32 [B, T, W], sin f32 [B, T, W], index int32 [W]) -> f32 [B, T, W]
int GpRope(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  if (nparam != 5 || ndims[0] < 1 || !Floats(dtypes, 3) || !Is(dtypes[3], "int32")) return 1;
  for (int i : {1, 2, 4})
    if (!SameShape(ndims[0], shapes[0], ndims[i], shapes[i])) return 1;
  const int64_t w = shapes[0][ndims[0] - 1];
  if (ndims[3] != 1 || shapes[3][0] != w || w == 0) return 1;
  const int32_t* index = static_cast<const int32_t*>(params[3]);
  for (int64_t i = 0; i < w; ++i)
    if (index[i] < 0 || index[i] >= w) return 1;
  const int64_t rows = Elements(ndims[0], shapes[0]) / w;
  ParallelRows(rows, w, [&](int64_t r0, int64_t r1) {
    RopeRows(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
             static_cast<const float*>(params[2]), index, static_cast<float*>(params[4]), r0, r1, w);
  });
  return 0;
}

// (q f32 [B, T, H*D], k f32 [B, Hkv, S, D], v f32 [B, Hkv, S, D], key_mask int32 [B, S]) -> f32 [B, T, H*D]
int GpCausalAttention(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  if (nparam != 5 || ndims[0] != 3 || ndims[1] != 4 || ndims[3] != 2 || !Floats(dtypes, 3) || !Is(dtypes[3], "int32"))
    return 1;
  if (!SameShape(ndims[1], shapes[1], ndims[2], shapes[2]) || !SameShape(ndims[0], shapes[0], ndims[4], shapes[4]))
    return 1;
  AttnArgs a{};
  a.b = shapes[0][0];
  a.t = shapes[0][1];
  a.hkv = shapes[1][1];
  a.s = shapes[1][2];
  a.d = shapes[1][3];
  if (shapes[1][0] != a.b || a.d % 16 != 0 || a.d > 256 || a.hkv == 0 || shapes[0][2] % (a.hkv * a.d) != 0) return 1;
  a.h = shapes[0][2] / a.d;
  if (a.t > a.s || shapes[3][0] != a.b || shapes[3][1] != a.s || a.t == 0) return 1;
  a.sp = (a.s + 15) / 16 * 16;
  const float* k = static_cast<const float*>(params[1]);
  std::vector<float> kt(static_cast<size_t>(a.b * a.hkv * a.d * a.sp), 0.0f);
  ParallelFor(static_cast<int>(a.b * a.hkv), g_threads, [&](int bg) {
    const float* src = k + bg * a.s * a.d;
    float* dst = kt.data() + bg * a.d * a.sp;
    for (int64_t j = 0; j < a.s; ++j)
      for (int64_t c = 0; c < a.d; ++c) dst[c * a.sp + j] = src[j * a.d + c];
  });
  a.q = static_cast<const float*>(params[0]);
  a.kt = kt.data();
  a.v = static_cast<const float*>(params[2]);
  a.key_mask = static_cast<const int32_t*>(params[3]);
  a.out = static_cast<float*>(params[4]);
  const int64_t blocks = (a.t + kQb - 1) / kQb;
  const int tasks = static_cast<int>(a.b * a.h * blocks);
  std::vector<std::vector<float>> scratch(static_cast<size_t>(g_threads));
  std::atomic<int> slot{0};
  const auto task_fn = AttentionTaskFor(g_isa);
  // Largest tasks (late query blocks read the most keys) first, so threads finish together.
  ParallelFor(g_threads, g_threads, [&](int worker) {
    std::vector<float>* mine = &scratch[static_cast<size_t>(worker)];
    for (int t = slot.fetch_add(1); t < tasks; t = slot.fetch_add(1)) {
      const int64_t bh = t % (a.b * a.h), blk = blocks - 1 - t / (a.b * a.h);
      task_fn(a, static_cast<int>(bh * blocks + blk), mine);
    }
  });
  return 0;
}

// (x f32 [..., W], block int32 [1]) -> f32 like x; block a power of two dividing W
int GpFwht(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  if (nparam != 3 || ndims[0] < 1 || !Floats(dtypes, 1) || !Is(dtypes[1], "int32") || !Is(dtypes[2], "float32"))
    return 1;
  if (Elements(ndims[1], shapes[1]) != 1 || !SameShape(ndims[0], shapes[0], ndims[2], shapes[2])) return 1;
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t block = *static_cast<const int32_t*>(params[1]);
  if (width == 0 || block < 1 || (block & (block - 1)) != 0 || width % block != 0) return 1;
  const int64_t rows = Elements(ndims[0], shapes[0]) / width;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(block)));
  const FwhtFn fn = FwhtRowsFor(g_isa);
  const float* x = static_cast<const float*>(params[0]);
  float* out = static_cast<float*>(params[2]);
  ParallelRows(rows, width, [&](int64_t r0, int64_t r1) { fn(x, out, r0, r1, width, block, scale); });
  return 0;
}

// (gate f32 [...], up f32 like gate) -> f32 like gate: silu(gate) * up
int GpSwiglu(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return Elementwise2(nparam, params, ndims, shapes, dtypes, SwigluFor(g_isa));
}

// (x f32 [...], y f32 like x) -> x + y
int GpAdd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return Elementwise2(nparam, params, ndims, shapes, dtypes, AddRange);
}

// (x f32 [B, T, Hin*D], heads int32 [H]) -> f32 [B, H, T, D]
int GpToHeads(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  if (nparam != 3 || ndims[0] != 3 || ndims[1] != 1 || ndims[2] != 4 || !Is(dtypes[0], "float32") ||
      !Is(dtypes[1], "int32") || !Is(dtypes[2], "float32"))
    return 1;
  const int64_t b = shapes[0][0], t = shapes[0][1], w = shapes[0][2], h = shapes[2][1], d = shapes[2][3];
  if (shapes[2][0] != b || shapes[2][2] != t || shapes[1][0] != h || d <= 0 || w % d != 0) return 1;
  const int64_t hin = w / d;
  const int32_t* heads = static_cast<const int32_t*>(params[1]);
  for (int64_t i = 0; i < h; ++i)
    if (heads[i] < 0 || heads[i] >= hin) return 1;
  const float* x = static_cast<const float*>(params[0]);
  float* out = static_cast<float*>(params[2]);
  ParallelRows(b * h, t * d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* src = x + (r / h) * t * w + heads[r % h] * d;
      float* dst = out + r * t * d;
      for (int64_t i = 0; i < t; ++i) std::memcpy(dst + i * d, src + i * w, static_cast<size_t>(d) * sizeof(float));
    }
  });
  return 0;
}

}  // extern "C"
