// Per-pixel math of EfficientAD inference (the paper's Algorithm 2, lines 2-12).
//
//   t_hat_c   = (t_c - mean_c) * inv_std_c                 (teacher, channel-normalised)
//   M_ST      = 1/C * sum_c (t_hat_c - s_c)^2               (student channels 0..C-1)
//   M_AE      = 1/C * sum_c (a_c - s_{C+c})^2               (student channels C..2C-1)
//   norm(m)   = 0.1 * (m - q_a) / (q_b - q_a)
//   M         = 0.5 * norm_ST(M_ST) + 0.5 * norm_AE(M_AE)
//   score     = max over the map after padding and bilinear resizing
//
// Normalisation is affine and bilinear resizing takes convex combinations, so normalising at
// feature resolution and then resizing equals resizing the raw maps and then normalising (the
// order the peers use); a border pixel added by padding is a raw map value of 0.
// Accumulation type `Acc` is float for half/bfloat16/float inputs and double for double.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace efficientad {

// Quantiles as stored with a model: {q_st_a, q_st_b, q_ae_a, q_ae_b}.
template <typename Acc>
struct MapNormalization {
  Acc st_offset, st_scale, ae_offset, ae_scale;  // norm(m) = (m - offset) * scale
};

template <typename Acc>
EAD_HD MapNormalization<Acc> make_map_normalization(const Acc* q) {
  return {q[0], Acc(0.1) / (q[1] - q[0]), q[2], Acc(0.1) / (q[3] - q[2])};
}

// Whether normalising before resizing (what the kernels do) equals the definition's order
// (resize, then normalise): true when both scales are finite and positive, i.e. q_a < q_b with
// 0.1 / (q_b - q_a) representable. Otherwise an infinite normalised value enters a bilinear
// tap with weight 0 and gives 0 * inf = NaN where the definition gives +-inf, so the CPU kernel
// refuses such quantiles (the model loader and calibration never produce them).
template <typename Acc>
EAD_HD bool normalization_is_valid(const MapNormalization<Acc>& n) {
  const auto ok = [](Acc offset, Acc scale) {
    return offset - offset == Acc(0) && scale - scale == Acc(0) && scale > Acc(0);  // finite, > 0
  };
  return ok(n.st_offset, n.st_scale) && ok(n.ae_offset, n.ae_scale);
}

template <typename Acc>
EAD_HD Acc combine_maps(Acc map_st, Acc map_ae, const MapNormalization<Acc>& n) {
  return Acc(0.5) * ((map_st - n.st_offset) * n.st_scale) +
         Acc(0.5) * ((map_ae - n.ae_offset) * n.ae_scale);
}

EAD_HD float squared(float v) { return v * v; }
EAD_HD double squared(double v) { return v * v; }

// Max that propagates NaN: a NaN anywhere in a map makes its score NaN, never a random value.
template <typename Acc>
EAD_HD Acc nan_max(Acc a, Acc b) {
  return (a != a || a > b) ? a : b;
}

// Bilinear sampling with align_corners=False, exactly as ATen's upsample_bilinear2d computes
// source coordinates when only an output size is given (scale = in / out).
// Coordinates are computed in the accumulation type, as ATen does (float for float maps).
template <typename Acc>
struct BilinearTap {
  int64_t i0, i1;  // source indices (i1 == i0 at the last row/column and for equal sizes)
  Acc w0, w1;      // weights, w0 + w1 == 1
};

template <typename Acc>
EAD_HD BilinearTap<Acc> bilinear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const Acc scale = static_cast<Acc>(in_size) / static_cast<Acc>(out_size);
  Acc src = scale * (static_cast<Acc>(dst) + Acc(0.5)) - Acc(0.5);
  if (src < Acc(0)) src = Acc(0);
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in_size - 1) i0 = in_size - 1;
  // Equal sizes: every weight w1 is exactly 0 and ATen copies that dimension; taking no second
  // tap keeps a NaN pixel from reaching its neighbour through 0 * NaN (values are unchanged).
  const int64_t i1 = (i0 < in_size - 1 && in_size != out_size) ? i0 + 1 : i0;
  const Acc w1 = src - static_cast<Acc>(i0);
  return {i0, i1, Acc(1) - w1, w1};
}

// Value of the padded map at (y, x) in padded coordinates: `border` outside the inner map.
template <typename Acc>
EAD_HD Acc padded_map_value(const Acc* map, int64_t h, int64_t w, int64_t pad, int64_t y,
                            int64_t x, Acc border) {
  const int64_t iy = y - pad, ix = x - pad;
  return (iy < 0 || ix < 0 || iy >= h || ix >= w) ? border : map[iy * w + ix];
}

// One output pixel of bilinear resizing of the padded (h + 2 pad) x (w + 2 pad) map.
template <typename Acc>
EAD_HD Acc resized_map_value(const Acc* map, int64_t h, int64_t w, int64_t pad, Acc border,
                             const BilinearTap<Acc>& ty, const BilinearTap<Acc>& tx) {
  const Acc v00 = padded_map_value(map, h, w, pad, ty.i0, tx.i0, border);
  const Acc v01 = padded_map_value(map, h, w, pad, ty.i0, tx.i1, border);
  const Acc v10 = padded_map_value(map, h, w, pad, ty.i1, tx.i0, border);
  const Acc v11 = padded_map_value(map, h, w, pad, ty.i1, tx.i1, border);
  return ty.w0 * (tx.w0 * v00 + tx.w1 * v01) + ty.w1 * (tx.w0 * v10 + tx.w1 * v11);
}

}  // namespace efficientad
