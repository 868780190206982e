// Preconditions of every efficientad op, written once, here, for both devices. They raise
// through TORCH_CHECK_VALUE / TORCH_CHECK_TYPE, which reach Python as ValueError / TypeError,
// so a direct torch.ops.efficientad.* call fails exactly as the typed wrappers in python/efficientad_ext/ops/ do
// (those only turn Python arguments into the schema's types). Every message names the
// argument and what was expected. The fake kernels in python/efficientad_ext/ops/ check the shape relations they
// need to compute output shapes with torch._check_value / torch._check_type.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "common/accumulation.h"
#include "common/pdn_epilogue.h"

namespace efficientad {

// Far above any real use (a PDN pads by at most 3), small enough that a padded size cannot
// overflow or ask for an absurd allocation.
constexpr int64_t kMaxPadding = int64_t(1) << 16;

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
                   name, " must be float16, bfloat16, float32 or float64, got ", s);
}

inline void check_nonempty(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.numel() > 0, name, " must not be empty, got shape ", t.sizes());
}

// `layout` names the dimensions, e.g. "[B, C, H, W]".
inline void check_rank(const at::Tensor& t, int64_t rank, const char* name, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, name, " must have ", rank, " dimensions ", layout, ", got shape ",
                    t.sizes());
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on ", ref_name, "'s device ", ref.device(),
                    ", got ", t.device());
}

inline void check_same_dtype(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                             const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have ", ref_name, "'s dtype ",
                   ref.scalar_type(), ", got ", t.scalar_type());
}

inline void check_probability(double p, const char* name) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, name, " must be in [0, 1], got ", p);  // NaN fails too
}

inline void check_quantile_args(const at::Tensor& input, at::ArrayRef<double> q) {
  check_floating(input, "input");
  check_nonempty(input, "input");
  TORCH_CHECK_VALUE(!q.empty(), "q must hold at least one quantile, got an empty list");
  for (double v : q) check_probability(v, "q");
}

// The dtype of acc_t (common/accumulation.h) for the element dtype s: the dtype of the ops'
// accumulated outputs (maps, scores, losses, thresholds). s is one of the four floating dtypes
// (the callers have checked it).
inline at::ScalarType accumulation_type(at::ScalarType s) {
  at::ScalarType acc = at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s, "accumulation_type",
                                  [&] { acc = c10::CppTypeToScalarType<acc_t<scalar_t>>::value; });
  return acc;
}

// [B, C, h, w] features of the anomaly-map ops (teacher C, student 2C, autoencoder C).
inline void check_feature_maps(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                               const at::Tensor& teacher_std, const at::Tensor& student,
                               const at::Tensor& autoencoder) {
  check_floating(teacher, "teacher");
  check_floating(student, "student");
  check_floating(autoencoder, "autoencoder");
  check_rank(teacher, 4, "teacher", "[B, C, h, w]");
  check_rank(student, 4, "student", "[B, C, h, w]");
  check_rank(autoencoder, 4, "autoencoder", "[B, C, h, w]");
  check_nonempty(teacher, "teacher");
  check_same_dtype(teacher, "teacher", student, "student");
  check_same_dtype(teacher, "teacher", autoencoder, "autoencoder");
  const auto B = teacher.size(0), C = teacher.size(1), H = teacher.size(2), W = teacher.size(3);
  TORCH_CHECK_VALUE(student.size(0) == B && student.size(1) == 2 * C && student.size(2) == H &&
                        student.size(3) == W,
                    "student must have shape [", B, ", ", 2 * C, ", ", H, ", ", W, "] (twice the teacher's ", C,
                    " channels), got ", student.sizes());
  TORCH_CHECK_VALUE(autoencoder.sizes() == teacher.sizes(), "autoencoder must have the teacher's shape ",
                    teacher.sizes(), ", got ", autoencoder.sizes());
  check_floating(teacher_mean, "teacher_mean");
  check_floating(teacher_std, "teacher_std");
  TORCH_CHECK_VALUE(teacher_mean.numel() == C, "teacher_mean must have ", C,
                    " elements (one per teacher channel), got shape ", teacher_mean.sizes());
  TORCH_CHECK_VALUE(teacher_std.numel() == C, "teacher_std must have ", C,
                    " elements (one per teacher channel), got shape ", teacher_std.sizes());
  check_same_device(teacher, "teacher", student, "student");
  check_same_device(teacher, "teacher", autoencoder, "autoencoder");
  check_same_device(teacher, "teacher", teacher_mean, "teacher_mean");
  check_same_device(teacher, "teacher", teacher_std, "teacher_std");
}

// teacher / student of the hard-feature loss: same [B, C, H, W] shape, dtype and device.
inline void check_hard_loss_inputs(const at::Tensor& teacher, const at::Tensor& student) {
  check_floating(teacher, "teacher");
  check_floating(student, "student");
  check_rank(teacher, 4, "teacher", "[B, C, H, W]");
  check_rank(student, 4, "student", "[B, C, H, W]");
  check_nonempty(teacher, "teacher");
  TORCH_CHECK_VALUE(student.sizes() == teacher.sizes(), "student must have the teacher's shape ",
                    teacher.sizes(), " (pass the first C channels of the student output), got ",
                    student.sizes());
  check_same_dtype(teacher, "teacher", student, "student");
  check_same_device(teacher, "teacher", student, "student");
}

