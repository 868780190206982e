// CUDA registration of efficientad::conv2d_relu_pool: cuDNN convolution without bias, then one
// epilogue pass for bias + ReLU + pooling (cuda/pdn_layer_cuda.h). The result is always
// channels-last (the fake kernel in efficientad_ext/ops/ says the same).
#include <torch/library.h>

#include "checks.h"
#include "cuda/pdn_layer_cuda.h"

namespace efficientad::cuda {
namespace {

at::Tensor conv2d_relu_pool_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, int64_t padding, bool relu, bool pool,
                                 int64_t pool_padding) {
  check_conv_layer(input, weight, bias, padding, pool, pool_padding);
  const c10::cuda::CUDAGuard guard(input.device());
  return pdn_layer_cuda(input, weight, bias, padding, relu, pool, pool_padding, weight.size(0)).first;
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CUDA, m) { m.impl("conv2d_relu_pool", &conv2d_relu_pool_cuda); }

}  // namespace efficientad::cuda
