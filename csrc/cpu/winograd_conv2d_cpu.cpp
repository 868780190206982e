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
// (channels-last input and output), so they vectorise; the float32 transforms are compiled
// three times, AVX-512 (512-bit vectors), AVX2+FMA and baseline x86-64, and the CPU's flags
// pick one at run time (winograd_kernels.cpp; EFFICIENTAD_CPU_ISA=avx2|baseline caps it, for
// tests and measurements).
// Rounding differs from a direct convolution (float32 transforms of float32 data): the result
// is the same function to ~1e-5 relative (tests/test_winograd.py states the tolerance).
//
// Non-finite input: the transforms mix every input of a tile into every output of it, so one
// NaN or inf would make whole output tiles non-finite where the direct convolution makes one
// r x r window. With `weight` (the untransformed [K, C, r, r]) given, an input holding NaN or
// inf runs efficientad::conv2d_relu_pool instead, whose non-finite outputs are the reference's;
// the scan is one vectorised pass over the input, inside the op (so torch.compile'd calls get
// the same semantics). Without `weight` the tiles spread, as documented in the Python wrapper.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "checks.h"
#include "cpu/winograd_kernels.h"

namespace efficientad::cpu {
namespace {

using winograd::Geometry;
using winograd::kMaxTile;
using winograd::run_all_finite;
using winograd::run_input_transform;
using winograd::run_output_transform;

// The direct convolution of a non-finite input, through the dispatcher (its own checks, its
// kernel for this device), channels-last as this op returns.
at::Tensor direct_fallback(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           int64_t padding, bool relu, bool pool, int64_t pool_padding) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("efficientad::conv2d_relu_pool", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               int64_t, bool, bool, int64_t)>();
  return op.call(input.contiguous(), weight.contiguous(), bias, padding, relu, pool, pool_padding)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor winograd_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight_tf,
                               const std::optional<at::Tensor>& bias, const at::Tensor& input_tf,
                               const at::Tensor& output_tf, int64_t kernel_size, int64_t padding, bool relu,
                               bool pool, int64_t pool_padding, const std::optional<at::Tensor>& weight) {
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
  const bool has_weight = weight.has_value() && weight->defined();
  if (has_weight) {
    check_same_dtype(input, "input", *weight, "weight");
    check_same_device(input, "input", *weight, "weight");
    TORCH_CHECK_VALUE(weight->dim() == 4 && weight->size(0) == K && weight->size(1) == C &&
                          weight->size(2) == kernel_size && weight->size(3) == kernel_size,
                      "weight (the untransformed convolution) must be [", K, ", ", C, ", ", kernel_size, ", ",
                      kernel_size, "], got ", weight->sizes());
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
  // Before any buffer is allocated: a non-finite input needs none of them.
  if (has_weight) {
    RECORD_FUNCTION("winograd_conv2d.finite_scan", std::vector<c10::IValue>());
    std::atomic<bool> finite{true};
    AT_DISPATCH_FLOATING_TYPES(dtype, "winograd_conv2d_cpu_scan", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      at::parallel_for(0, g.B * g.H * g.W, 1024, [&](int64_t begin, int64_t end) {
        if (finite.load(std::memory_order_relaxed) && !run_all_finite<scalar_t>(g, xp, begin, end))
          finite.store(false, std::memory_order_relaxed);
      });
    });
    if (!finite.load()) return direct_fallback(input, *weight, bias, padding, relu, pool, pool_padding);
  }
  const at::Tensor u = weight_tf.contiguous();
  const at::Tensor bt = input_tf.contiguous(), at_ = output_tf.contiguous();
  const at::Tensor bias_c = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.B, K, g.OH, g.OW}, input.options(), cl);

  // Chunks of tiles: V [a*a, n, C] and M [a*a, n, K] (winograd::chunk_tiles says how large).
  const int64_t total = g.B * g.TH * g.TW;
  const int64_t chunk = winograd::chunk_tiles(total, a, C, K, static_cast<int64_t>(input.element_size()));
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
      {
        RECORD_FUNCTION("winograd_conv2d.input_transform", std::vector<c10::IValue>());
        at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
          run_input_transform<scalar_t>(g, xp, btp, base, begin, end, n, vp);
        });
      }
      at::bmm_out(mc, vc, u);
      const scalar_t* mp = mc.const_data_ptr<scalar_t>();
      {
        RECORD_FUNCTION("winograd_conv2d.output_transform", std::vector<c10::IValue>());
        at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
          run_output_transform<scalar_t>(g, mp, atp, bp, relu, base, begin, end, n, yp);
        });
      }
    }
  });
  if (!pool) return y;
  return at::avg_pool2d(y, {2, 2}, {2, 2}, {pool_padding, pool_padding}).contiguous(cl);
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) { m.impl("winograd_conv2d", &winograd_conv2d_cpu); }

}  // namespace efficientad::cpu
