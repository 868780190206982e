// CPU kernel of efficientad::winograd_conv2d: a stride-1 convolution (+ bias, optional ReLU,
// optional 2x2 average pooling) by Winograd's minimal filtering algorithm F(m x m, r x r).
//
// Why: on CPUs without low-precision arithmetic (AVX2 only), the PDNs' 4x4 and 3x3
// convolutions already run in oneDNN near the FMA peak; the only way to go faster in float32
// is fewer multiplications. F(m, r) computes an m x m output tile from an a x a input tile
// (a = m + r - 1) with a*a multiplications per channel pair instead of m*m*r*r:
// F(3x3, 4x4) needs 36 instead of 144 (4x fewer), F(4x4, 3x3) 36 instead of 144.
//
//   Y = AT [ U (.) V ] A,  U = G g G^T (per filter, precomputed once by the caller),
//                          V = BT d B   (per input tile and channel)
//
// The caller passes the transformed weights U [a*a, C, K] and the matrices BT [a, a] and
// AT [m, a] (efficientad_ext/inference/winograd.py derives them exactly from interpolation points), so
// this file only knows the generic three steps:
//   1. input transform: every a x a input tile (stride m, zero padded) -> V[a*a, T, C];
//   2. a*a independent GEMMs V[p] @ U[p] -> M[p] [T, K] (at::bmm: MKL / oneDNN);
//   3. output transform: Y = AT M A per tile, + bias, ReLU, written NHWC.
// Tiles are processed in chunks so that V and M stay a few MB (not B x H x W x a*a/m*m),
// whatever the batch size. Channels are the innermost, unit-stride loop of both transforms
// (channels-last input and output), so they vectorise; the transforms are compiled for AVX2
// as well as baseline x86-64 (function multiversioning picks at load time).
// Rounding differs from a direct convolution (float32 transforms of float32 data): the result
// is the same function to ~1e-5 relative (tests/test_winograd.py states the tolerance).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"

namespace efficientad::cpu {
namespace {

constexpr int64_t kMaxTile = 8;       // a = m + r - 1 <= 8 (F(6,3), F(5,4), ...)
constexpr int64_t kChannelBlock = 64; // channels per register/L1 block of a transform

struct Geometry {
  int64_t B, C, H, W, K, r, m, a, pad, OH, OW, TH, TW;
  int64_t xs0, xs2, xs3;  // input strides of b, y, x (channels have unit stride)
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EAD_MULTIVERSION __attribute__((target_clones("arch=haswell", "default")))
#define EAD_INLINE __attribute__((always_inline)) inline
#else
#define EAD_MULTIVERSION
#define EAD_INLINE inline
#endif

// Input transform of the tiles base + [t0, t1) (global tile index: b, ty, tx row-major):
// V[(i*a + j) * rows + t][c] = (BT d BT^T)[i][j][c], rows = tiles held by V.
// EAD_INLINE: the loops must be compiled inside each multiversioned clone below.
template <typename scalar_t>
EAD_INLINE void input_transform(const Geometry& g, const scalar_t* x, const scalar_t* bt, int64_t base, int64_t t0, int64_t t1,
                     int64_t rows, scalar_t* v) {
  const int64_t a = g.a;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tile = base + t;
    const int64_t b = tile / (g.TH * g.TW), ty = (tile / g.TW) % g.TH, tx = tile % g.TW;
    const int64_t y0 = ty * g.m - g.pad, x0 = tx * g.m - g.pad;
    for (int64_t c0 = 0; c0 < g.C; c0 += kChannelBlock) {
      const int64_t cb = std::min(kChannelBlock, g.C - c0);
      scalar_t d[kMaxTile][kMaxTile][kChannelBlock];
      for (int64_t k = 0; k < a; ++k) {
        for (int64_t l = 0; l < a; ++l) {
          const int64_t yy = y0 + k, xx = x0 + l;
          scalar_t* dst = d[k][l];
          if (yy < 0 || yy >= g.H || xx < 0 || xx >= g.W) {
            std::fill(dst, dst + cb, scalar_t(0));
          } else {
            const scalar_t* src = x + b * g.xs0 + yy * g.xs2 + xx * g.xs3 + c0;
            std::copy(src, src + cb, dst);
          }
        }
      }
      scalar_t tmp[kMaxTile][kMaxTile][kChannelBlock];  // tmp = BT d
      for (int64_t i = 0; i < a; ++i) {
        for (int64_t l = 0; l < a; ++l) {
          scalar_t* o = tmp[i][l];
          std::fill(o, o + cb, scalar_t(0));
          for (int64_t k = 0; k < a; ++k) {
            const scalar_t f = bt[i * a + k];
            if (f == scalar_t(0)) continue;
            const scalar_t* s = d[k][l];
            for (int64_t c = 0; c < cb; ++c) o[c] += f * s[c];
          }
        }
      }
      for (int64_t i = 0; i < a; ++i) {
        for (int64_t j = 0; j < a; ++j) {
          scalar_t* o = v + ((i * a + j) * rows + t) * g.C + c0;
          std::fill(o, o + cb, scalar_t(0));
          for (int64_t l = 0; l < a; ++l) {
            const scalar_t f = bt[j * a + l];
            if (f == scalar_t(0)) continue;
            const scalar_t* s = tmp[i][l];
            for (int64_t c = 0; c < cb; ++c) o[c] += f * s[c];
          }
        }
      }
    }
  }
}

// Output transform of the tiles base + [t0, t1), M [a*a, rows, K]:
// Y = AT M AT^T + bias (+ ReLU), written NHWC into y (the tile's in-bounds pixels only).
template <typename scalar_t>
EAD_INLINE void output_transform(const Geometry& g, const scalar_t* mm, const scalar_t* at, const scalar_t* bias, bool relu,
                      int64_t base, int64_t t0, int64_t t1, int64_t rows, scalar_t* y) {
  const int64_t a = g.a, m = g.m;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tile = base + t;
    const int64_t b = tile / (g.TH * g.TW), ty = (tile / g.TW) % g.TH, tx = tile % g.TW;
    const int64_t oy0 = ty * m, ox0 = tx * m;
    for (int64_t k0 = 0; k0 < g.K; k0 += kChannelBlock) {
      const int64_t kb = std::min(kChannelBlock, g.K - k0);
      scalar_t tmp[kMaxTile][kMaxTile][kChannelBlock];  // tmp = AT M  ([m][a])
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t q = 0; q < a; ++q) {
          scalar_t* o = tmp[i][q];
          std::fill(o, o + kb, scalar_t(0));
          for (int64_t p = 0; p < a; ++p) {
            const scalar_t f = at[i * a + p];
            if (f == scalar_t(0)) continue;
            const scalar_t* s = mm + ((p * a + q) * rows + t) * g.K + k0;
            for (int64_t c = 0; c < kb; ++c) o[c] += f * s[c];
          }
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        const int64_t oy = oy0 + i;
        if (oy >= g.OH) break;
        for (int64_t j = 0; j < m; ++j) {
          const int64_t ox = ox0 + j;
          if (ox >= g.OW) break;
          scalar_t acc[kChannelBlock];
          if (bias != nullptr) {
            std::copy(bias + k0, bias + k0 + kb, acc);
          } else {
            std::fill(acc, acc + kb, scalar_t(0));
          }
          for (int64_t q = 0; q < a; ++q) {
            const scalar_t f = at[j * a + q];
            if (f == scalar_t(0)) continue;
            const scalar_t* s = tmp[i][q];
            for (int64_t c = 0; c < kb; ++c) acc[c] += f * s[c];
          }
          scalar_t* o = y + ((b * g.OH + oy) * g.OW + ox) * g.K + k0;
          if (relu) {
            for (int64_t c = 0; c < kb; ++c) o[c] = acc[c] < scalar_t(0) ? scalar_t(0) : acc[c];  // NaN stays NaN
          } else {
            std::copy(acc, acc + kb, o);
          }
        }
      }
    }
  }
}

