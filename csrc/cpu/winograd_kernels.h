// The loops of the CPU Winograd ops (winograd_conv2d_cpu.cpp, winograd_conv2d_weight_grad_cpu.cpp),
// each compiled once per instruction set and chosen at run time on the CPU's flags
// (winograd_kernels.cpp). Tiles are numbered b, ty, tx row-major over g.B x g.TH x g.TW; a
// tile buffer holds `rows` tiles as [a*a, rows, channels] (row t of position p at
// (p * rows + t) * channels), the layout the batched GEMMs over the a*a positions read.
#pragma once

#include <cstdint>

#include "cpu/winograd_geometry.h"

namespace efficientad::cpu::winograd {

// Whether input pixels [p0, p1) (b, y, x row-major) are all finite.
template <typename scalar_t>
bool run_all_finite(const Geometry& g, const scalar_t* x, int64_t p0, int64_t p1);

// V = BT d BT^T of tiles base + [t0, t1): d is the a x a input window at (ty*m - pad,
// tx*m - pad), zero outside the input; V [a*a, rows, g.C].
template <typename scalar_t>
void run_input_transform(const Geometry& g, const scalar_t* x, const scalar_t* bt, int64_t base, int64_t t0,
                         int64_t t1, int64_t rows, scalar_t* v);

// Y = AT M AT^T (+ bias, + ReLU) of tiles base + [t0, t1), M [a*a, rows, g.K], written NHWC
// into y [B, OH, OW, K] (the tile's in-bounds pixels only).
template <typename scalar_t>
void run_output_transform(const Geometry& g, const scalar_t* mm, const scalar_t* at, const scalar_t* bias, bool relu,
                          int64_t base, int64_t t0, int64_t t1, int64_t rows, scalar_t* y);

// The adjoint of the output transform without bias and ReLU: D = AT^T dY AT of tiles
// base + [t0, t1), dY the m x m window of dy [B, OH, OW, K] (NHWC) at (ty*m, tx*m), zero
// beyond OH / OW; D [a*a, rows, g.K]. (d loss / d M of the forward, given d loss / d Y.)
template <typename scalar_t>
void run_output_adjoint(const Geometry& g, const scalar_t* dy, const scalar_t* at, int64_t base, int64_t t0, int64_t t1,
                        int64_t rows, scalar_t* d);

}  // namespace efficientad::cpu::winograd
