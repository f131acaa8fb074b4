// Integer and int8-weight matrix products for golden_ptq's quantized Linear, as MindSpore
// ``ops.Custom`` "aot" kernels on CPU.
//
// Every product is ``x [M, K] @ w [N, K].T``: ``w`` is the int8 weight in MindFormers' layout.
//   GpQGemmStatic   x float, quantized per tensor (scale, zero point), int8 x int8 -> int32 exact,
//                   out = float(acc + quant_bias[n]) * deq_scale[n]
//   GpQGemmDynamic  x float, quantized per row (symmetric, scale = max(absmax / 127, 1e-8)),
//                   out = (float(acc) * row_scale[m]) * weight_scale[n]
//   GpQGemmDynamicAbsmax  the same with the row ranges given (a row-parallel shard passes the whole row's)
//   GpI8Gemm        int8 x int8 -> int32, exact (the building block, tested against int64 numpy)
//   GpW8Gemm        float x int8 weight, out = (x @ float(w).T) * weight_scale[n]  (A16W8, no float copy)
//
// Instruction sets, chosen at run time (gp_set_isa lowers the choice, for tests):
//   4  AMX-INT8: the VNNI path with its many-row products on 16 x 64-byte tiles (tdpbusd, the same
//      u8 x s8 arithmetic on the same packed panels)
//   3  AVX-512 VNNI: u8 x s8 dot products (vpdpbusd) on x + 128, minus 128 * (column sum of w)
//   1  AVX2: int8 widened to int16 (many rows: the quantizer writes int16 codes), vpmaddwd (exact),
//      FMA for float
//   0  portable C++ (the reference the vector paths must equal)
// Rounding of the quantizers is round-half-to-even in float32 with true division, as MindSpore's
// ops.div / ops.round compute it, so the codes equal the graph-op route bit for bit.
#include <immintrin.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gp_runtime.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using gp::kAmx;
using gp::kAvx2;
using gp::kAvx512Vnni;
using gp::kScalar;

// AMX tiles need the kernel's leave (Linux 5.16+: arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA),
// asked once for the whole process; refused or unknown, the VNNI path runs.
bool AmxPermitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

int DetectIsa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")) {
    if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") && AmxPermitted()) return kAmx;
    return kAvx512Vnni;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kScalar;
}

const int g_detected = DetectIsa();
int g_isa = g_detected;

// Register blocks keep their accumulators in arrays indexed by loop counters: unless those loops are
// unrolled before GCC's scalar replacement runs, the arrays stay in memory and every multiply-add
// step reloads and stores its accumulator (VNNI 8x48 block: 2.2x slower). GP_UNROLL in front of
// each such loop unrolls it early; it changes no arithmetic (same operations, same order).
#define GP_UNROLL _Pragma("GCC unroll 16")

// ----- a small persistent thread pool ------------------------------------------------------------
class Pool {
 public:
  explicit Pool(int threads) { Resize(threads); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void Resize(int threads) {
    // Workers are never joined: the pool lives for the process (threads end with it).
    while (static_cast<int>(workers_.size()) < threads - 1) {
      workers_.emplace_back([this, id = workers_.size()] { Loop(static_cast<int>(id)); });
      workers_.back().detach();
    }
    wanted_ = std::max(1, threads);
  }

  // Runs fn(0 .. tasks - 1) on the caller and up to (threads - 1) helpers; returns when every task
  // has run. The caller waits only for tasks a helper has claimed, never for a helper to wake up:
  // under contention (other processes, MindSpore's own threads) a woken helper may get a core late,
  // and the caller then runs the remaining tasks itself.
  void Run(int tasks, const std::function<void(int)>& fn) {
    int helpers = std::min(wanted_, tasks) - 1;
    if (helpers <= 0) {
      for (int t = 0; t < tasks; ++t) fn(t);
      return;
    }
    std::lock_guard<std::mutex> serial(run_mu_);
    uint32_t gen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      gen = static_cast<uint32_t>(++generation_);
      fn_ = &fn;
      tasks_ = tasks;
      helpers_ = helpers;
      completed_.store(0);
      ticket_.store(uint64_t(gen) << 32);   // task 0 of this generation is next
    }
    cv_.notify_all();
    Work(gen, tasks, &fn);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return completed_.load() == tasks; });
  }

 private:
  // The next task of generation ``gen``, or -1 when none is left or another generation has begun.
  int Claim(uint32_t gen, int tasks) {
    uint64_t v = ticket_.load();
    for (;;) {
      if (static_cast<uint32_t>(v >> 32) != gen || static_cast<int>(v & 0xFFFFFFFFu) >= tasks) return -1;
      if (ticket_.compare_exchange_weak(v, v + 1)) return static_cast<int>(v & 0xFFFFFFFFu);
    }
  }

  // ``fn`` stays valid while one of its tasks is claimed and not completed (Run waits for them).
  void Work(uint32_t gen, int tasks, const std::function<void(int)>* fn) {
    for (int t = Claim(gen, tasks); t >= 0; t = Claim(gen, tasks)) {
      (*fn)(t);
      if (completed_.fetch_add(1) + 1 == tasks) {
        std::lock_guard<std::mutex> lock(mu_);
        done_.notify_one();
      }
    }
  }

  void Loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      uint32_t gen;
      int tasks;
      const std::function<void(int)>* fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= helpers_) continue;
        gen = static_cast<uint32_t>(seen);
        tasks = tasks_;
        fn = fn_;
      }
      Work(gen, tasks, fn);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  int tasks_ = 0, helpers_ = 0, wanted_ = 1;
  std::atomic<uint64_t> ticket_{0};   // generation (high 32 bits), next task index (low 32 bits)
  std::atomic<int> completed_{0};
  uint64_t generation_ = 0;
};

int AffinityCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

Pool& ThePool() {
  static Pool* pool = new Pool(std::min(AffinityCpus(), 8));
  return *pool;
}

// Below this many multiply-adds a call runs on the calling thread only.
constexpr int64_t kParallelWork = 1 << 19;
// The few-row int8 products split over threads only from this many weight bytes: below it a second
// thread saves less than waking it costs (1..16 rows x 576 x 1536, weight in L2: the same time on
// 1 and 2 threads; in a compiled decode graph beside MindSpore's own threads, 1 thread 25-30 %
// faster), while the 576 x 49152 head runs 1.7-1.9x faster on 2.
constexpr int64_t kParallelDotWeight = int64_t(4) << 20;

// ----- epilogue: out[m, n] = (float(acc + nbias[n]) * rs[m]) * cs[n], or int32 acc + nbias[n] ---
struct Epilogue {
  const int32_t* nbias;  // [N] or null
  const float* rs;       // [M] or null (1)
  const float* cs;       // [N] or null (1)
  float* outf;           // [M, N] float output, or
  int32_t* outi;         // [M, N] int32 output
  int64_t n_total;

  // The same epilogue for rows [m, M): row 0 of the result is row m.
  Epilogue Rows(int64_t m) const {
    return Epilogue{nbias, rs ? rs + m : nullptr, cs, outf ? outf + m * n_total : nullptr,
                    outi ? outi + m * n_total : nullptr, n_total};
  }

  inline void Put(int64_t m, int64_t n, int32_t acc) const {
    int32_t v = acc + (nbias ? nbias[n] : 0);
    if (outi) {
      outi[m * n_total + n] = v;
      return;
    }
    float f = static_cast<float>(v);
    if (rs) f = f * rs[m];
    if (cs) f = f * cs[n];
    outf[m * n_total + n] = f;
  }
};

// ----- quantizers (float -> int8 codes) ----------------------------------------------------------
// Codes are stored in one of three layouts, chosen by the product that reads them (Codes::For):
//   kOffsetU8  (VNNI / AMX) uint8 x + 128, rows padded with zeros to a multiple of 64 bytes;
//   kWideS16   (AVX2, many rows) the codes widened to int16, rows padded with a zero to an even
//              length, so the product's broadcast 32-bit load reads a (k, k + 1) pair;
//   kS8        (everything else) plain int8 rows of k.
enum CodeLayout { kS8, kOffsetU8, kWideS16 };

struct Codes {
  std::vector<uint8_t> buf;
  CodeLayout layout;
  int64_t ld;   // elements per row

  Codes(int64_t m_rows, int64_t k, CodeLayout layout_) : layout(layout_) {
    ld = layout == kOffsetU8 ? (k + 63) / 64 * 64 : layout == kWideS16 ? (k + 1) / 2 * 2 : k;
    buf.assign(static_cast<size_t>(m_rows * ld * (layout == kWideS16 ? 2 : 1)), 0);
  }
  // The layout the product of m_rows input rows reads on this CPU (I8Gemm dispatches the same way).
  static Codes For(int64_t m_rows, int64_t k);

