// GPTQ's column loop (golden_ptq/algorithm/modules/gptq.py, gptq_round): round the columns of one
// block one at a time and spread each column's rounding error over the block's later columns.
//
// Called through ctypes on numpy float64 arrays. It must give the numpy loop's bits exactly, so
// the arithmetic is the reference's, operation for operation: nearbyint is numpy's round (half to
// even under the default rounding mode), and this file is compiled without FMA (no target
// attributes here; the package's flags do not enable it), so `b -= u * e` rounds the product and
// then the difference, as numpy's outer-product-then-subtract does.
#include <cmath>
#include <cstdint>

extern "C" {

// block_t [block_cols, rows]: the block's columns, one contiguous row each (updated in place).
// Columns [begin, end) are rounded; column i of the block is input column start + i.
// u [in, in] (row stride u_stride): the upper Cholesky factor of the damped inverse Hessian.
// group_of[i]: the group whose scale/zero rows ([groups, rows]) column i uses.
// codes_t [in, rows]: row start + i receives column i's codes; errors_t [block_cols, rows]: its errors.
int gp_gptq_columns(double* block_t, int64_t block_cols, int64_t rows, int64_t begin, int64_t end,
                    const double* u, int64_t u_stride, int64_t start, const int64_t* group_of,
                    const double* scale, const double* zero, double qmin, double qmax,
                    double* codes_t, double* errors_t) {
  if (begin < 0 || end > block_cols || rows <= 0) return 1;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t col = start + i;
    const double* s = scale + group_of[i] * rows;
    const double* z = zero + group_of[i] * rows;
    const double diag = u[col * u_stride + col];
    double* column = block_t + i * rows;
    double* codes = codes_t + col * rows;
    double* err = errors_t + i * rows;
    for (int64_t r = 0; r < rows; ++r) {
      double q = std::nearbyint(column[r] / s[r]);
      q += z[r];
      q = q < qmin ? qmin : (q > qmax ? qmax : q);
      codes[r] = q;
      err[r] = (column[r] - (q - z[r]) * s[r]) / diag;
    }
    const double* u_row = u + col * u_stride + start;
    for (int64_t j = i + 1; j < block_cols; ++j) {
      const double factor = u_row[j];
      double* later = block_t + j * rows;
      for (int64_t r = 0; r < rows; ++r) later[r] -= factor * err[r];
    }
  }
  return 0;
}

}  // extern "C"
