// CPU kernel of efficientad::conv2d_relu_pool_split: the two output-channel halves as two
// conv2d_relu_pool calls (CPU kernel, through the dispatcher) on the matching weight and bias
// rows. Each half is then computed exactly as a separate layer would be and written dense;
// oneDNN gains nothing from one wider convolution on the CPU (measured; benchmarks/RESULTS.md).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"

namespace efficientad::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> conv2d_relu_pool_split_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              int64_t padding, bool relu, bool pool,
                                                              int64_t pool_padding, int64_t split) {
  check_conv_layer(input, weight, bias, padding, pool, pool_padding);
  check_channel_split(weight, split);
  static auto layer = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("efficientad::conv2d_relu_pool", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                            int64_t, bool, bool, int64_t)>();
  const bool has_bias = bias.has_value() && bias->defined();
  auto half = [&](int64_t begin, int64_t count) {
    const std::optional<at::Tensor> b = has_bias ? std::optional<at::Tensor>(bias->narrow(0, begin, count)) : std::nullopt;
    return layer.call(input, weight.narrow(0, begin, count), b, padding, relu, pool, pool_padding);
  };
  return {half(0, split), half(split, weight.size(0) - split)};
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) { m.impl("conv2d_relu_pool_split", &conv2d_relu_pool_split_cpu); }

}  // namespace efficientad::cpu