  bool offset() const { return layout == kOffsetU8; }
  const int8_t* s8() const { return reinterpret_cast<const int8_t*>(buf.data()); }
  const uint8_t* u8() const { return buf.data(); }
  const int16_t* s16() const { return reinterpret_cast<const int16_t*>(buf.data()); }
  int16_t* s16() { return reinterpret_cast<int16_t*>(buf.data()); }
  inline void Put(int64_t m, int64_t i, int32_t q) {
    if (layout == kWideS16) {
      s16()[m * ld + i] = static_cast<int16_t>(q);
    } else {
      buf[m * ld + i] = static_cast<uint8_t>(layout == kOffsetU8 ? q + 128 : q);
    }
  }
};

inline float RoundEven(float v) { return std::nearbyint(v); }

// q = clip(round(x / scale) + zp, lo, hi) (a NaN clips to lo).
inline int32_t QuantizeOne(float x, float s, float zp, float lo, float hi) {
  return static_cast<int32_t>(std::min(hi, std::max(lo, RoundEven(x / s) + zp)));
}

// QuantizeOne for rows [m0, m1), ``scale`` per row or one for all.
void QuantizeRowsScalar(const float* x, int64_t k, int64_t m0, int64_t m1, const float* scale, bool per_row,
                        float zp, float lo, float hi, Codes* codes) {
  for (int64_t m = m0; m < m1; ++m) {
    const float s = scale[per_row ? m : 0];
    for (int64_t i = 0; i < k; ++i) codes->Put(m, i, QuantizeOne(x[m * k + i], s, zp, lo, hi));
  }
}

// The same codes eight at a time (int8 or int16 layout): the division, the rounding to even and the
// clamp are the scalar's operations (max(v, lo) takes lo for a NaN, as std::max(lo, v) does).
__attribute__((target("avx2,fma"))) void QuantizeRowsAvx2(const float* x, int64_t k, int64_t m0, int64_t m1,
                                                          const float* scale, bool per_row, float zp, float lo,
                                                          float hi, Codes* codes) {
  const __m256 vzp = _mm256_set1_ps(zp), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const bool wide = codes->layout == kWideS16;
  const int64_t k8 = k & ~int64_t(7);
  for (int64_t m = m0; m < m1; ++m) {
    const float s = scale[per_row ? m : 0];
    const __m256 vs = _mm256_set1_ps(s);
    const float* row = x + m * k;
    for (int64_t i = 0; i < k8; i += 8) {
      __m256 v = _mm256_div_ps(_mm256_loadu_ps(row + i), vs);
      v = _mm256_add_ps(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzp);
      v = _mm256_min_ps(_mm256_max_ps(v, vlo), vhi);
      const __m256i q = _mm256_cvtps_epi32(v);   // an integer in [lo, hi]: exact
      const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      if (wide) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(codes->s16() + m * codes->ld + i), q16);
      } else {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(codes->buf.data() + m * codes->ld + i), _mm_packs_epi16(q16, q16));
      }
    }
    for (int64_t i = k8; i < k; ++i) codes->Put(m, i, QuantizeOne(row[i], s, zp, lo, hi));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void QuantizeRowsAvx512(
    const float* x, int64_t k, int64_t m0, int64_t m1, const float* scale, bool per_row, float zp, float lo,
    float hi, Codes* codes) {
  const __m512 vzp = _mm512_set1_ps(zp), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512i shift = _mm512_set1_epi32(codes->offset() ? 128 : 0);
  for (int64_t m = m0; m < m1; ++m) {
    const __m512 vs = _mm512_set1_ps(scale[per_row ? m : 0]);
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
      __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x + m * k + i), vs);
      v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzp);
      v = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));
      __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), shift);
      _mm_mask_storeu_epi8(codes->buf.data() + m * codes->ld + i, mask, _mm512_cvtepi32_epi8(q));
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) float AbsMaxAvx512(const float* row, int64_t k) {
  __m512 best = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
    best = _mm512_max_ps(best, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, row + i)));
  }
  return _mm512_reduce_max_ps(best);
}

// max |row[i]| over the lanes of the vectors, then the tail; max(|x|, best) keeps best for a NaN, as
// the scalar std::max(best, |x|) does (max is exact, so the order does not matter).
__attribute__((target("avx2,fma"))) float AbsMaxAvx2(const float* row, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 best = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) best = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(row + i)), best);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float amax = 0.0f;
  for (float lane : lanes) amax = std::max(amax, lane);
  for (; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
  return amax;
}

float AbsMax(const float* row, int64_t k, int isa) {
  if (isa >= kAvx512Vnni) return AbsMaxAvx512(row, k);
  if (isa >= kAvx2) return AbsMaxAvx2(row, k);
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
  return amax;
}

// ----- int8 x int8 -> int32: portable ------------------------------------------------------------
void I8Scalar(const int8_t* a, int64_t lda, const int8_t* b, int64_t m_rows, int64_t n_cols, int64_t k,
              const Epilogue& ep, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* bn = b + n * k;
    for (int64_t m = 0; m < m_rows; ++m) {
      const int8_t* am = a + m * lda;
      int32_t acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<int32_t>(am[i]) * static_cast<int32_t>(bn[i]);
      ep.Put(m, n, acc);
    }
  }
}

// ----- int8 x int8 -> int32: AVX2 (int16 widening, vpmaddwd is exact) -----------------------------
__attribute__((target("avx2,fma"))) inline int32_t HSum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2,fma"))) void I8Avx2(const int8_t* a, int64_t lda, const int8_t* b, int64_t m_rows,
                                                int64_t n_cols, int64_t k, const Epilogue& ep, int64_t n0,
                                                int64_t n1) {
  const int64_t k16 = k & ~int64_t(15);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const int8_t* bn[4] = {b + n * k, b + (n + 1) * k, b + (n + 2) * k, b + (n + 3) * k};
    for (int64_t m = 0; m < m_rows; ++m) {
      const int8_t* am = a + m * lda;
      __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
      for (int64_t i = 0; i < k16; i += 16) {
        __m256i av = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(am + i)));
        for (int j = 0; j < 4; ++j) {
          __m256i bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bn[j] + i)));
          acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(av, bv));
        }
      }
      for (int j = 0; j < 4; ++j) {
        int32_t s = HSum256(acc[j]);
        for (int64_t i = k16; i < k; ++i) s += static_cast<int32_t>(am[i]) * static_cast<int32_t>(bn[j][i]);
        ep.Put(m, n + j, s);
      }
    }
  }
  if (n < n1) I8Scalar(a, lda, b, m_rows, n_cols, k, ep, n, n1);
}

// Many input rows on AVX2: weight panels of 16 rows packed as int16 pairs of k,
// panel[g][j][0..1] = w[n + j][2g .. 2g + 1], and the codes widened to int16 rows, so one
// broadcast 32-bit load gives (x[2g], x[2g + 1]) and vpmaddwd forms 8 exact pair sums at a time.
constexpr int kNr2 = 16;  // weight rows per AVX2 panel (two 8-lane vectors)
constexpr int kMr2 = 6;   // input rows per AVX2 register block

void PackPanel16(const int8_t* b, int64_t n_cols, int64_t k, int64_t n, int64_t kp, int16_t* panel) {
  std::memset(panel, 0, static_cast<size_t>(kp) * kNr2 * 2 * sizeof(int16_t));
  for (int j = 0; j < kNr2 && n + j < n_cols; ++j) {
    const int8_t* row = b + (n + j) * k;
    for (int64_t i = 0; i < k; ++i) panel[(i >> 1) * kNr2 * 2 + j * 2 + (i & 1)] = row[i];
  }
}

