// Epilogue of a PDN convolution: optional bias (CUDA: the convolution runs without it; CPU:
// oneDNN adds it inside the convolution and the epilogue gets bias 0), optional ReLU, then
// optional 2x2 average pooling (stride 2, zero padding `pool_pad`, count_include_pad=True as
// nn.AvgPool2d's default: every window divides by 4, padded zeros included). Fused so the
// un-pooled activation is read once and no separate bias, ReLU or pooling tensor is written.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace efficientad {

template <typename Acc>
EAD_HD Acc maybe_relu(Acc v, bool relu) {
  return (relu && v < Acc(0)) ? Acc(0) : v;  // NaN stays NaN, as torch.relu
}

// One activation of the layer: bias added in the accumulation type, then the optional ReLU.
template <typename Acc>
EAD_HD Acc conv_activation(Acc conv, Acc bias, bool relu) {
  return maybe_relu(conv + bias, relu);
}

// Output size of a stride-1 convolution of a k-wide kernel with zero padding `pad` (<= 0: the
// input is too small; checks.h refuses that before any kernel runs).
EAD_HD int64_t conv_output_size(int64_t in, int64_t k, int64_t pad) { return in + 2 * pad - k + 1; }

// Output size of AvgPool2d(kernel 2, stride 2, padding pool_pad), floor mode.
EAD_HD int64_t pooled_size(int64_t in, int64_t pool_pad) { return (in + 2 * pool_pad - 2) / 2 + 1; }

// Input row/column of tap k (0 or 1) of pooled output index o; may be outside [0, in).
EAD_HD int64_t pool_tap(int64_t o, int k, int64_t pool_pad) { return 2 * o - pool_pad + k; }

}  // namespace efficientad