// The backward's saved tensors as hard_feature_loss returned them, and the upstream gradient of
// its scalar loss: one element each of threshold (floating) and count (int64) per group,
// grad_loss one floating element, all on the teacher's device.
inline void check_hard_loss_backward_args(const at::Tensor& teacher, const at::Tensor& grad_loss,
                                          const at::Tensor& threshold, const at::Tensor& count, int64_t groups) {
  check_floating(grad_loss, "grad_loss");
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must hold one element (the gradient of the scalar loss), got shape ",
                    grad_loss.sizes());
  check_floating(threshold, "threshold");
  TORCH_CHECK_TYPE(count.scalar_type() == at::kLong, "count must be int64, as returned by hard_feature_loss, got ",
                   count.scalar_type());
  TORCH_CHECK_VALUE(threshold.numel() == groups && count.numel() == groups, "threshold and count must have ", groups,
                    " elements (one per ", groups == 1 ? "batch" : "sample", "), as returned by hard_feature_loss; got ",
                    threshold.numel(), " and ", count.numel());
  check_same_device(teacher, "teacher", grad_loss, "grad_loss");
  check_same_device(teacher, "teacher", threshold, "threshold");
  check_same_device(teacher, "teacher", count, "count");
}

// The layout both hard-loss tensors are read in: identical strides, dense, and each sample a
// contiguous block of C*H*W elements (true for contiguous and channels-last tensors). Anything
// else (e.g. a channel slice of the 2C-channel student output) is made contiguous once.
inline std::pair<at::Tensor, at::Tensor> hard_loss_layout(const at::Tensor& teacher,
                                                          const at::Tensor& student) {
  const int64_t per_sample = teacher.numel() / teacher.size(0);
  auto usable = [&](const at::Tensor& t) {
    return t.is_non_overlapping_and_dense() && (t.size(0) == 1 || t.stride(0) == per_sample);
  };
  if (usable(teacher) && usable(student) && teacher.strides() == student.strides())
    return {teacher, student};
  return {teacher.contiguous(), student.contiguous()};
}

// Integer arguments and output size of one stride-1 convolution (kernel kh x kw, zero padding
// `padding`), optionally followed by 2x2 average pooling: at least one output pixel.
inline void check_conv_geometry(int64_t in_h, int64_t in_w, int64_t kh, int64_t kw, int64_t padding,
                                bool pool, int64_t pool_padding) {
  TORCH_CHECK_VALUE(padding >= 0 && padding <= kMaxPadding, "padding must be an integer in [0, ", kMaxPadding,
                    "], got ", padding);
  TORCH_CHECK_VALUE(kh >= 1 && kw >= 1, "the kernel must be at least 1x1, got ", kh, "x", kw);
  if (pool)
    TORCH_CHECK_VALUE(pool_padding == 0 || pool_padding == 1, "pool_padding must be 0 or 1, got ", pool_padding);
  const int64_t oh = conv_output_size(in_h, kh, padding), ow = conv_output_size(in_w, kw, padding);
  TORCH_CHECK_VALUE(oh > 0 && ow > 0 && (!pool || std::min(oh, ow) + 2 * pool_padding >= 2),
                    "input of spatial size ", in_h, "x", in_w, " is too small for a ", kh, "x", kw,
                    " kernel with padding ", padding, pool ? " followed by 2x2 pooling" : "");
}

inline void check_conv_layer(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t padding, bool pool,
                             int64_t pool_padding) {
  check_floating(input, "input");
  check_rank(input, 4, "input", "[B, C, H, W]");
  check_nonempty(input, "input");
  check_floating(weight, "weight");
  check_rank(weight, 4, "weight", "[C_out, C_in, kH, kW]");
  check_same_dtype(input, "input", weight, "weight");
  check_same_device(input, "input", weight, "weight");
  TORCH_CHECK_VALUE(weight.size(1) == input.size(1), "input must have ", weight.size(1),
                    " channels (weight's C_in), got shape ", input.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(input, "input", *bias, "bias");
    check_same_device(input, "input", *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must have shape [",
                      weight.size(0), "], got ", bias->sizes());
  }
  check_conv_geometry(input.size(2), input.size(3), weight.size(2), weight.size(3), padding, pool, pool_padding);
}

// The output-channel split of conv2d_relu_pool_split: both halves non-empty.
inline void check_channel_split(const at::Tensor& weight, int64_t split) {
  TORCH_CHECK_VALUE(split > 0 && split < weight.size(0), "split must be in [1, ", weight.size(0) - 1,
                    "] (both halves non-empty; weight has ", weight.size(0), " output channels), got ", split);
}

// Everything efficientad::anomaly_maps takes besides the features themselves.
inline void check_anomaly_maps_args(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                                    const at::Tensor& teacher_std, const at::Tensor& student,
                                    const at::Tensor& autoencoder, const at::Tensor& quantiles,
                                    at::IntArrayRef output_size, int64_t pad) {
  check_feature_maps(teacher, teacher_mean, teacher_std, student, autoencoder);
  check_floating(quantiles, "quantiles");
  TORCH_CHECK_VALUE(quantiles.numel() == 4, "quantiles must hold 4 values [q_st_a, q_st_b, q_ae_a, q_ae_b], got shape ",
                    quantiles.sizes());
  check_same_device(teacher, "teacher", quantiles, "quantiles");
  TORCH_CHECK_VALUE(pad >= 0 && pad <= kMaxPadding, "pad must be an integer in [0, ", kMaxPadding, "], got ", pad);
  TORCH_CHECK_VALUE(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0,
                    "output_size must be two positive integers (H, W), got ", output_size);
}

}  // namespace efficientad
