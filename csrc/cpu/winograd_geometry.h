// The shape of one efficientad::winograd_conv2d call, shared by the per-ISA copies of its loops
// (winograd_transforms.inc).
#pragma once

#include <cstdint>

namespace efficientad::cpu::winograd {

constexpr int64_t kMaxTile = 8;        // a = m + r - 1 <= 8 (F(6,3), F(5,4), ...)
constexpr int64_t kChannelBlock = 64;  // channels per register/L1 block of a transform

struct Geometry {
  int64_t B, C, H, W, K, r, m, a, pad, OH, OW, TH, TW;
  int64_t xs0, xs2, xs3;  // input strides of b, y, x (channels have unit stride)
};

}  // namespace efficientad::cpu::winograd
