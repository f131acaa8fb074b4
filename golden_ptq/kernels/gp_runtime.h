// What the native kernel sources share, defined once in int8_gemm.cc: the instruction set in use and
// the thread pool (one library holds every source, so there is one of each per process).
#pragma once

#include <cstdint>
#include <functional>

namespace gp {

enum Isa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 3, kAmx = 4 };   // kAmx: AVX-512 VNNI and AMX-INT8

// The instruction set the kernels may use now (gp_set_isa lowers it, for tests).
int CurrentIsa();

// Runs fn(0 .. tasks - 1) on the calling thread and the pool's helpers; returns when all have run.
void ParallelFor(int tasks, const std::function<void(int)>& fn);

// The products' operand shapes: x [..., K] (M = the product of its leading dimensions), w [N, K] and
// out [..., N] with x's leading dimensions. Taking x as it comes spares eager callers a reshape, whose
// view MindSpore copies before every custom operator (~0.8 ms for 512 x 1536 floats on 2 cores).
inline bool GemmDims(int x_ndim, const int64_t* x, int w_ndim, const int64_t* w, int out_ndim, const int64_t* out,
                     int64_t* m, int64_t* n, int64_t* k) {
  if (x_ndim < 2 || w_ndim != 2 || out_ndim != x_ndim) return false;
  *m = 1;
  for (int i = 0; i + 1 < x_ndim; ++i) {
    if (out[i] != x[i]) return false;
    *m *= x[i];
  }
  *k = x[x_ndim - 1];
  *n = w[0];
  return w[1] == *k && out[out_ndim - 1] == *n;
}

// out int32 [M, N] = a int8 [M, K] times b int8 [N, K] transposed, exact (the quantized Linears'
// integer product, with its instruction-set dispatch and threads).
void I8GemmInt32(const int8_t* a, const int8_t* b, int32_t* out, int64_t m, int64_t n, int64_t k);

}  // namespace gp
