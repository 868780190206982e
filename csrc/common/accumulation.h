// The accumulation type of every kernel, CPU and CUDA: float for half, bfloat16 and float
// elements, double for double (half and bfloat16 sums lose too much; float64 inputs ask for
// float64 results). Written once, here: checks.h derives the dtype the ops return from it
// (efficientad::accumulation_type), and the plain-PyTorch references follow the same rule
// (python/efficientad_ext/ops/arg_checks.py, accumulation_dtype). No torch and no CUDA
// headers: the CPU kernels (scalar_t = c10::Half, ...) and the CUDA ones (T = __half, ...)
// both use it.
#pragma once

namespace efficientad {

template <typename T> struct AccumulationOf { using type = float; };
template <> struct AccumulationOf<double> { using type = double; };
template <typename T> using acc_t = typename AccumulationOf<T>::type;

}  // namespace efficientad
