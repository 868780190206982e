// CUDA registration of efficientad::conv2d_relu_pool_split: one cuDNN convolution over all
// output channels (e.g. teacher and student first layers concatenated), then one epilogue pass
// that writes channels [0, split) and [split, C_out) as two dense channels-last tensors, so
// the two networks' next layers read dense inputs and no channel-slice copy is made.
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/pdn_layer_cuda.h"

namespace efficientad::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> conv2d_relu_pool_split_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               int64_t padding, bool relu, bool pool,
                                                               int64_t pool_padding, int64_t split) {
  check_conv_layer(input, weight, bias, padding, pool, pool_padding);
  check_channel_split(weight, split);
  const c10::cuda::CUDAGuard guard(input.device());
  auto [first, second] = pdn_layer_cuda(input, weight, bias, padding, relu, pool, pool_padding, split);
  return {first, second};
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CUDA, m) { m.impl("conv2d_relu_pool_split", &conv2d_relu_pool_split_cuda); }

}  // namespace efficientad::cuda