// float32: compiled twice (AVX2+FMA and baseline), the loader picks the best for this CPU.
EAD_MULTIVERSION void input_transform_f32(const Geometry& g, const float* x, const float* bt, int64_t base,
                                          int64_t t0, int64_t t1, int64_t rows, float* v) {
  input_transform<float>(g, x, bt, base, t0, t1, rows, v);
}
EAD_MULTIVERSION void output_transform_f32(const Geometry& g, const float* mm, const float* at, const float* bias,
                                           bool relu, int64_t base, int64_t t0, int64_t t1, int64_t rows,
                                           float* y) {
  output_transform<float>(g, mm, at, bias, relu, base, t0, t1, rows, y);
}

template <typename scalar_t>
void run_input_transform(const Geometry& g, const scalar_t* x, const scalar_t* bt, int64_t base, int64_t t0,
                         int64_t t1, int64_t rows, scalar_t* v) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    input_transform_f32(g, x, bt, base, t0, t1, rows, v);
  } else {
    input_transform<scalar_t>(g, x, bt, base, t0, t1, rows, v);
  }
}

template <typename scalar_t>
void run_output_transform(const Geometry& g, const scalar_t* mm, const scalar_t* at, const scalar_t* bias,
                          bool relu, int64_t base, int64_t t0, int64_t t1, int64_t rows, scalar_t* y) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    output_transform_f32(g, mm, at, bias, relu, base, t0, t1, rows, y);
  } else {
    output_transform<scalar_t>(g, mm, at, bias, relu, base, t0, t1, rows, y);
  }
}

