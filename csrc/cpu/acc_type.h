// Accumulation type of the CPU kernels: float for half / bfloat16 / float inputs, double for
// double (the dtype twin of efficientad::accumulation_type in checks.h).
#pragma once

#include <type_traits>

namespace efficientad::cpu {

template <typename scalar_t>
using AccOf = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace efficientad::cpu