// Columns [n, n + count) of row m from the 16 lanes (lo, hi): Epilogue::Put's arithmetic in vectors
// (int32 + bias, then float * row scale, then * column scale, each rounded as there), Put itself for
// a panel's ragged end.
__attribute__((target("avx2,fma"))) inline void Store16Avx2(const Epilogue& ep, int64_t m, int64_t n, int count,
                                                            __m256i lo, __m256i hi) {
  if (count < kNr2) {
    alignas(32) int32_t tmp[kNr2];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), hi);
    for (int j = 0; j < count; ++j) ep.Put(m, n + j, tmp[j]);
    return;
  }
  if (ep.nbias) {
    lo = _mm256_add_epi32(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.nbias + n)));
    hi = _mm256_add_epi32(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.nbias + n + 8)));
  }
  if (ep.outi) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ep.outi + m * ep.n_total + n), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ep.outi + m * ep.n_total + n + 8), hi);
    return;
  }
  __m256 f0 = _mm256_cvtepi32_ps(lo), f1 = _mm256_cvtepi32_ps(hi);
  if (ep.rs) {
    const __m256 r = _mm256_set1_ps(ep.rs[m]);
    f0 = _mm256_mul_ps(f0, r);
    f1 = _mm256_mul_ps(f1, r);
  }
  if (ep.cs) {
    f0 = _mm256_mul_ps(f0, _mm256_loadu_ps(ep.cs + n));
    f1 = _mm256_mul_ps(f1, _mm256_loadu_ps(ep.cs + n + 8));
  }
  _mm256_storeu_ps(ep.outf + m * ep.n_total + n, f0);
  _mm256_storeu_ps(ep.outf + m * ep.n_total + n + 8, f1);
}

template <int MR>
__attribute__((target("avx2,fma"))) void Avx2Block(const int16_t* a16, int64_t lda, const int16_t* panel,
                                                   int64_t kp, int64_t m0, int64_t n, int nvalid,
                                                   const Epilogue& ep) {
  __m256i acc[MR][2];
  GP_UNROLL
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < kp; ++g) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + g * kNr2 * 2));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + g * kNr2 * 2 + 16));
    GP_UNROLL
    for (int i = 0; i < MR; ++i) {
      int32_t word;
      std::memcpy(&word, a16 + (m0 + i) * lda + 2 * g, 4);
      const __m256i av = _mm256_set1_epi32(word);
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(av, b0));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(av, b1));
    }
  }
  GP_UNROLL
  for (int i = 0; i < MR; ++i) Store16Avx2(ep, m0 + i, n, nvalid, acc[i][0], acc[i][1]);
}

void Avx2Panel(const int16_t* a16, int64_t lda, const int16_t* panel, int64_t kp, int64_t m_begin, int64_t m_end,
               int64_t n, int nvalid, const Epilogue& ep) {
  int64_t m = m_begin;
  for (; m + kMr2 <= m_end; m += kMr2) Avx2Block<kMr2>(a16, lda, panel, kp, m, n, nvalid, ep);
  switch (m_end - m) {
    case 5: Avx2Block<5>(a16, lda, panel, kp, m, n, nvalid, ep); break;
    case 4: Avx2Block<4>(a16, lda, panel, kp, m, n, nvalid, ep); break;
    case 3: Avx2Block<3>(a16, lda, panel, kp, m, n, nvalid, ep); break;
    case 2: Avx2Block<2>(a16, lda, panel, kp, m, n, nvalid, ep); break;
    case 1: Avx2Block<1>(a16, lda, panel, kp, m, n, nvalid, ep); break;
    default: break;
  }
}

// ----- int8 x int8 -> int32: AVX-512 VNNI ----------------------------------------------------------
// ``au`` holds x + 128 as uint8, rows of ``lda`` bytes (a multiple of 64, zero padded); the sum
// over k of (x + 128) * w is corrected by -128 * sum_k w, folded into the per-column bias.
constexpr int kNr = 48;  // weight rows per packed panel (three 16-lane vectors)
constexpr int kMr = 8;   // input rows per register block
constexpr int kDotRows = 16;  // up to this many input rows the weight is read unpacked

#define GP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl")))

// Writes 16 columns [n, n + count) of row m: (float(acc + bias) * rs[m]) * cs, or int32 acc + bias.
GP_AVX512 inline void Store16(const Epilogue& ep, int64_t m, int64_t n, int count, __m512i acc, __m512i bias,
                              __m512 cs) {
  const __mmask16 mask = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
  __m512i v = _mm512_add_epi32(acc, bias);
  if (ep.outi) {
    _mm512_mask_storeu_epi32(ep.outi + m * ep.n_total + n, mask, v);
    return;
  }
  __m512 f = _mm512_cvtepi32_ps(v);
  if (ep.rs) f = _mm512_mul_ps(f, _mm512_set1_ps(ep.rs[m]));
  if (ep.cs) f = _mm512_mul_ps(f, cs);
  _mm512_mask_storeu_ps(ep.outf + m * ep.n_total + n, mask, f);
}

// Lanes 0..3 of the result: the sums of the 16 lanes of a0..a3 (a transposing add tree; integer
// adds, so exact in any order).
GP_AVX512 inline __m128i Reduce4i(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m256i b0 = _mm256_add_epi32(_mm512_castsi512_si256(a0), _mm512_extracti64x4_epi64(a0, 1));
  const __m256i b1 = _mm256_add_epi32(_mm512_castsi512_si256(a1), _mm512_extracti64x4_epi64(a1, 1));
  const __m256i b2 = _mm256_add_epi32(_mm512_castsi512_si256(a2), _mm512_extracti64x4_epi64(a2, 1));
  const __m256i b3 = _mm256_add_epi32(_mm512_castsi512_si256(a3), _mm512_extracti64x4_epi64(a3, 1));
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(b0, b1), _mm256_hadd_epi32(b2, b3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// Writes columns [n, n + count), count <= 4, of row m: as Store16, for four lanes.
GP_AVX512 inline void Store4(const Epilogue& ep, int64_t m, int64_t n, int count, __m128i v) {
  const __mmask8 mask = static_cast<__mmask8>((1u << count) - 1);
  if (ep.outi) {
    _mm_mask_storeu_epi32(ep.outi + m * ep.n_total + n, mask, v);
    return;
  }
  __m128 f = _mm_cvtepi32_ps(v);
  if (ep.rs) f = _mm_mul_ps(f, _mm_set1_ps(ep.rs[m]));
  if (ep.cs) f = _mm_mul_ps(f, _mm_maskz_loadu_ps(mask, ep.cs + n));
  _mm_mask_storeu_ps(ep.outf + m * ep.n_total + n, mask, f);
}

// Few input rows: dot products of MB input rows with NB <= 4 weight rows [n, n + NB) read straight
// from the weight (memory bound, no packing). ``bias`` lane j is nbias[n + j] - 128 * sum_k w[n + j][k];
// the first block of rows (kSum) computes it for the others.
template <int MB, int NB, bool kSum>
GP_AVX512 void VnniDotBlock(const uint8_t* au, int64_t lda, const int8_t* b, int64_t k, int64_t n,
                            const Epilogue& ep, __m128i* bias) {
  const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  __m512i acc[MB][4], sum[4];
  GP_UNROLL
  for (int j = 0; j < 4; ++j) {
    sum[j] = zero;
    GP_UNROLL
    for (int i = 0; i < MB; ++i) acc[i][j] = zero;
  }
  for (int64_t s = 0; s < k; s += 64) {
    const __mmask64 mask = k - s >= 64 ? ~__mmask64(0) : ((__mmask64(1) << (k - s)) - 1);
    __m512i av[MB];
    GP_UNROLL
    for (int i = 0; i < MB; ++i) av[i] = _mm512_loadu_si512(au + i * lda + s);
    GP_UNROLL
    for (int j = 0; j < NB; ++j) {
      const __m512i bv = _mm512_maskz_loadu_epi8(mask, b + (n + j) * k + s);
      if (kSum) sum[j] = _mm512_dpbusd_epi32(sum[j], ones, bv);
      GP_UNROLL
      for (int i = 0; i < MB; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av[i], bv);
    }
  }
  if (kSum) {
    const __mmask8 mask = static_cast<__mmask8>((1u << NB) - 1);
    const __m128i nb = ep.nbias ? _mm_maskz_loadu_epi32(mask, ep.nbias + n) : _mm_setzero_si128();
    *bias = _mm_sub_epi32(nb, _mm_slli_epi32(Reduce4i(sum[0], sum[1], sum[2], sum[3]), 7));
  }
  GP_UNROLL
  for (int i = 0; i < MB; ++i)
    Store4(ep, i, n, NB, _mm_add_epi32(Reduce4i(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), *bias));
}

// All ``m_rows`` (<= kDotRows) input rows against weight rows [n, n + NB), in blocks of four rows.
template <int NB>
GP_AVX512 void VnniDotCols(const uint8_t* au, int64_t lda, const int8_t* b, int64_t k, int64_t n, int64_t m_rows,
                           const Epilogue& ep) {
  __m128i bias;
  const int64_t first = std::min<int64_t>(4, m_rows);
  switch (first) {
    case 4: VnniDotBlock<4, NB, true>(au, lda, b, k, n, ep, &bias); break;
    case 3: VnniDotBlock<3, NB, true>(au, lda, b, k, n, ep, &bias); break;
    case 2: VnniDotBlock<2, NB, true>(au, lda, b, k, n, ep, &bias); break;
    default: VnniDotBlock<1, NB, true>(au, lda, b, k, n, ep, &bias); break;
  }
  int64_t m = first;
  for (; m + 4 <= m_rows; m += 4) VnniDotBlock<4, NB, false>(au + m * lda, lda, b, k, n, ep.Rows(m), &bias);
  switch (m_rows - m) {
    case 3: VnniDotBlock<3, NB, false>(au + m * lda, lda, b, k, n, ep.Rows(m), &bias); break;
    case 2: VnniDotBlock<2, NB, false>(au + m * lda, lda, b, k, n, ep.Rows(m), &bias); break;
    case 1: VnniDotBlock<1, NB, false>(au + m * lda, lda, b, k, n, ep.Rows(m), &bias); break;
    default: break;
  }
}

// In place: lane j of r[i] becomes lane i of r[j] (a 16 x 16 transpose of dwords).
GP_AVX512 inline void Transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  GP_UNROLL
  for (int i = 0; i < 8; ++i) {   // per 128-bit lane L: t[2i] = (r2i, r2i+1)[4L], [4L+1]; t[2i+1]: [4L+2], [4L+3]
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  GP_UNROLL
  for (int q = 0; q < 4; ++q) {   // u[4q + e], lane L: element 4L + e of rows 4q .. 4q + 3
    u[4 * q] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
  GP_UNROLL
  for (int e = 0; e < 4; ++e) {   // lane L of u[e], u[4 + e], u[8 + e], u[12 + e] form element 4L + e
    const __m512i v = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), w = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xDD);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);
    const __m512i w2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xDD);
    r[e] = _mm512_shuffle_i32x4(v, v2, 0x88);
    r[4 + e] = _mm512_shuffle_i32x4(w, w2, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(v, v2, 0xDD);
    r[12 + e] = _mm512_shuffle_i32x4(w, w2, 0xDD);
  }
}