at::Tensor winograd_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight_tf,
                               const std::optional<at::Tensor>& bias, const at::Tensor& input_tf,
                               const at::Tensor& output_tf, int64_t kernel_size, int64_t padding, bool relu,
                               bool pool, int64_t pool_padding) {
  check_floating(input, "input");
  check_rank(input, 4, "input", "[B, C, H, W]");
  check_nonempty(input, "input");
  check_rank(weight_tf, 3, "weight_tf", "[a*a, C_in, C_out]");
  check_rank(input_tf, 2, "input_tf", "[a, a]");
  check_rank(output_tf, 2, "output_tf", "[m, a]");
  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "input must be float32 or float64 for winograd_conv2d, got ",
                   dtype);
  check_same_dtype(input, "input", weight_tf, "weight_tf");
  check_same_dtype(input, "input", input_tf, "input_tf");
  check_same_dtype(input, "input", output_tf, "output_tf");
  for (const auto* t : {&weight_tf, &input_tf, &output_tf})
    check_same_device(input, "input", *t, "the transform matrices");
  const int64_t m = output_tf.size(0), a = output_tf.size(1);
  TORCH_CHECK_VALUE(kernel_size >= 1 && m >= 1 && a == m + kernel_size - 1 && a <= kMaxTile,
                    "output_tf must be [m, m + kernel_size - 1] with m + kernel_size - 1 <= ", kMaxTile, ", got ",
                    output_tf.sizes(), " for kernel_size ", kernel_size);
  TORCH_CHECK_VALUE(input_tf.size(0) == a && input_tf.size(1) == a, "input_tf must be [", a, ", ", a, "], got ",
                    input_tf.sizes());
  const int64_t C = input.size(1);
  TORCH_CHECK_VALUE(weight_tf.size(1) == C, "input must have ", weight_tf.size(1), " channels (weight_tf's C_in), got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight_tf.size(0) == a * a, "weight_tf must be [", a * a, ", ", C,
                    ", K] (a*a, input channels, output channels), got ", weight_tf.sizes());
  const int64_t K = weight_tf.size(2);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(input, "input", *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == K, "bias must have shape [", K, "], got ", bias->sizes());
  }
  check_conv_geometry(input.size(2), input.size(3), kernel_size, kernel_size, padding, pool, pool_padding);
  Geometry g{input.size(0), C, input.size(2), input.size(3), K, kernel_size, m, a, padding, 0, 0, 0, 0, 0, 0, 0};
  g.OH = conv_output_size(g.H, kernel_size, padding);
  g.OW = conv_output_size(g.W, kernel_size, padding);
  g.TH = (g.OH + m - 1) / m;
  g.TW = (g.OW + m - 1) / m;

  const auto cl = at::MemoryFormat::ChannelsLast;
  // Channels must have unit stride; a channel slice of a channels-last tensor (the teacher's
  // or student's half of a shared first layer) is read in place, without a copy.
  const at::Tensor x = input.stride(1) == 1 ? input : input.contiguous(cl);
  g.xs0 = x.stride(0);
  g.xs2 = x.stride(2);
  g.xs3 = x.stride(3);
  const at::Tensor u = weight_tf.contiguous();
  const at::Tensor bt = input_tf.contiguous(), at_ = output_tf.contiguous();
  const at::Tensor bias_c = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.B, K, g.OH, g.OW}, input.options(), cl);

  // Chunk of tiles: V [a*a, Tc, C] plus M [a*a, Tc, K] about 8 MB, at least 32 tiles.
  const int64_t total = g.B * g.TH * g.TW;
  const int64_t per_tile_bytes = a * a * (C + K) * static_cast<int64_t>(input.element_size());
  const int64_t chunk = std::clamp<int64_t>((int64_t(8) << 20) / per_tile_bytes, 32, total);
  at::Tensor v = at::empty({a * a, chunk, C}, input.options());
  at::Tensor mm = at::empty({a * a, chunk, K}, input.options());

  AT_DISPATCH_FLOATING_TYPES(dtype, "winograd_conv2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* btp = bt.const_data_ptr<scalar_t>();
    const scalar_t* atp = at_.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    for (int64_t base = 0; base < total; base += chunk) {
      const int64_t n = std::min(chunk, total - base);
      // The last, shorter chunk uses the front of the buffers as dense [a*a, n, .] tensors.
      at::Tensor vc = v.view({-1}).narrow(0, 0, a * a * n * C).view({a * a, n, C});
      at::Tensor mc = mm.view({-1}).narrow(0, 0, a * a * n * K).view({a * a, n, K});
      scalar_t* vp = vc.mutable_data_ptr<scalar_t>();
      // Each tile writes only its own rows of V and its own output pixels: tiles split freely.
      at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
        run_input_transform<scalar_t>(g, xp, btp, base, begin, end, n, vp);
      });
      at::bmm_out(mc, vc, u);
      const scalar_t* mp = mc.const_data_ptr<scalar_t>();
      at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
        run_output_transform<scalar_t>(g, mp, atp, bp, relu, base, begin, end, n, yp);
      });
    }
  });
  if (!pool) return y;
  return at::avg_pool2d(y, {2, 2}, {2, 2}, {pool_padding, pool_padding}).contiguous(cl);
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) { m.impl("winograd_conv2d", &winograd_conv2d_cpu); }

}  // namespace efficientad::cpu
