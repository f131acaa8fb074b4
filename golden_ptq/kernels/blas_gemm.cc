// The float32 product of the process's BLAS: the ``cblas_sgemm`` of the library numpy is linked with,
// which golden_ptq/kernels/blas.py finds and hands over with gp_set_sgemm. MindSpore's CPU MatMul runs
// on its two pool threads while the thread that launched it spins in sched_yield; on a 2-core machine
// that third thread takes cycles from the two doing the work, and the same product through the BLAS,
// whose caller computes too, runs about twice as fast (SmolLM2's w1 shape, 2048 rows).
//
//   GpF32Gemm   x f32 [..., K], w f32 [N, K] -> x @ w.T f32 [..., N] (the eager float Linear; one row: the
//               BLAS's sgemv, which reads the weight once without packing it)
//
// Without a BLAS GpF32Gemm refuses to run (golden_ptq.kernels.blas_gemm_op then gives no operator). The
// weight-only products keep int8_gemm.cc's kernels: dequantized ~1 MB chunks through this sgemm were no
// faster (2026-12-03).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include "gp_runtime.h"

namespace {

enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };   // CBLAS's enumerators (ints)
using Sgemm32 = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                         float, float*, int64_t);
using Sgemv32 = void (*)(int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using Sgemv64 = void (*)(int, int, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
                         int64_t);

void* g_sgemm = nullptr;
void* g_sgemv = nullptr;   // the same library's cblas_sgemv: one input row (decode) reads the weight once, unpacked
bool g_ilp64 = false;   // the BLAS takes 64-bit dimensions (numpy's own OpenBLAS builds do)
bool SgemmNT(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc) {
  if (g_sgemm == nullptr) return false;
  if (m == 0 || n == 0) return true;
  if (k == 0) {   // nothing to sum: a BLAS would reject lda = 0
    for (int64_t r = 0; r < m; ++r) std::memset(c + r * ldc, 0, static_cast<size_t>(n) * sizeof(float));
    return true;
  }
  if (m == 1 && g_sgemv != nullptr && g_ilp64) {   // c[0, :] = b a[0, :]
    reinterpret_cast<Sgemv64>(g_sgemv)(kRowMajor, kNoTrans, n, k, 1.0f, b, ldb, a, 1, 0.0f, c, 1);
    return true;
  }
  if (m == 1 && g_sgemv != nullptr && std::max({n, k, ldb}) <= INT_MAX) {
    reinterpret_cast<Sgemv32>(g_sgemv)(kRowMajor, kNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, b,
                                       static_cast<int>(ldb), a, 1, 0.0f, c, 1);
    return true;
  }
  if (g_ilp64) {
    reinterpret_cast<Sgemm64>(g_sgemm)(kRowMajor, kNoTrans, kTrans, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
    return true;
  }
  if (std::max({m, n, k, lda, ldb, ldc}) > INT_MAX) return false;
  reinterpret_cast<Sgemm32>(g_sgemm)(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(n),
                                     static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb),
                                     0.0f, c, static_cast<int>(ldc));
  return true;
}

}  // namespace

extern "C" {

// ``gemm``, ``gemv``: the cblas_sgemm and cblas_sgemv of one library (``ilp64``: their dimensions are int64),
// or null to forget them (``gemv`` may be null alone).
void gp_set_sgemm(void* gemm, void* gemv, int ilp64) {
  g_sgemm = gemm;
  g_sgemv = gemm != nullptr ? gemv : nullptr;
  g_ilp64 = ilp64 != 0;
}

// (x f32 [..., K], w f32 [N, K]) -> f32 [..., N]
int GpF32Gemm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  int64_t m, n, k;
  if (nparam != 3 || !gp::GemmDims(ndims[0], shapes[0], ndims[1], shapes[1], ndims[2], shapes[2], &m, &n, &k)) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "float32") != 0) return 1;
  return SgemmNT(m, n, k, static_cast<const float*>(params[0]), k, static_cast<const float*>(params[1]), k,
                 static_cast<float*>(params[2]), n) ? 0 : 1;
}

}  // extern "C"
