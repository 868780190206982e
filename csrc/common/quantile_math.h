// The quantile definition shared by every kernel: torch.quantile's / NumPy's "linear" method.
//
// For n values sorted as v[0] <= ... <= v[n-1] and q in [0, 1]:
//   position = q * (n - 1)           (computed in double, exact for n < 2^53)
//   lower    = floor(position), upper = min(lower + 1, n - 1), weight = position - lower
//   quantile = lerp(v[lower], v[upper], weight)
// with lerp written as torch.lerp / numpy do it (the form depends on weight < 0.5), so the
// result equals v[lower] exactly when weight == 0 and v[upper] exactly when weight == 1.
// torch.quantile computes `position` in the input's dtype (float32), which for large n rounds;
// we compute it in double, which is the definition NumPy uses.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace efficientad {

struct QuantilePosition {
  int64_t lower;   // rank of the lower order statistic (0-based)
  int64_t upper;   // rank of the upper order statistic, lower or lower + 1
  double weight;   // in [0, 1)
};

EAD_HD QuantilePosition quantile_position(double q, int64_t n) {
  const double position = q * static_cast<double>(n - 1);
  int64_t lower = static_cast<int64_t>(floor(position));
  if (lower < 0) lower = 0;
  if (lower > n - 1) lower = n - 1;
  const int64_t upper = lower + 1 < n ? lower + 1 : lower;
  double weight = position - static_cast<double>(lower);
  if (weight < 0.0) weight = 0.0;
  return {lower, upper, weight};
}

template <typename T>
EAD_HD T quantile_lerp(T low, T high, T weight) {
  // An exact order statistic stays exact even next to an infinity (inf * 0 would be NaN).
  if (weight == T(0) || low == high) return low;
  const T diff = high - low;
  return weight < T(0.5) ? low + weight * diff : high - diff * (T(1) - weight);
}

}  // namespace efficientad
