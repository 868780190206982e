// One PDN layer on CUDA, shared by the conv2d_relu_pool and conv2d_relu_pool_split
// registrations (host compiler, torch headers).
//
// The convolution runs in cuDNN WITHOUT its bias on channels-last input and weight (so its
// output is dense NHWC); conv_epilogue_nhwc (conv2d_relu_pool_cuda.cu) then reads that output
// once and applies bias + ReLU + 2x2 pooling, writing the layer's outputs. at::convolution with
// a bias would add it in a pass of its own (read + write of the whole output) before our
// epilogue reads it again.
//
// cuDNN's runtime-fused convolution + bias + ReLU for un-pooled layers is chosen in Python
// (InferenceOptions.cudnn_fusion, efficientad_ext/inference/cuda_options.py), never here: an op
// computes one function of its arguments, and a switch read here would escape the CUDA-graph key.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>

#include <utility>

#include "common/pdn_epilogue.h"
#include "cuda/torch_glue.h"

namespace efficientad::cuda {

// The layer's output channels [0, split) and [split, C_out) as two dense channels-last
// tensors; when split == C_out the second is undefined. Preconditions: check_conv_layer and
// 0 < split <= C_out, on input's device (guard held by the caller).
inline std::pair<at::Tensor, at::Tensor> pdn_layer_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, int64_t padding,
                                                        bool relu, bool pool, int64_t pool_padding, int64_t split) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl), w = weight.contiguous(cl);
  const bool has_bias = bias.has_value() && bias->defined();
  const int64_t C = weight.size(0);
  at::Tensor y = at::convolution(x, w, std::nullopt, {1, 1}, {padding, padding}, {1, 1}, false, {0, 0}, 1)
                     .contiguous(cl);
  if (!pool && !relu && !has_bias && split == C) return {y, {}};
  const int64_t B = y.size(0), H = y.size(2), W = y.size(3);
  const int64_t OH = pool ? pooled_size(H, pool_padding) : H, OW = pool ? pooled_size(W, pool_padding) : W;
  // Without pooling and without a split, the epilogue runs in place on y.
  at::Tensor out0 = (!pool && split == C) ? y : at::empty({B, split, OH, OW}, y.options(), cl);
  at::Tensor out1 = split == C ? at::Tensor() : at::empty({B, C - split, OH, OW}, y.options(), cl);
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "pdn_layer_cuda", [&] {
    EpilogueArgs<device_t<scalar_t>> args{in_ptr<scalar_t>(y),
                                          has_bias ? in_ptr<scalar_t>(b) : nullptr,
                                          out_ptr<scalar_t>(out0),
                                          out1.defined() ? out_ptr<scalar_t>(out1) : nullptr,
                                          B, C, H, W, OH, OW, split, relu, pool, pool_padding};
    C10_CUDA_CHECK(launch_conv_epilogue_nhwc(args, current_stream()));
  });
  return {out0, out1};
}

}  // namespace efficientad::cuda
