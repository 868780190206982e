// CPU kernel of efficientad::winograd_conv2d_weight_grad: the gradient of a stride-1
// convolution's weight, d loss / d w, by back-propagating through Winograd's F(m x m, r x r)
// (the forward of efficientad::winograd_conv2d) instead of correlating input and output
// gradient directly.
//
// Why: training the PDNs in float32 on AVX2-only CPUs spends ~2/3 of a step in oneDNN's
// convolution backward, already near the FMA peak; like the forward, only fewer
// multiplications help. With Y = AT [ U (.) V ] AT^T, U = G w G^T, V = BT d BT^T per tile,
//
//   d loss / d U[p] = sum over tiles of V[p]^T D[p],   D = AT^T dY AT   (per tile, per channel)
//   d loss / d w    = G^T (d loss / d U) G
//
// so the weight gradient is one input transform (the forward's, same tiles), one adjoint of
// the output transform and a*a GEMMs [C, tiles] x [tiles, K] whose inner dimension is the
// number of tiles: a*a products per channel pair and tile instead of m*m*r*r. In exact
// arithmetic it equals the direct convolution's weight gradient (the forward is the same
// function); rounding differs at the ~1e-6 relative level (tests/test_winograd_training.py).
//
// Non-finite input or output gradient: every tile of an input channel feeds every entry of
// that channel's weight gradient, so a NaN or inf makes the channel's (or the output
// channel's) whole gradient non-finite, as it makes (nearly) all of it in the direct
// correlation; no fallback is needed for training, where the step is skipped or fails anyway.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"
#include "cpu/winograd_kernels.h"

namespace efficientad::cpu {
namespace {

using winograd::Geometry;
using winograd::kMaxTile;
using winograd::run_input_transform;
using winograd::run_output_adjoint;

at::Tensor winograd_conv2d_weight_grad_cpu(const at::Tensor& input, const at::Tensor& grad_output,
                                           const at::Tensor& input_tf, const at::Tensor& output_tf,
                                           const at::Tensor& weight_tf_matrix, int64_t kernel_size, int64_t padding) {
  check_floating(input, "input");
  check_rank(input, 4, "input", "[B, C, H, W]");
  check_nonempty(input, "input");
  check_rank(grad_output, 4, "grad_output", "[B, K, OH, OW]");
  check_rank(input_tf, 2, "input_tf", "[a, a]");
  check_rank(output_tf, 2, "output_tf", "[m, a]");
  check_rank(weight_tf_matrix, 2, "weight_tf_matrix", "[a, r]");
  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble,
                   "input must be float32 or float64 for winograd_conv2d_weight_grad, got ", dtype);
  check_same_dtype(input, "input", grad_output, "grad_output");
  check_same_dtype(input, "input", input_tf, "input_tf");
  check_same_dtype(input, "input", output_tf, "output_tf");
  check_same_dtype(input, "input", weight_tf_matrix, "weight_tf_matrix");
  for (const auto* t : {&grad_output, &input_tf, &output_tf, &weight_tf_matrix})
    check_same_device(input, "input", *t, "grad_output and the transform matrices");
  const int64_t m = output_tf.size(0), a = output_tf.size(1), r = kernel_size;
  TORCH_CHECK_VALUE(r >= 1 && m >= 1 && a == m + r - 1 && a <= kMaxTile,
                    "output_tf must be [m, m + kernel_size - 1] with m + kernel_size - 1 <= ", kMaxTile, ", got ",
                    output_tf.sizes(), " for kernel_size ", kernel_size);
  TORCH_CHECK_VALUE(input_tf.size(0) == a && input_tf.size(1) == a, "input_tf must be [", a, ", ", a, "], got ",
                    input_tf.sizes());
  TORCH_CHECK_VALUE(weight_tf_matrix.size(0) == a && weight_tf_matrix.size(1) == r, "weight_tf_matrix must be [", a,
                    ", ", r, "] (G of F(m, r)), got ", weight_tf_matrix.sizes());
  check_conv_geometry(input.size(2), input.size(3), r, r, padding, false, 0);
  const int64_t B = input.size(0), C = input.size(1), K = grad_output.size(1);
  const int64_t OH = conv_output_size(input.size(2), r, padding), OW = conv_output_size(input.size(3), r, padding);
  TORCH_CHECK_VALUE(grad_output.size(0) == B && K >= 1 && grad_output.size(2) == OH && grad_output.size(3) == OW,
                    "grad_output must be [", B, ", K, ", OH, ", ", OW, "] (the convolution's output for input ",
                    input.sizes(), ", kernel_size ", r, ", padding ", padding, "), got ", grad_output.sizes());
  Geometry g{B, C, input.size(2), input.size(3), K, r, m, a, padding, OH, OW, (OH + m - 1) / m, (OW + m - 1) / m,
             0,  0, 0};
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.stride(1) == 1 ? input : input.contiguous(cl);
  g.xs0 = x.stride(0);
  g.xs2 = x.stride(2);
  g.xs3 = x.stride(3);
  const at::Tensor dy = grad_output.contiguous(cl);  // the adjoint reads dense NHWC
  const at::Tensor bt = input_tf.contiguous(), at_ = output_tf.contiguous();

