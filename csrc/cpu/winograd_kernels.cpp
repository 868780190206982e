// The per-instruction-set copies of the Winograd loops (winograd_transforms.inc) and the
// run-time choice between them (declared in winograd_kernels.h).
#include "cpu/winograd_kernels.h"

#include <c10/util/Exception.h>
#include <c10/util/env.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace efficientad::cpu::winograd {
namespace {

// Run-time ISA dispatch of the float32 loops (GCC on x86-64; other compilers build the
// baseline copy only): winograd_transforms.inc is compiled three times, each copy in its own
// namespace under its own `#pragma GCC target`. The AVX-512 copy asks for 512-bit vectors
// explicitly (GCC's tuning otherwise prefers 256-bit ones on some AVX-512 CPUs).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EAD_ISA_DISPATCH 1
#else
#define EAD_ISA_DISPATCH 0
#endif

namespace baseline {
#include "cpu/winograd_transforms.inc"
}  // namespace baseline

#if EAD_ISA_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cpu/winograd_transforms.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
namespace avx512 {
#include "cpu/winograd_transforms.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

enum class CpuKind { kBaseline, kAvx2, kAvx512 };

// The widest kind this CPU runs, capped by EFFICIENTAD_CPU_ISA (avx512 | avx2 | baseline);
// decided once per process.
CpuKind cpu_kind() {
  static const CpuKind kind = [] {
    CpuKind best = CpuKind::kBaseline;
#if EAD_ISA_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = CpuKind::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      best = CpuKind::kAvx512;
#endif
    const auto cap = c10::utils::get_env("EFFICIENTAD_CPU_ISA");
    if (cap.has_value()) {
      if (*cap == "baseline") return CpuKind::kBaseline;
      if (*cap == "avx2") return std::min(best, CpuKind::kAvx2);
      TORCH_CHECK_VALUE(*cap == "avx512", "EFFICIENTAD_CPU_ISA must be avx512, avx2 or baseline, got '", *cap, "'");
    }
    return best;
  }();
  return kind;
}

// The float32 entry points of each copy: non-template functions, so every instantiation
// happens inside its namespace's target region.
#if EAD_ISA_DISPATCH
bool all_finite_avx512(const Geometry& g, const float* x, int64_t p0, int64_t p1) {
  return avx512::all_finite<float>(g, x, p0, p1);
}
bool all_finite_avx2(const Geometry& g, const float* x, int64_t p0, int64_t p1) {
  return avx2::all_finite<float>(g, x, p0, p1);
}
void input_transform_avx512(const Geometry& g, const float* x, const float* bt, int64_t base, int64_t t0,
                            int64_t t1, int64_t rows, float* v) {
  avx512::input_transform<float>(g, x, bt, base, t0, t1, rows, v);
}
void input_transform_avx2(const Geometry& g, const float* x, const float* bt, int64_t base, int64_t t0, int64_t t1,
                          int64_t rows, float* v) {
  avx2::input_transform<float>(g, x, bt, base, t0, t1, rows, v);
}
void output_transform_avx512(const Geometry& g, const float* mm, const float* at, const float* bias, bool relu,
                             int64_t base, int64_t t0, int64_t t1, int64_t rows, float* y) {
  avx512::output_transform<float>(g, mm, at, bias, relu, base, t0, t1, rows, y);
}
void output_transform_avx2(const Geometry& g, const float* mm, const float* at, const float* bias, bool relu,
                           int64_t base, int64_t t0, int64_t t1, int64_t rows, float* y) {
  avx2::output_transform<float>(g, mm, at, bias, relu, base, t0, t1, rows, y);
}
void output_adjoint_avx512(const Geometry& g, const float* dy, const float* at, int64_t base, int64_t t0, int64_t t1,
                           int64_t rows, float* d) {
  avx512::output_adjoint<float>(g, dy, at, base, t0, t1, rows, d);
}
void output_adjoint_avx2(const Geometry& g, const float* dy, const float* at, int64_t base, int64_t t0, int64_t t1,
                         int64_t rows, float* d) {
  avx2::output_adjoint<float>(g, dy, at, base, t0, t1, rows, d);
}
#endif

}  // namespace

// The entry points the ops call: float32 through the CPU's widest copy, float64 as built.
template <typename scalar_t>
bool run_all_finite(const Geometry& g, const scalar_t* x, int64_t p0, int64_t p1) {
#if EAD_ISA_DISPATCH
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (cpu_kind()) {
      case CpuKind::kAvx512: return all_finite_avx512(g, x, p0, p1);
      case CpuKind::kAvx2: return all_finite_avx2(g, x, p0, p1);
      case CpuKind::kBaseline: break;
    }
  }
#endif
  return baseline::all_finite<scalar_t>(g, x, p0, p1);
}