// Packs weight rows [n, n + kNr) in groups of four k: panel[g][j][0..3] = w[n + j][4g .. 4g + 3],
// zero beyond the matrix; bias[j] = nbias[n + j] - 128 * sum_k w[n + j][k]; cs[j] = ep.cs[n + j] (1
// beyond the matrix). Sixteen rows x 64 bytes at a time, transposed as dwords; the column sums are
// dot products of the packed groups with ones.
GP_AVX512 void PackPanel(const int8_t* b, int64_t n_cols, int64_t k, int64_t n, int64_t kg, const Epilogue& ep,
                         int8_t* panel, int32_t* bias, float* cs) {
  const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  for (int c = 0; c < kNr / 16; ++c) {
    const int64_t j0 = n + 16 * c;
    const int rows = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, n_cols - j0)));
    __m512i sums = zero;
    for (int64_t s = 0; s < k; s += 64) {
      const __mmask64 mask = k - s >= 64 ? ~__mmask64(0) : ((__mmask64(1) << (k - s)) - 1);
      __m512i r[16];
      GP_UNROLL
      for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_epi8(mask, b + (j0 + i) * k + s) : zero;
      Transpose16(r);
      const int64_t g0 = s / 4, groups = std::min<int64_t>(16, kg - g0);
      GP_UNROLL
      for (int e = 0; e < 16; ++e) {
        if (e >= groups) continue;
        _mm512_storeu_si512(panel + (g0 + e) * kNr * 4 + 64 * c, r[e]);
        sums = _mm512_dpbusd_epi32(sums, ones, r[e]);
      }
    }
    const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
    const __m512i nb = ep.nbias ? _mm512_maskz_loadu_epi32(valid, ep.nbias + j0) : zero;
    _mm512_storeu_si512(bias + 16 * c, _mm512_sub_epi32(nb, _mm512_slli_epi32(sums, 7)));
    const __m512 one = _mm512_set1_ps(1.0f);
    _mm512_storeu_ps(cs + 16 * c, ep.cs ? _mm512_mask_loadu_ps(one, valid, ep.cs + j0) : one);
  }
}

template <int MR>
GP_AVX512 inline void VnniBlock(const uint8_t* au, int64_t lda, const int8_t* panel, int64_t kg, int64_t m0,
                                int64_t n, int nvalid, const int32_t* bias, const float* cs, const Epilogue& ep) {
  __m512i acc[MR][3];
GP_UNROLL
  for (int i = 0; i < MR; ++i)
GP_UNROLL
    for (int c = 0; c < 3; ++c) acc[i][c] = _mm512_setzero_si512();
  for (int64_t g = 0; g < kg; ++g) {
    const int8_t* p = panel + g * kNr * 4;
    __m512i b0 = _mm512_loadu_si512(p), b1 = _mm512_loadu_si512(p + 64), b2 = _mm512_loadu_si512(p + 128);
GP_UNROLL
    for (int i = 0; i < MR; ++i) {
      int32_t word;
      std::memcpy(&word, au + (m0 + i) * lda + g * 4, 4);
      __m512i av = _mm512_set1_epi32(word);
      acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], av, b1);
      acc[i][2] = _mm512_dpbusd_epi32(acc[i][2], av, b2);
    }
  }
  // A constant trip count (the test inside), so it unrolls too.
GP_UNROLL
  for (int c = 0; c < 3; ++c) {
    if (16 * c >= nvalid) continue;
    const __m512i vb = _mm512_loadu_si512(bias + 16 * c);
    const __m512 vc = _mm512_loadu_ps(cs + 16 * c);
GP_UNROLL
    for (int i = 0; i < MR; ++i) Store16(ep, m0 + i, n + 16 * c, nvalid - 16 * c, acc[i][c], vb, vc);
  }
}

GP_AVX512 void VnniPanel(const uint8_t* au, int64_t lda, const int8_t* panel, int64_t kg, int64_t m_begin,
                         int64_t m_end, int64_t n, int nvalid, const int32_t* bias, const float* cs,
                         const Epilogue& ep) {
  int64_t m = m_begin;
  for (; m + kMr <= m_end; m += kMr) VnniBlock<kMr>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep);
  switch (m_end - m) {
    case 7: VnniBlock<7>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    case 6: VnniBlock<6>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    case 5: VnniBlock<5>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    case 4: VnniBlock<4>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    case 3: VnniBlock<3>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    case 2: VnniBlock<2>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    case 1: VnniBlock<1>(au, lda, panel, kg, m, n, nvalid, bias, cs, ep); break;
    default: break;
  }
}

// ----- AMX: the VNNI panels on tiles ---------------------------------------------------------------
// A packed panel (see PackPanel) is three B tiles side by side: tile c of k-groups [g, g + 16) starts
// at panel + g * kNr * 4 + 64 * c, rows kNr * 4 bytes apart. Tiles 0-2 accumulate 16 input rows x
// 48 columns, tile 3 holds the 16 input rows' 64 bytes of k, tiles 4-6 the panel's. The panel's
// k-groups are padded with zeros to a multiple of 16 (and the code rows are zero beyond k), so the
// sums are the VNNI path's exactly (integer, any order).
#define GP_AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni,avx512vl")))

constexpr int kAmxRows = 16;
constexpr int64_t kAmxGroups = 16;   // k-groups of four bytes per tile row (64 bytes)

inline int64_t AmxGroups(int64_t kg) { return (kg + kAmxGroups - 1) / kAmxGroups * kAmxGroups; }

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Rows [m_begin, m_end) of one panel: whole blocks of 16 rows on tiles, the rest on VnniPanel. The
// tile configuration is loaded per call and released after, so other AMX users of the thread (none
// known) are not disturbed.
GP_AMX void AmxPanel(const uint8_t* au, int64_t lda, const int8_t* panel, int64_t kg, int64_t m_begin, int64_t m_end,
                     int64_t n, int nvalid, const int32_t* bias, const float* cs, const Epilogue& ep) {
  int64_t m = m_begin;
  if (m_end - m_begin >= kAmxRows) {
    TileConfig cfg;
    for (int t = 0; t < 7; ++t) {
      cfg.rows[t] = kAmxRows;
      cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
    const int64_t groups = AmxGroups(kg), stride = kNr * 4;
    alignas(64) int32_t out[3][kAmxRows][16];
    for (; m + kAmxRows <= m_end; m += kAmxRows) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      for (int64_t g = 0; g < groups; g += kAmxGroups) {
        const int8_t* p = panel + g * stride;
        _tile_loadd(3, au + m * lda + g * 4, lda);
        _tile_loadd(4, p, stride);
        _tile_loadd(5, p + 64, stride);
        _tile_loadd(6, p + 128, stride);
        _tile_dpbusd(0, 3, 4);
        _tile_dpbusd(1, 3, 5);
        _tile_dpbusd(2, 3, 6);
      }
      _tile_stored(0, out[0], 64);
      _tile_stored(1, out[1], 64);
      _tile_stored(2, out[2], 64);
      for (int c = 0; c < 3; ++c) {
        if (16 * c >= nvalid) continue;
        const __m512i vb = _mm512_loadu_si512(bias + 16 * c);
        const __m512 vc = _mm512_loadu_ps(cs + 16 * c);
        for (int i = 0; i < kAmxRows; ++i)
          Store16(ep, m + i, n + 16 * c, nvalid - 16 * c, _mm512_load_si512(out[c][i]), vb, vc);
      }
    }
    _tile_release();
  }
  if (m < m_end) VnniPanel(au, lda, panel, kg, m, m_end, n, nvalid, bias, cs, ep);
}

