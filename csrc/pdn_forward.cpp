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
  TORCH_CHECK(n > 0, "weights must hold at least one layer");
  TORCH_CHECK(biases.size() == n && paddings.size() == n && relus.size() == n && pools.size() == n &&
                  pool_paddings.size() == n,
              "weights, biases, paddings, relus, pools and pool_paddings must all have one entry per layer (",
              n, "), got ", biases.size(), ", ", paddings.size(), ", ", relus.size(), ", ", pools.size(),
              ", ", pool_paddings.size());
  check_rank(input, 4, "input");
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
