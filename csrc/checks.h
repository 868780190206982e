// Preconditions shared by the CPU and CUDA registrations. The Python wrappers in
// efficientad_ext/ops.py check the same things first with friendlier exception types; these
// keep direct torch.ops.efficientad.* calls from ever reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>

namespace efficientad {

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
              name, " must be a float16, bfloat16, float32 or float64 tensor, got ", s);
}

inline void check_nonempty(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() > 0, name, " must not be empty, got shape ", t.sizes());
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* name) {
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dimensions, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_probability(double p, const char* name) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, name, " must be in [0, 1], got ", p);
}

inline void check_quantile_args(const at::Tensor& input, at::ArrayRef<double> q) {
  check_floating(input, "input");
  check_nonempty(input, "input");
  TORCH_CHECK(!q.empty(), "q must hold at least one quantile");
  for (double v : q) check_probability(v, "q");
}

// Accumulation dtype: float for half/bfloat16/float, double for double.
inline at::ScalarType accumulation_type(at::ScalarType s) {
  return s == at::kDouble ? at::kDouble : at::kFloat;
}

// [B, C, H, W] feature checks of the anomaly-map ops (teacher C, student 2C, autoencoder C).
inline void check_feature_maps(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                               const at::Tensor& teacher_std, const at::Tensor& student,
                               const at::Tensor& autoencoder) {
  check_rank(teacher, 4, "teacher");
  check_rank(student, 4, "student");
  check_rank(autoencoder, 4, "autoencoder");
  check_floating(teacher, "teacher");
  check_nonempty(teacher, "teacher");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type() &&
                  autoencoder.scalar_type() == teacher.scalar_type(),
              "teacher, student and autoencoder must share one dtype, got ",
              teacher.scalar_type(), ", ", student.scalar_type(), ", ", autoencoder.scalar_type());
  const auto B = teacher.size(0), C = teacher.size(1), H = teacher.size(2), W = teacher.size(3);
  TORCH_CHECK(student.size(0) == B && student.size(1) == 2 * C && student.size(2) == H &&
                  student.size(3) == W,
              "student must have shape [", B, ", ", 2 * C, ", ", H, ", ", W,
              "] (twice the teacher's channels), got ", student.sizes());
  TORCH_CHECK(autoencoder.sizes() == teacher.sizes(), "autoencoder must have the teacher's shape ",
              teacher.sizes(), ", got ", autoencoder.sizes());
  TORCH_CHECK(teacher_mean.numel() == C && teacher_std.numel() == C,
              "teacher_mean and teacher_std must have ", C, " elements (one per teacher channel), got ",
              teacher_mean.numel(), " and ", teacher_std.numel());
  check_floating(teacher_mean, "teacher_mean");
  check_floating(teacher_std, "teacher_std");
  for (const auto* t : {&teacher_mean, &teacher_std, &student, &autoencoder})
    check_same_device(teacher, "teacher", *t, "every input");
}


// teacher / student of the hard-feature loss: same [B, C, H, W] shape and dtype.
inline void check_hard_loss_inputs(const at::Tensor& teacher, const at::Tensor& student) {
  check_rank(teacher, 4, "teacher");
  check_rank(student, 4, "student");
  check_floating(teacher, "teacher");
  check_nonempty(teacher, "teacher");
  TORCH_CHECK(student.sizes() == teacher.sizes(), "student must have the teacher's shape ",
              teacher.sizes(), " (pass the first C channels of the student output), got ",
              student.sizes());
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "student must have the teacher's dtype ",
              teacher.scalar_type(), ", got ", student.scalar_type());
  check_same_device(teacher, "teacher", student, "student");
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


inline void check_conv_layer(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t padding, bool pool,
                             int64_t pool_padding) {
  check_rank(input, 4, "input");
  check_rank(weight, 4, "weight");
  check_floating(input, "input");
  check_nonempty(input, "input");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "weight must have the input's dtype ",
              input.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK(weight.size(1) == input.size(1), "weight expects ", weight.size(1),
              " input channels, but input has ", input.size(1), " (shape ", input.sizes(), ")");
  check_same_device(input, "input", weight, "weight");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must have shape [",
                weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "bias must have the input's dtype");
    check_same_device(input, "input", *bias, "bias");
  }
  TORCH_CHECK(padding >= 0, "padding must be >= 0, got ", padding);
  const int64_t oh = input.size(2) + 2 * padding - weight.size(2) + 1;
  const int64_t ow = input.size(3) + 2 * padding - weight.size(3) + 1;
  TORCH_CHECK(oh > 0 && ow > 0, "input of spatial size ", input.size(2), "x", input.size(3),
              " is too small for a ", weight.size(2), "x", weight.size(3), " kernel with padding ", padding);
  if (pool) {
    TORCH_CHECK(pool_padding == 0 || pool_padding == 1, "pool_padding must be 0 or 1, got ", pool_padding);
    TORCH_CHECK(oh + 2 * pool_padding >= 2 && ow + 2 * pool_padding >= 2,
                "convolution output ", oh, "x", ow, " is too small for 2x2 pooling");
  }
}


// The output-channel split of conv2d_relu_pool_split: both halves non-empty.
inline void check_channel_split(const at::Tensor& weight, int64_t split) {
  TORCH_CHECK(split > 0 && split < weight.size(0), "split must be in [1, ", weight.size(0) - 1,
              "] (both output halves non-empty; weight has ", weight.size(0), " output channels), got ", split);
}


// Everything efficientad::anomaly_maps takes besides the features themselves.
inline void check_anomaly_maps_args(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                                    const at::Tensor& teacher_std, const at::Tensor& student,
                                    const at::Tensor& autoencoder, const at::Tensor& quantiles,
                                    at::IntArrayRef output_size, int64_t pad) {
  check_feature_maps(teacher, teacher_mean, teacher_std, student, autoencoder);
  check_floating(quantiles, "quantiles");
  TORCH_CHECK(quantiles.numel() == 4, "quantiles must hold 4 values [q_st_a, q_st_b, q_ae_a, q_ae_b], got ",
              quantiles.numel());
  check_same_device(teacher, "teacher", quantiles, "quantiles");
  TORCH_CHECK(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0,
              "output_size must be two positive integers [H, W], got ", output_size);
  TORCH_CHECK(pad >= 0, "pad must be >= 0, got ", pad);
}

}  // namespace efficientad