// Weight rows are fetched kPrefetchRows ahead: a row is a short stream (K bytes), which the hardware
// prefetchers pick up too late when the weight does not fit in L2 (the 576 x 49152 head: 4x slower
// than a float GEMV without this).
constexpr int64_t kPrefetchRows = 16;

// Splits [0, total) into ``parts`` nearly equal pieces.
inline int64_t Cut(int64_t total, int parts, int i) { return total * i / parts; }

int ThreadsFor(int64_t work) { return work >= kParallelWork ? ThePool().size() : 1; }

// Rows [0, m_rows) quantized by ``quantize(m0, m1)``, in parallel when there are many.
void QuantizeAll(int64_t m_rows, int64_t k, const std::function<void(int64_t, int64_t)>& quantize) {
  const int tasks = static_cast<int>(std::min<int64_t>(m_rows, ThreadsFor(m_rows * k * 16)));
  ThePool().Run(tasks, [&](int t) { quantize(Cut(m_rows, tasks, t), Cut(m_rows, tasks, t + 1)); });
}

Codes Codes::For(int64_t m_rows, int64_t k) {
  if (g_isa >= kAvx512Vnni) return Codes(m_rows, k, kOffsetU8);
  return Codes(m_rows, k, g_isa >= kAvx2 && m_rows > kDotRows ? kWideS16 : kS8);
}

// ``codes`` [M, K] (see Codes) times ``b`` int8 [N, K]: dispatches on the instruction set and
// spreads the weight over threads.
void I8Gemm(const Codes& codes, const int8_t* b, int64_t m_rows, int64_t n_cols, int64_t k, const Epilogue& ep) {
  Pool& pool = ThePool();
  const int threads = ThreadsFor(m_rows * n_cols * k);
  if (codes.offset()) {
    const uint8_t* au = codes.u8();
    const int64_t lda = codes.ld;
    if (m_rows <= kDotRows) {
      const int64_t blocks = (n_cols + 3) / 4;
      const int dot_threads = n_cols * k >= kParallelDotWeight ? threads : 1;
      const int tasks = static_cast<int>(std::min<int64_t>(dot_threads, blocks));
      pool.Run(tasks, [&](int t) {
        const int64_t n0 = Cut(blocks, tasks, t) * 4, n1 = std::min(n_cols, Cut(blocks, tasks, t + 1) * 4);
        // Four weight rows at a time for all input rows (read from memory once), the rows
        // kPrefetchRows ahead requested meanwhile (see WDot).
        for (int64_t n = n0; n < n1; n += 4) {
          const int64_t n_end = std::min(n + 4, n1);
          const int64_t ahead = std::min(n + kPrefetchRows, n1), ahead_end = std::min(ahead + 4, n1);
          const char* next = reinterpret_cast<const char*>(b + ahead * k);
          for (int64_t off = 0; off < (ahead_end - ahead) * k; off += 64) _mm_prefetch(next + off, _MM_HINT_T0);
          switch (n_end - n) {
            case 4: VnniDotCols<4>(au, lda, b, k, n, m_rows, ep); break;
            case 3: VnniDotCols<3>(au, lda, b, k, n, m_rows, ep); break;
            case 2: VnniDotCols<2>(au, lda, b, k, n, m_rows, ep); break;
            default: VnniDotCols<1>(au, lda, b, k, n, m_rows, ep); break;
          }
        }
      });
      return;
    }
    const int64_t kg = (k + 3) / 4;
    const int64_t panels = (n_cols + kNr - 1) / kNr;
    // Tiles read 64 bytes of every code row per step: the rows are padded to that (see Codes).
    const bool amx = g_isa >= kAmx && lda % 64 == 0 && lda >= AmxGroups(kg) * 4;
    // Enough panels: one task per panel (all rows); few: each panel's rows split over the threads.
    const int m_parts = panels >= 2 * threads ? 1 : threads;
    const int64_t m_blocks = (m_rows + kMr - 1) / kMr;
    pool.Run(static_cast<int>(panels * m_parts), [&](int t) {
      const int64_t p = t / m_parts;
      const int part = t % m_parts;
      const int64_t m_begin = std::min(m_rows, Cut(m_blocks, m_parts, part) * kMr);
      const int64_t m_end = std::min(m_rows, Cut(m_blocks, m_parts, part + 1) * kMr);
      if (m_begin >= m_end) return;
      thread_local std::vector<int8_t> panel;
      // AMX reads the k-groups in sixteens: the panel then ends in zero groups up to a multiple of 16.
      const int64_t groups = amx ? AmxGroups(kg) : kg;
      panel.resize(static_cast<size_t>(groups * kNr * 4));
      if (groups > kg) std::memset(panel.data() + kg * kNr * 4, 0, static_cast<size_t>((groups - kg) * kNr * 4));
      alignas(64) int32_t bias[kNr];
      alignas(64) float cs[kNr];
      const int64_t n = p * kNr;
      PackPanel(b, n_cols, k, n, kg, ep, panel.data(), bias, cs);
      const int nvalid = static_cast<int>(std::min<int64_t>(kNr, n_cols - n));
      if (amx) {
        AmxPanel(au, lda, panel.data(), kg, m_begin, m_end, n, nvalid, bias, cs, ep);
      } else {
        VnniPanel(au, lda, panel.data(), kg, m_begin, m_end, n, nvalid, bias, cs, ep);
      }
    });
    return;
  }
  if (codes.layout == kWideS16) {
    const int64_t kp = codes.ld / 2;
    const int64_t panels = (n_cols + kNr2 - 1) / kNr2;
    const int m_parts = panels >= 2 * threads ? 1 : threads;
    const int64_t m_blocks = (m_rows + kMr2 - 1) / kMr2;
    pool.Run(static_cast<int>(panels * m_parts), [&](int t) {
      const int64_t p = t / m_parts;
      const int part = t % m_parts;
      const int64_t m_begin = std::min(m_rows, Cut(m_blocks, m_parts, part) * kMr2);
      const int64_t m_end = std::min(m_rows, Cut(m_blocks, m_parts, part + 1) * kMr2);
      if (m_begin >= m_end) return;
      thread_local std::vector<int16_t> panel;
      panel.resize(static_cast<size_t>(kp * kNr2 * 2));
      const int64_t n = p * kNr2;
      PackPanel16(b, n_cols, k, n, kp, panel.data());
      Avx2Panel(codes.s16(), codes.ld, panel.data(), kp, m_begin, m_end, n,
                static_cast<int>(std::min<int64_t>(kNr2, n_cols - n)), ep);
    });
    return;
  }
  const int64_t blocks = (n_cols + 3) / 4;
  const int tasks = static_cast<int>(std::min<int64_t>(threads, blocks));
  pool.Run(tasks, [&](int t) {
    const int64_t n0 = Cut(blocks, tasks, t) * 4, n1 = std::min(n_cols, Cut(blocks, tasks, t + 1) * 4);
    if (g_isa >= kAvx2) {
      I8Avx2(codes.s8(), codes.ld, b, m_rows, n_cols, k, ep, n0, n1);
    } else {
      I8Scalar(codes.s8(), codes.ld, b, m_rows, n_cols, k, ep, n0, n1);
    }
  });
}

