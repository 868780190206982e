// The shape of one efficientad::winograd_conv2d call, shared by the per-ISA copies of its loops
// (winograd_transforms.inc).
#pragma once

#include <algorithm>
#include <cstdint>

namespace efficientad::cpu::winograd {

constexpr int64_t kMaxTile = 8;        // a = m + r - 1 <= 8 (F(6,3), F(5,4), ...)
constexpr int64_t kChannelBlock = 64;  // channels per register/L1 block of a transform

struct Geometry {
  int64_t B, C, H, W, K, r, m, a, pad, OH, OW, TH, TW;
  int64_t xs0, xs2, xs3;  // input strides of b, y, x (channels have unit stride)
};

// Tiles per chunk of a Winograd op: the two tile buffers, [a*a, n, C] and [a*a, n, K], about
// max(8 MB, size of the [a*a, C, K] transformed weights or weight gradient), at least 32 tiles.
// Every chunk's GEMMs read (or accumulate into) all of that [a*a, C, K] tensor, which outgrows
// the caches on the wide layers (PDN-S student conv4 with 8x8 tiles: 50 MB); chunks at least
// its size keep those re-reads below the chunk's own traffic. Measured on an AVX2 EPYC (2
// threads, the forward's GEMMs alone, benchmarks/RESULTS.md session 17): that layer's GEMMs
// 38.8 ms with 8 MB chunks, 22.7 with one chunk of all 144 tiles.
inline int64_t chunk_tiles(int64_t total, int64_t a, int64_t C, int64_t K, int64_t element_bytes) {
  const int64_t per_tile_bytes = a * a * (C + K) * element_bytes;
  const int64_t budget_bytes = std::max<int64_t>(int64_t(8) << 20, a * a * C * K * element_bytes);
  return std::clamp<int64_t>(budget_bytes / per_tile_bytes, 32, total);
}

}  // namespace efficientad::cpu::winograd
