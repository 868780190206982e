// CPU kernel of efficientad::conv2d_relu_pool.
//
// The convolution (with its bias) runs in ATen, i.e. oneDNN for channels-last inputs. Our
// epilogue then makes exactly one pass over the convolution output: with pooling it reads
// each activation once, applies ReLU and writes only the pooled [B, C, H/2, W/2] result;
// without pooling it applies ReLU in place. Input, convolution and output are channels-last
// (NHWC: oneDNN's fast layout), so the pooling loop vectorises over C. The output is always
// channels-last, whatever the input's layout. Math: common/pdn_epilogue.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "common/accumulation.h"
#include "common/pdn_epilogue.h"

namespace efficientad::cpu {
namespace {

template <typename scalar_t>
void relu_in_place(at::Tensor& y) {
  scalar_t* p = y.mutable_data_ptr<scalar_t>();  // y is dense (fresh convolution output)
  at::parallel_for(0, y.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p[i] = static_cast<scalar_t>(maybe_relu(acc_t<scalar_t>(p[i]), true));
  });
}

template <typename scalar_t>
void relu_pool(const at::Tensor& y, at::Tensor& out, bool relu, int64_t pp) {
  using Acc = acc_t<scalar_t>;
  const int64_t B = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t OH = out.size(2), OW = out.size(3);
  const int64_t ys0 = y.stride(0), ys1 = y.stride(1), ys2 = y.stride(2), ys3 = y.stride(3);
  const int64_t os0 = out.stride(0), os1 = out.stride(1), os2 = out.stride(2), os3 = out.stride(3);
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const bool channels_inner = ys1 == 1;
  at::parallel_for(0, B * OH, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> scratch;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / OH, oy = r % OH;
      // Pooled output (oy, ox) = 1/4 * sum of relu(y) over the in-bounds taps.
      auto tap_ok = [](int64_t i, int64_t n) { return i >= 0 && i < n; };
      const int64_t y0 = pool_tap(oy, 0, pp), y1 = pool_tap(oy, 1, pp);
      if (channels_inner) {
        // Tap-outer, channel-inner: each inner loop is a unit-stride pass over C that the
        // compiler vectorises; acc holds one pooled pixel's channels.
        std::vector<Acc>& acc = scratch;
        acc.resize(C);
        for (int64_t ox = 0; ox < OW; ++ox) {
          const int64_t x0 = pool_tap(ox, 0, pp), x1 = pool_tap(ox, 1, pp);
          std::fill(acc.begin(), acc.end(), Acc(0));
          for (int64_t yy : {y0, y1}) {
            for (int64_t xx : {x0, x1}) {
              if (!tap_ok(yy, H) || !tap_ok(xx, W)) continue;
              const scalar_t* tap = yp + b * ys0 + yy * ys2 + xx * ys3;
              for (int64_t c = 0; c < C; ++c) acc[c] += maybe_relu(Acc(tap[c]), relu);
            }
          }
          scalar_t* o = op + b * os0 + oy * os2 + ox * os3;
          for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(acc[c] * Acc(0.25));
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = yp + b * ys0 + c * ys1;
          scalar_t* o = op + b * os0 + c * os1 + oy * os2;
          for (int64_t ox = 0; ox < OW; ++ox) {
            const int64_t x0 = pool_tap(ox, 0, pp), x1 = pool_tap(ox, 1, pp);
            Acc acc = 0;
            for (int64_t yy : {y0, y1})
              for (int64_t xx : {x0, x1})
                if (tap_ok(yy, H) && tap_ok(xx, W)) acc += maybe_relu(Acc(plane[yy * ys2 + xx * ys3]), relu);
            o[ox * os3] = static_cast<scalar_t>(acc * Acc(0.25));
          }
        }
      }
    }
  });
}

at::Tensor conv2d_relu_pool_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t padding, bool relu,
                                bool pool, int64_t pool_padding) {
  check_conv_layer(input, weight, bias, padding, pool, pool_padding);
  // Output contract: always channels-last (the fake kernel in efficientad_ext/ops/ says the same).
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::convolution(input.contiguous(cl), weight.contiguous(cl), bias, {1, 1}, {padding, padding},
                                 {1, 1}, false, {0, 0}, 1)
                     .contiguous(cl);
  if (!pool) {
    if (relu) AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "relu_cpu", [&] { relu_in_place<scalar_t>(y); });
    return y;
  }
  const int64_t OH = pooled_size(y.size(2), pool_padding), OW = pooled_size(y.size(3), pool_padding);
  at::Tensor out = at::empty({y.size(0), y.size(1), OH, OW}, y.options(), cl);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "relu_pool_cpu", [&] {
    relu_pool<scalar_t>(y, out, relu, pool_padding);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) { m.impl("conv2d_relu_pool", &conv2d_relu_pool_cpu); }

}  // namespace efficientad::cpu