  // Chunks as the forward's (winograd::chunk_tiles): V [a*a, n, C] and D [a*a, n, K]; the
  // GEMMs' inner dimension is the chunk's tile count.
  const int64_t total = B * g.TH * g.TW;
  const int64_t chunk = winograd::chunk_tiles(total, a, C, K, static_cast<int64_t>(input.element_size()));
  at::Tensor v = at::empty({a * a, chunk, C}, input.options());
  at::Tensor d = at::empty({a * a, chunk, K}, input.options());
  at::Tensor grad_u = at::empty({a * a, C, K}, input.options());

  AT_DISPATCH_FLOATING_TYPES(dtype, "winograd_conv2d_weight_grad_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* btp = bt.const_data_ptr<scalar_t>();
    const scalar_t* atp = at_.const_data_ptr<scalar_t>();
    for (int64_t base = 0; base < total; base += chunk) {
      const int64_t n = std::min(chunk, total - base);
      at::Tensor vc = v.view({-1}).narrow(0, 0, a * a * n * C).view({a * a, n, C});
      at::Tensor dc = d.view({-1}).narrow(0, 0, a * a * n * K).view({a * a, n, K});
      scalar_t* vp = vc.mutable_data_ptr<scalar_t>();
      scalar_t* dp = dc.mutable_data_ptr<scalar_t>();
      {
        RECORD_FUNCTION("winograd_conv2d_weight_grad.transforms", std::vector<c10::IValue>());
        at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
          run_input_transform<scalar_t>(g, xp, btp, base, begin, end, n, vp);
          run_output_adjoint<scalar_t>(g, dyp, atp, base, begin, end, n, dp);
        });
      }
      if (base == 0) {
        at::bmm_out(grad_u, vc.transpose(1, 2), dc);
      } else {
        grad_u.baddbmm_(vc.transpose(1, 2), dc);
      }
    }
  });
  // d loss / d w[k][c] = G^T (d loss / d U)[., c, k] G, as two contractions over a (G^T on the
  // first tile axis, then on the second) that write the r x r result without a permuted copy
  // of d loss / d U; only the small [r, r, C, K] result is permuted to [K, C, r, r].
  const at::Tensor gt = weight_tf_matrix.t();                                  // [r, a]
  const at::Tensor rows = at::mm(gt, grad_u.view({a, a * C * K})).view({r, a, C * K});  // [u, j, (c, k)]
  return at::matmul(gt, rows).view({r, r, C, K}).permute({3, 2, 0, 1}).contiguous();  // [k, c, u, v]
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) { m.impl("winograd_conv2d_weight_grad", &winograd_conv2d_weight_grad_cpu); }

}  // namespace efficientad::cpu