template <typename scalar_t>
void run_input_transform(const Geometry& g, const scalar_t* x, const scalar_t* bt, int64_t base, int64_t t0,
                         int64_t t1, int64_t rows, scalar_t* v) {
#if EAD_ISA_DISPATCH
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (cpu_kind()) {
      case CpuKind::kAvx512: return input_transform_avx512(g, x, bt, base, t0, t1, rows, v);
      case CpuKind::kAvx2: return input_transform_avx2(g, x, bt, base, t0, t1, rows, v);
      case CpuKind::kBaseline: break;
    }
  }
#endif
  baseline::input_transform<scalar_t>(g, x, bt, base, t0, t1, rows, v);
}

template <typename scalar_t>
void run_output_transform(const Geometry& g, const scalar_t* mm, const scalar_t* at, const scalar_t* bias,
                          bool relu, int64_t base, int64_t t0, int64_t t1, int64_t rows, scalar_t* y) {
#if EAD_ISA_DISPATCH
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (cpu_kind()) {
      case CpuKind::kAvx512: return output_transform_avx512(g, mm, at, bias, relu, base, t0, t1, rows, y);
      case CpuKind::kAvx2: return output_transform_avx2(g, mm, at, bias, relu, base, t0, t1, rows, y);
      case CpuKind::kBaseline: break;
    }
  }
#endif
  baseline::output_transform<scalar_t>(g, mm, at, bias, relu, base, t0, t1, rows, y);
}

template <typename scalar_t>
void run_output_adjoint(const Geometry& g, const scalar_t* dy, const scalar_t* at, int64_t base, int64_t t0, int64_t t1,
                        int64_t rows, scalar_t* d) {
#if EAD_ISA_DISPATCH
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (cpu_kind()) {
      case CpuKind::kAvx512: return output_adjoint_avx512(g, dy, at, base, t0, t1, rows, d);
      case CpuKind::kAvx2: return output_adjoint_avx2(g, dy, at, base, t0, t1, rows, d);
      case CpuKind::kBaseline: break;
    }
  }
#endif
  baseline::output_adjoint<scalar_t>(g, dy, at, base, t0, t1, rows, d);
}

// The ops are float32 and float64 only (AT_DISPATCH_FLOATING_TYPES).
#define EAD_INSTANTIATE(T)                                                                                            \
  template bool run_all_finite<T>(const Geometry&, const T*, int64_t, int64_t);                                      \
  template void run_input_transform<T>(const Geometry&, const T*, const T*, int64_t, int64_t, int64_t, int64_t, T*); \
  template void run_output_transform<T>(const Geometry&, const T*, const T*, const T*, bool, int64_t, int64_t,        \
                                        int64_t, int64_t, T*);                                                        \
  template void run_output_adjoint<T>(const Geometry&, const T*, const T*, int64_t, int64_t, int64_t, int64_t, T*);
EAD_INSTANTIATE(float)
EAD_INSTANTIATE(double)
#undef EAD_INSTANTIATE

}  // namespace efficientad::cpu::winograd
