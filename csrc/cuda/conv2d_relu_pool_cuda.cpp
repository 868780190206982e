// CUDA registration of efficientad::conv2d_relu_pool (epilogue kernels:
// conv2d_relu_pool_cuda.cu). As the CPU kernel: the convolution with its bias is at::convolution
// (cuDNN) on channels-last input and weight, its output made channels-last; then one pass of
// the fused epilogue: ReLU in place (no pooling), or ReLU + 2x2/stride-2 average pooling with
// zero padding pool_padding (count_include_pad) reading the NHWC convolution output once and
// writing the pooled NHWC output. The result is always channels-last (ops.py's fake kernel).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"
#include "common/pdn_epilogue.h"
#include "cuda/torch_glue.h"

namespace efficientad::cuda {
namespace {

at::Tensor conv2d_relu_pool_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, int64_t padding, bool relu, bool pool,
                                 int64_t pool_padding) {
  check_conv_layer(input, weight, bias, padding, pool, pool_padding);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::convolution(input.contiguous(cl), weight.contiguous(cl), bias, {1, 1}, {padding, padding},
                                 {1, 1}, false, {0, 0}, 1)
                     .contiguous(cl);
  if (!pool) {
    if (relu)
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "relu_cuda", [&] {
        C10_CUDA_CHECK(launch_relu_inplace(out_ptr<scalar_t>(y), y.numel(), current_stream()));
      });
    return y;
  }
  const int64_t B = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t OH = pooled_size(H, pool_padding), OW = pooled_size(W, pool_padding);
  at::Tensor out = at::empty({B, C, OH, OW}, y.options(), cl);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "relu_pool_cuda", [&] {
    C10_CUDA_CHECK(launch_relu_pool_nhwc(in_ptr<scalar_t>(y), out_ptr<scalar_t>(out), B, C, H, W, OH, OW, relu,
                                         pool_padding, current_stream()));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CUDA, m) { m.impl("conv2d_relu_pool", &conv2d_relu_pool_cuda); }

}  // namespace efficientad::cuda