// ----- float x int8 weight (A16W8, A16W4 in the int8 container) ----------------------------------
// Two weight forms share these kernels:
//   per channel, symmetric   out[m, n] = (sum_k x[m, k] * float(w[n, k])) * scale[n]
//   per group (or asymmetric) out[m, n] = sum_k x[m, k] * ((float(w[n, k]) - zp[n, g]) * scale[n, g]),
//                             g = k / group_size; the last group may be shorter (ragged).
// The grouped form dequantizes each weight element exactly as the MindSpore-op route does
// ((w - zp) exact in float, one rounding for * scale), so the two differ only in summation order.
// Nothing of the weight is ever held as float beyond a register (few rows) or an L2-sized panel.
struct WeightQ {
  const int8_t* w;      // [N, K]
  const float* scale;   // [N] per channel, or [N, groups]
  const float* zp;      // [N, groups] (grouped), else null
  int64_t groups;       // grouped: groups per row (1 for per-channel asymmetric)
  int64_t gs;           // grouped: input channels per group
};

// Range [t0, t1) of group g of a row of k channels (one group of all k when not grouped).
template <bool G>
inline void GroupRange(const WeightQ& q, int64_t k, int64_t g, int64_t* t0, int64_t* t1) {
  *t0 = G ? g * q.gs : 0;
  *t1 = G ? std::min(k, *t0 + q.gs) : k;
}

template <bool G>
void WScalar(const float* x, const WeightQ& q, float* out, int64_t m_rows, int64_t n_cols, int64_t k, int64_t n0,
             int64_t n1) {
  const int64_t groups = G ? q.groups : 1;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < m_rows; ++m) {
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        int64_t t0, t1;
        GroupRange<G>(q, k, g, &t0, &t1);
        const float s = G ? q.scale[n * groups + g] : 1.0f, z = G ? q.zp[n * groups + g] : 0.0f;
        for (int64_t t = t0; t < t1; ++t) {
          const float wf = static_cast<float>(q.w[n * k + t]);
          acc += x[m * k + t] * (G ? (wf - z) * s : wf);
        }
      }
      out[m * n_cols + n] = G ? acc : acc * q.scale[n];
    }
}

// ---- few input rows (decode): dot products from the int8 rows, MB input rows x NB weight rows ----
__attribute__((target("avx2,fma"))) inline float HSum256f(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MB, int NB, bool G>
__attribute__((target("avx2,fma"))) void WDotBlockAvx2(const float* x, int64_t k, const WeightQ& q, float* out,
                                                       int64_t n_cols, int64_t m0, int64_t n) {
  __m256 acc[MB][NB];
  float tail[MB][NB];
  GP_UNROLL
  for (int i = 0; i < MB; ++i)
    GP_UNROLL
    for (int j = 0; j < NB; ++j) {
      acc[i][j] = _mm256_setzero_ps();
      tail[i][j] = 0.0f;
    }
  const int64_t groups = G ? q.groups : 1;
  for (int64_t g = 0; g < groups; ++g) {
    int64_t t0, t1;
    GroupRange<G>(q, k, g, &t0, &t1);
    __m256 vs[NB], vz[NB];
    float ss[NB], zz[NB];
    GP_UNROLL
    for (int j = 0; j < NB; ++j) {
      ss[j] = G ? q.scale[(n + j) * groups + g] : 1.0f;
      zz[j] = G ? q.zp[(n + j) * groups + g] : 0.0f;
      vs[j] = _mm256_set1_ps(ss[j]);
      vz[j] = _mm256_set1_ps(zz[j]);
    }
    int64_t t = t0;
    for (; t + 8 <= t1; t += 8) {
      __m256 bv[NB];
      GP_UNROLL
      for (int j = 0; j < NB; ++j) {
        __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q.w + (n + j) * k + t));
        bv[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
        if (G) bv[j] = _mm256_mul_ps(_mm256_sub_ps(bv[j], vz[j]), vs[j]);
      }
      GP_UNROLL
      for (int i = 0; i < MB; ++i) {
        const __m256 av = _mm256_loadu_ps(x + (m0 + i) * k + t);
        GP_UNROLL
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
      }
    }
    for (; t < t1; ++t)
      GP_UNROLL
      for (int j = 0; j < NB; ++j) {
        const float wf = static_cast<float>(q.w[(n + j) * k + t]);
        const float wd = G ? (wf - zz[j]) * ss[j] : wf;
        GP_UNROLL
        for (int i = 0; i < MB; ++i) tail[i][j] += x[(m0 + i) * k + t] * wd;
      }
  }
  GP_UNROLL
  for (int i = 0; i < MB; ++i)
    GP_UNROLL
    for (int j = 0; j < NB; ++j) {
      const float s = HSum256f(acc[i][j]) + tail[i][j];
      out[(m0 + i) * n_cols + n + j] = G ? s : s * q.scale[n + j];
    }
}

#define GP_AVX512F __attribute__((target("avx512f,avx512bw,avx512vl")))

GP_AVX512F inline __m256 High256(__m512 a) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
}

// Sums of the 16 lanes of each of a[0..3], as lanes 0..3 of the result (a transposing add tree,
// cheaper than four separate horizontal reductions).
GP_AVX512F inline __m128 Reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // 512 -> 256: add the halves
  const __m256 b0 = _mm256_add_ps(_mm512_castps512_ps256(a0), High256(a0));
  const __m256 b1 = _mm256_add_ps(_mm512_castps512_ps256(a1), High256(a1));
  const __m256 b2 = _mm256_add_ps(_mm512_castps512_ps256(a2), High256(a2));
  const __m256 b3 = _mm256_add_ps(_mm512_castps512_ps256(a3), High256(a3));
  const __m256 h01 = _mm256_hadd_ps(b0, b1);   // b0 pairs, b1 pairs (per 128-bit lane)
  const __m256 h23 = _mm256_hadd_ps(b2, b3);
  const __m256 h = _mm256_hadd_ps(h01, h23);   // per 128-bit lane: [s0 s1 s2 s3] partial
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

template <int MB, int NB, bool G>
GP_AVX512F void WDotBlock512(const float* x, int64_t k, const WeightQ& q, float* out, int64_t n_cols, int64_t m0,
                             int64_t n) {
  __m512 acc[MB][NB];
  GP_UNROLL
  for (int i = 0; i < MB; ++i)
    GP_UNROLL
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t groups = G ? q.groups : 1;
  for (int64_t g = 0; g < groups; ++g) {
    int64_t t0, t1;
    GroupRange<G>(q, k, g, &t0, &t1);
    __m512 vs[NB], vz[NB];
    if (G)
      GP_UNROLL
      for (int j = 0; j < NB; ++j) {
        vs[j] = _mm512_set1_ps(q.scale[(n + j) * groups + g]);
        vz[j] = _mm512_set1_ps(q.zp[(n + j) * groups + g]);
      }
    for (int64_t t = t0; t < t1; t += 16) {
      const __mmask16 mask = t1 - t >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (t1 - t)) - 1);
      __m512 bv[NB];
      GP_UNROLL
      for (int j = 0; j < NB; ++j) {
        bv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, q.w + (n + j) * k + t)));
        if (G) bv[j] = _mm512_mul_ps(_mm512_sub_ps(bv[j], vz[j]), vs[j]);   // masked lanes meet x = 0
      }
      GP_UNROLL
      for (int i = 0; i < MB; ++i) {
        const __m512 av = _mm512_maskz_loadu_ps(mask, x + (m0 + i) * k + t);
        GP_UNROLL
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
      }
    }
  }
  if constexpr (NB == 4) {
    const __m128 cs = G ? _mm_set1_ps(1.0f) : _mm_loadu_ps(q.scale + n);
    GP_UNROLL
    for (int i = 0; i < MB; ++i) {
      __m128 s = Reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
      if (!G) s = _mm_mul_ps(s, cs);
      _mm_storeu_ps(out + (m0 + i) * n_cols + n, s);
    }
    return;
  }
  GP_UNROLL
  for (int i = 0; i < MB; ++i)
    GP_UNROLL
    for (int j = 0; j < NB; ++j) {
      const float s = _mm512_reduce_add_ps(acc[i][j]);
      out[(m0 + i) * n_cols + n + j] = G ? s : s * q.scale[n + j];
    }
}

// Weight rows [n, n + nb), nb <= 4, against input rows [m0, m0 + MB): blocks of at most 16 accumulators.
template <int MB, bool G>
GP_AVX512F void WDotCols512(const float* x, int64_t k, const WeightQ& q, float* out, int64_t n_cols, int64_t m0,
                            int64_t n, int nb) {
  if constexpr (MB <= 4) {
    if (nb == 4) {
      WDotBlock512<MB, 4, G>(x, k, q, out, n_cols, m0, n);
      return;
    }
  }
  int j = 0;
  for (; j + 2 <= nb; j += 2) WDotBlock512<MB, 2, G>(x, k, q, out, n_cols, m0, n + j);
  if (j < nb) WDotBlock512<MB, 1, G>(x, k, q, out, n_cols, m0, n + j);
}

