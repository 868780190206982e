// efficientad::pdn_forward for every device: the PDN's layers applied in order through the
// dispatcher (so each layer runs the CPU or CUDA conv2d_relu_pool kernel of the input's
// device). The input is made channels-last once: oneDNN and cuDNN both run their fastest
// convolutions on NHWC, and every layer then keeps that layout. Inference only (no autograd).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.h"

namespace efficientad {
namespace {

at::Tensor pdn_forward(const at::Tensor& input, at::TensorList weights,
                       const c10::List<std::optional<at::Tensor>>& biases, at::IntArrayRef paddings,
                       const c10::List<bool>& relus, const c10::List<bool>& pools, at::IntArrayRef pool_paddings) {
  const size_t n = weights.size();
  TORCH_CHECK_VALUE(n > 0, "weights must hold at least one layer");
  TORCH_CHECK_VALUE(biases.size() == n && paddings.size() == n && relus.size() == n && pools.size() == n &&
                        pool_paddings.size() == n,
                    "weights, biases, paddings, relus, pools and pool_paddings must all have one entry per layer (",
                    n, "), got ", biases.size(), ", ", paddings.size(), ", ", relus.size(), ", ", pools.size(), ", ",
                    pool_paddings.size());
  check_floating(input, "input");
  check_rank(input, 4, "input", "[B, C, H, W]");
  check_nonempty(input, "input");
  check_rank(weights[0], 4, "weight", "[C_out, C_in, kH, kW]");
  check_same_dtype(weights[0], "the first layer's weight", input, "input");
  check_same_device(weights[0], "the first layer's weight", input, "input");
  TORCH_CHECK_VALUE(input.size(1) == weights[0].size(1), "input must have ", weights[0].size(1),
                    " channels (the first layer's C_in), got shape ", input.sizes());
  // The whole stack's geometry before the first layer runs: the image size is what a caller
  // chooses, so the error names it rather than an inner layer's input.
  int64_t h = input.size(2), w = input.size(3);
  for (size_t i = 0; i < n; ++i) {
    check_rank(weights[i], 4, "weight", "[C_out, C_in, kH, kW]");
    const int64_t kh = weights[i].size(2), kw = weights[i].size(3), pad = paddings[i], pool_pad = pool_paddings[i];
    const bool pool = pools.get(i);
    const int64_t oh = conv_output_size(h, kh, pad), ow = conv_output_size(w, kw, pad);
    TORCH_CHECK_VALUE(oh > 0 && ow > 0 && (!pool || std::min(oh, ow) + 2 * pool_pad >= 2), "input image size ",
                      input.size(2), "x", input.size(3), " is too small for these layers (layer ", i, " gets ", h, "x",
                      w, ", its ", kh, "x", kw, " kernel with padding ", pad, pool ? " and 2x2 pooling" : "",
                      " leaves no output)");
    h = pool ? pooled_size(oh, pool_pad) : oh;
    w = pool ? pooled_size(ow, pool_pad) : ow;
  }
  static auto layer = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("efficientad::conv2d_relu_pool", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                            int64_t, bool, bool, int64_t)>();
  at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  for (size_t i = 0; i < n; ++i) {
    const std::optional<at::Tensor> bias = biases.get(i);
    x = layer.call(x, weights[i], bias, paddings[i], relus.get(i), pools.get(i), pool_paddings[i]);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CompositeExplicitAutograd, m) { m.impl("pdn_forward", &pdn_forward); }

}  // namespace efficientad