template <int MB, bool G>
__attribute__((target("avx2,fma"))) void WDotColsAvx2(const float* x, int64_t k, const WeightQ& q, float* out,
                                                      int64_t n_cols, int64_t m0, int64_t n, int nb) {
  if constexpr (MB <= 4) {
    if (nb == 4) {
      WDotBlockAvx2<MB, 4, G>(x, k, q, out, n_cols, m0, n);
      return;
    }
  }
  int j = 0;
  for (; j + 2 <= nb; j += 2) WDotBlockAvx2<MB, 2, G>(x, k, q, out, n_cols, m0, n + j);
  if (j < nb) WDotBlockAvx2<MB, 1, G>(x, k, q, out, n_cols, m0, n + j);
}

// All input rows (in blocks of at most 8) against weight rows [n0, n1): the loop over weight rows is
// outermost, so each group of four weight rows is read from memory once and reused from L1.
template <bool G, bool Avx512>
void WDot(const float* x, const WeightQ& q, float* out, int64_t m_rows, int64_t n_cols, int64_t k, int64_t n0,
          int64_t n1) {
  for (int64_t n = n0; n < n1; n += 4) {
    const int nb = static_cast<int>(std::min<int64_t>(4, n1 - n));
    const int64_t ahead = std::min(n + kPrefetchRows, n1), ahead_end = std::min(ahead + 4, n1);
    const char* next = reinterpret_cast<const char*>(q.w + ahead * k);
    for (int64_t off = 0; off < (ahead_end - ahead) * k; off += 64) _mm_prefetch(next + off, _MM_HINT_T0);
    for (int64_t m = 0; m < m_rows; m += 8) {
      const int mb = static_cast<int>(std::min<int64_t>(8, m_rows - m));
#define GP_WDOT_CASE(R) \
  case R:               \
    if (Avx512) WDotCols512<R, G>(x, k, q, out, n_cols, m, n, nb); else WDotColsAvx2<R, G>(x, k, q, out, n_cols, m, n, nb); \
    break;
      switch (mb) {
        GP_WDOT_CASE(1) GP_WDOT_CASE(2) GP_WDOT_CASE(3) GP_WDOT_CASE(4)
        GP_WDOT_CASE(5) GP_WDOT_CASE(6) GP_WDOT_CASE(7) GP_WDOT_CASE(8)
        default: break;
      }
#undef GP_WDOT_CASE
    }
  }
}

// ---- many input rows (prefill): a panel of weight rows dequantized to float, k-major, in L2 ----
constexpr int kWn = 32;   // weight rows per AVX-512 panel (two 16-lane vectors)
constexpr int kWn2 = 16;  // weight rows per AVX2 panel (two 8-lane vectors)
constexpr int kWDotRows = 16;  // up to this many input rows: dot products, no panel

// panel[t * width + j] = dequantized w[n + j, t] (zero beyond the matrix), t < k.
template <bool G>
void DequantPanel(const WeightQ& q, int64_t n_cols, int64_t k, int64_t n, int width, float* panel) {
  const int64_t groups = G ? q.groups : 1;
  for (int j = 0; j < width; ++j) {
    if (n + j >= n_cols) {
      for (int64_t t = 0; t < k; ++t) panel[t * width + j] = 0.0f;
      continue;
    }
    const int8_t* row = q.w + (n + j) * k;
    for (int64_t g = 0; g < groups; ++g) {
      int64_t t0, t1;
      GroupRange<G>(q, k, g, &t0, &t1);
      const float s = G ? q.scale[(n + j) * groups + g] : 1.0f, z = G ? q.zp[(n + j) * groups + g] : 0.0f;
      for (int64_t t = t0; t < t1; ++t) {
        const float wf = static_cast<float>(row[t]);
        panel[t * width + j] = G ? (wf - z) * s : wf;
      }
    }
  }
}

template <int MR>
GP_AVX512F inline void WBlock512(const float* x, int64_t k, const float* panel, int64_t m0, float* tmp) {
  __m512 acc[MR][2];
  GP_UNROLL
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t t = 0; t < k; ++t) {
    const __m512 b0 = _mm512_loadu_ps(panel + t * kWn), b1 = _mm512_loadu_ps(panel + t * kWn + 16);
    GP_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(x[(m0 + i) * k + t]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  GP_UNROLL
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(tmp + i * kWn, acc[i][0]);
    _mm512_storeu_ps(tmp + i * kWn + 16, acc[i][1]);
  }
}

template <int MR>
__attribute__((target("avx2,fma"))) inline void WBlockAvx2(const float* x, int64_t k, const float* panel, int64_t m0,
                                                           float* tmp) {
  __m256 acc[MR][2];
  GP_UNROLL
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t t = 0; t < k; ++t) {
    const __m256 b0 = _mm256_loadu_ps(panel + t * kWn2), b1 = _mm256_loadu_ps(panel + t * kWn2 + 8);
    GP_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(x + (m0 + i) * k + t);
      acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  GP_UNROLL
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(tmp + i * kWn2, acc[i][0]);
    _mm256_storeu_ps(tmp + i * kWn2 + 8, acc[i][1]);
  }
}

// Rows [m_begin, m_end) against the dequantized panel of weight rows [n, n + width).
template <bool G, bool Avx512>
void WPanelRows(const float* x, const WeightQ& q, float* out, int64_t m_begin, int64_t m_end, int64_t n_cols,
                int64_t k, int64_t n, const float* panel) {
  constexpr int width = Avx512 ? kWn : kWn2;
  constexpr int rows = Avx512 ? 8 : 6;   // register block: rows x two vectors
  const int nvalid = static_cast<int>(std::min<int64_t>(width, n_cols - n));
  alignas(64) float tmp[8 * kWn];
  for (int64_t m = m_begin; m < m_end; m += rows) {
    const int mb = static_cast<int>(std::min<int64_t>(rows, m_end - m));
#define GP_WBLOCK_CASE(R) \
  case R:                 \
    if (Avx512) WBlock512<R>(x, k, panel, m, tmp); else WBlockAvx2<R>(x, k, panel, m, tmp); \
    break;
    switch (mb) {
      GP_WBLOCK_CASE(8) GP_WBLOCK_CASE(7) GP_WBLOCK_CASE(6) GP_WBLOCK_CASE(5)
      GP_WBLOCK_CASE(4) GP_WBLOCK_CASE(3) GP_WBLOCK_CASE(2) GP_WBLOCK_CASE(1)
      default: break;
    }
#undef GP_WBLOCK_CASE
    for (int i = 0; i < mb; ++i)
      for (int j = 0; j < nvalid; ++j)
        out[(m + i) * n_cols + n + j] = G ? tmp[i * width + j] : tmp[i * width + j] * q.scale[n + j];
  }
}

template <bool G>
void WGemm(const float* x, const WeightQ& q, float* out, int64_t m_rows, int64_t n_cols, int64_t k) {
  Pool& pool = ThePool();
  const int threads = ThreadsFor(m_rows * n_cols * k);
  if (g_isa >= kAvx2 && m_rows > kWDotRows) {
    const bool wide = g_isa >= kAvx512Vnni;
    const int width = wide ? kWn : kWn2;
    const int rows = wide ? 8 : 6;
    const int64_t panels = (n_cols + width - 1) / width;
    const int m_parts = panels >= 2 * threads ? 1 : threads;
    const int64_t m_blocks = (m_rows + rows - 1) / rows;
    pool.Run(static_cast<int>(panels * m_parts), [&](int t) {
      const int64_t p = t / m_parts;
      const int part = t % m_parts;
      const int64_t m_begin = std::min(m_rows, Cut(m_blocks, m_parts, part) * rows);
      const int64_t m_end = std::min(m_rows, Cut(m_blocks, m_parts, part + 1) * rows);
      if (m_begin >= m_end) return;
      thread_local std::vector<float> panel;
      panel.resize(static_cast<size_t>(k * width));
      DequantPanel<G>(q, n_cols, k, p * width, width, panel.data());
      if (wide) {
        WPanelRows<G, true>(x, q, out, m_begin, m_end, n_cols, k, p * width, panel.data());
      } else {
        WPanelRows<G, false>(x, q, out, m_begin, m_end, n_cols, k, p * width, panel.data());
      }
    });
    return;
  }
  const int64_t blocks = (n_cols + 3) / 4;
  const int tasks = static_cast<int>(std::min<int64_t>(threads, blocks));
  pool.Run(tasks, [&](int t) {
    const int64_t n0 = Cut(blocks, tasks, t) * 4, n1 = std::min(n_cols, Cut(blocks, tasks, t + 1) * 4);
    if (g_isa >= kAvx512Vnni) {
      WDot<G, true>(x, q, out, m_rows, n_cols, k, n0, n1);
    } else if (g_isa >= kAvx2) {
      WDot<G, false>(x, q, out, m_rows, n_cols, k, n0, n1);
    } else {
      WScalar<G>(x, q, out, m_rows, n_cols, k, n0, n1);
    }
  });
}

// ----- argument checks shared by the entry points ------------------------------------------------
bool Is(const char* dtype, const char* want) { return std::strcmp(dtype, want) == 0; }

// x [..., K] (M rows) and w [N, K] with the output [..., N] (GemmDims): returns false on any mismatch.
bool Dims(int nparam, int want, int* ndims, int64_t** shapes, int64_t* m, int64_t* n, int64_t* k) {
  return nparam == want && gp::GemmDims(ndims[0], shapes[0], ndims[1], shapes[1], ndims[nparam - 1], shapes[nparam - 1], m,
                                        n, k);
}

void QuantizeRows(const float* x, int64_t k, int64_t m0, int64_t m1, const float* scale, bool per_row, float zp,
                  float lo, float hi, Codes* codes) {
  if (codes->layout == kOffsetU8 && g_isa >= kAvx512Vnni) {
    QuantizeRowsAvx512(x, k, m0, m1, scale, per_row, zp, lo, hi, codes);
  } else if (codes->layout != kOffsetU8 && g_isa >= kAvx2) {
    QuantizeRowsAvx2(x, k, m0, m1, scale, per_row, zp, lo, hi, codes);
  } else {
    QuantizeRowsScalar(x, k, m0, m1, scale, per_row, zp, lo, hi, codes);
  }
}

int QGemmDynamic(void** params, int64_t m, int64_t n, int64_t k, const float* absmax, float* out) {
  const float* x = static_cast<const float*>(params[0]);
  Codes codes = Codes::For(m, k);
  std::vector<float> row_scale(static_cast<size_t>(m));
  QuantizeAll(m, k, [&](int64_t m0, int64_t m1) {
    for (int64_t r = m0; r < m1; ++r)
      row_scale[r] = std::max((absmax ? absmax[r] : AbsMax(x + r * k, k, g_isa)) / 127.0f, 1e-8f);
    QuantizeRows(x, k, m0, m1, row_scale.data(), true, 0.0f, -127.0f, 127.0f, &codes);
  });
  Epilogue ep{nullptr, row_scale.data(), static_cast<const float*>(params[2]), out, nullptr, n};
  I8Gemm(codes, static_cast<const int8_t*>(params[1]), m, n, k, ep);
  return 0;
}

}  // namespace

// The shared runtime of gp_runtime.h (the other sources of the library use it).
namespace gp {
int CurrentIsa() { return g_isa; }
void ParallelFor(int tasks, const std::function<void(int)>& fn) { ThePool().Run(tasks, fn); }
void I8GemmInt32(const int8_t* a, const int8_t* b, int32_t* out, int64_t m, int64_t n, int64_t k) {
  Codes codes = Codes::For(m, k);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < k; ++i) codes.Put(r, i, a[r * k + i]);
  I8Gemm(codes, b, m, n, k, Epilogue{nullptr, nullptr, nullptr, nullptr, out, n});
}
}  // namespace gp

extern "C" {

int gp_detected_isa() { return g_detected; }
int gp_isa() { return g_isa; }
// Uses at most ``isa`` (never more than the CPU has); returns the level now in use.
int gp_set_isa(int isa) {
  g_isa = std::max(0, std::min(isa, g_detected));
  return g_isa;
}
int gp_threads() { return ThePool().size(); }
void gp_set_threads(int threads) { ThePool().Resize(std::max(1, threads)); }

// (a int8 [..., K], b int8 [N, K]) -> int32 [..., N]  (Dims: any leading dimensions, M their product)
int GpI8Gemm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int64_t m, n, k;
  if (!Dims(nparam, 3, ndims, shapes, &m, &n, &k) || !Is(dtypes[0], "int8") || !Is(dtypes[1], "int8")) return 1;
  gp::I8GemmInt32(static_cast<const int8_t*>(params[0]), static_cast<const int8_t*>(params[1]),
                  static_cast<int32_t*>(params[2]), m, n, k);
  return 0;
}

// (x f32 [..., K], w int8 [N, K], input_scale f32 [1], input_zp f32 [1], quant_bias int32 [N],
//  deq_scale f32 [N]) -> f32 [..., N]
int GpQGemmStatic(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int64_t m, n, k;
  if (!Dims(nparam, 7, ndims, shapes, &m, &n, &k) || !Is(dtypes[0], "float32") || !Is(dtypes[1], "int8")) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* scale = static_cast<const float*>(params[2]);
  const float zp = *static_cast<const float*>(params[3]);
  Codes codes = Codes::For(m, k);
  QuantizeAll(m, k, [&](int64_t m0, int64_t m1) {
    QuantizeRows(x, k, m0, m1, scale, false, zp, -128.0f, 127.0f, &codes);
  });
  Epilogue ep{static_cast<const int32_t*>(params[4]), nullptr, static_cast<const float*>(params[5]),
              static_cast<float*>(params[6]), nullptr, n};
  I8Gemm(codes, static_cast<const int8_t*>(params[1]), m, n, k, ep);
  return 0;
}

// (x f32 [..., K], w int8 [N, K], weight_scale f32 [N]) -> f32 [..., N]
int GpQGemmDynamic(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int64_t m, n, k;
  if (!Dims(nparam, 4, ndims, shapes, &m, &n, &k) || !Is(dtypes[0], "float32") || !Is(dtypes[1], "int8")) return 1;
  return QGemmDynamic(params, m, n, k, nullptr, static_cast<float*>(params[3]));
}

// (x f32 [..., K] (M rows), w int8 [N, K], weight_scale f32 [N], absmax f32 [M, 1]) -> f32 [..., N]
int GpQGemmDynamicAbsmax(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                         void*) {
  int64_t m, n, k;
  if (!Dims(nparam, 5, ndims, shapes, &m, &n, &k) || !Is(dtypes[0], "float32") || !Is(dtypes[1], "int8") ||
      ndims[3] != 2 || shapes[3][0] != m || shapes[3][1] != 1) {
    return 1;
  }
  return QGemmDynamic(params, m, n, k, static_cast<const float*>(params[3]), static_cast<float*>(params[4]));
}

// (x f32 [..., K], w int8 [N, K], weight_scale f32 [N]) -> f32 [..., N]
int GpW8Gemm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int64_t m, n, k;
  if (!Dims(nparam, 4, ndims, shapes, &m, &n, &k) || !Is(dtypes[0], "float32") || !Is(dtypes[1], "int8") ||
      ndims[2] != 1 || shapes[2][0] != n) {
    return 1;
  }
  const WeightQ q{static_cast<const int8_t*>(params[1]), static_cast<const float*>(params[2]), nullptr, 1, k};
  WGemm<false>(static_cast<const float*>(params[0]), q, static_cast<float*>(params[3]), m, n, k);
  return 0;
}

// (x f32 [..., K], w int8 [N, K], weight_scale f32 [N, G] or [N], weight_zp f32 (same shape),
//  group_size int32 [1]) -> f32 [..., N]; G = ceil(K / group_size), or 1 (one group of all K).
int GpWgGemm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int64_t m, n, k;
  if (!Dims(nparam, 6, ndims, shapes, &m, &n, &k) || !Is(dtypes[0], "float32") || !Is(dtypes[1], "int8") ||
      !Is(dtypes[2], "float32") || !Is(dtypes[3], "float32") || !Is(dtypes[4], "int32")) {
    return 1;
  }
  if (ndims[2] < 1 || ndims[2] > 2 || ndims[3] != ndims[2] || shapes[2][0] != n || shapes[3][0] != n) return 1;
  const int64_t groups = ndims[2] == 2 ? shapes[2][1] : 1;
  if (ndims[2] == 2 && shapes[3][1] != groups) return 1;
  if (ndims[4] != 1 || shapes[4][0] != 1) return 1;
  const int64_t gs = groups == 1 ? k : static_cast<int64_t>(*static_cast<const int32_t*>(params[4]));
  if (gs < 1 || (k + gs - 1) / gs != groups) return 1;
  const WeightQ q{static_cast<const int8_t*>(params[1]), static_cast<const float*>(params[2]),
                  static_cast<const float*>(params[3]), groups, gs};
  WGemm<true>(static_cast<const float*>(params[0]), q, static_cast<float*>(params[5]), m, n, k);
  return 0;
}

}  // extern "C"
