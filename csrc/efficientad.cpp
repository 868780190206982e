// The `efficientad` operator library: every schema lives here, in one place. Kernels register
// per device in cpu/*_cpu.cpp and cuda/*_cuda.cpp (TORCH_LIBRARY_IMPL); fake kernels and
// autograd are registered from Python (python/efficientad_ext/ops/). Importing the compiled
// module `efficientad_ext._C` runs these registrations.
#include <torch/library.h>
#include <pybind11/pybind11.h>

TORCH_LIBRARY(efficientad, m) {
  // Exact linear-interpolation quantiles (torch.quantile's definition) of all elements.
  // Returns a 1-D tensor of len(q) in the input's dtype.
  m.def("quantile(Tensor input, float[] q) -> Tensor");

  // Hard-feature loss of EfficientAD: d = (teacher - student)^2, threshold = exact
  // p-quantile of d (over the whole batch, or per sample), loss = mean of d >= threshold
  // (per sample: mean over samples of each sample's mean). Returns the loss (0-d), the
  // thresholds ([1] or [B]) and the counts of selected elements ([1] or [B], int64), all
  // but the counts in the accumulation dtype (float32, or float64 for float64 inputs).
  m.def(
      "hard_feature_loss(Tensor teacher, Tensor student, float p, bool per_sample) -> "
      "(Tensor loss, Tensor threshold, Tensor count)");
  m.def(
      "hard_feature_loss_backward(Tensor grad_loss, Tensor teacher, Tensor student, "
      "Tensor threshold, Tensor count, bool per_sample, bool teacher_grad) -> "
      "(Tensor grad_teacher, Tensor grad_student)");
  // grad_teacher is an empty [0] tensor unless teacher_grad (the teacher is usually frozen).

  // Channel-mean squared-difference maps at feature resolution: map_st [B,1,h,w] from the
  // normalised teacher and student channels [0, C); map_ae [B,1,h,w] from the autoencoder
  // and student channels [C, 2C). Accumulation dtype.
  m.def(
      "anomaly_maps_raw(Tensor teacher, Tensor teacher_mean, Tensor teacher_std, Tensor student, "
      "Tensor autoencoder) -> (Tensor map_st, Tensor map_ae)");

  // The whole of Algorithm 2 after the networks: raw maps, quantile normalisation with
  // quantiles = [q_st_a, q_st_b, q_ae_a, q_ae_b], 0.5/0.5 combination, zero padding of the
  // raw maps by `pad` feature pixels, bilinear resizing (align_corners=False) to
  // output_size, and the image score (max of the resized map; NaN if the map has NaN).
  m.def(
      "anomaly_maps(Tensor teacher, Tensor teacher_mean, Tensor teacher_std, Tensor student, "
      "Tensor autoencoder, Tensor quantiles, int[2] output_size, int pad) -> "
      "(Tensor anomaly_map, Tensor score)");

  // One PDN layer: conv2d (stride 1, zero padding) with bias, optional ReLU, optional
  // AvgPool2d(2, stride 2, padding=pool_padding); ReLU and pooling fused in one pass.
  m.def(
      "conv2d_relu_pool(Tensor input, Tensor weight, Tensor? bias, int padding, bool relu, "
      "bool pool, int pool_padding) -> Tensor");

  // conv2d_relu_pool of all of weight's output channels, returned as two dense channels-last
  // tensors: channels [0, split) and [split, C_out) (e.g. teacher and student first layers
  // concatenated: each network then reads a dense input, no channel-slice copy).
  m.def(
      "conv2d_relu_pool_split(Tensor input, Tensor weight, Tensor? bias, int padding, bool relu, "
      "bool pool, int pool_padding, int split) -> (Tensor first, Tensor second)");

  // A stride-1 convolution (+ bias, optional ReLU, optional 2x2 average pooling) by
  // Winograd's F(m x m, r x r) (CPU, float32/float64, inference): weight_tf = G w G^T as
  // [a*a, C_in, C_out], input_tf = B^T [a, a], output_tf = A^T [m, a], a = m + r - 1
  // (efficientad_ext/inference/winograd.py makes them). Channels-last output. weight: the
  // untransformed [C_out, C_in, r, r]; given, an input holding NaN or inf runs the direct
  // convolution with it (the reference's non-finite outputs), otherwise whole tiles spread.
  m.def(
      "winograd_conv2d(Tensor input, Tensor weight_tf, Tensor? bias, Tensor input_tf, Tensor output_tf, "
      "int kernel_size, int padding, bool relu, bool pool, int pool_padding, Tensor? weight=None) -> Tensor");

  // The weight gradient of that convolution (without bias, ReLU or pooling: the caller
  // back-propagates those) by back-propagation through the same F(m x m, r x r): input the
  // forward's [B, C_in, H, W], grad_output [B, C_out, OH, OW], input_tf = B^T [a, a],
  // output_tf = A^T [m, a], weight_tf_matrix = G [a, r]. Returns [C_out, C_in, r, r] (CPU,
  // float32/float64).
  m.def(
      "winograd_conv2d_weight_grad(Tensor input, Tensor grad_output, Tensor input_tf, Tensor output_tf, "
      "Tensor weight_tf_matrix, int kernel_size, int padding) -> Tensor");

  // A whole PDN for inference: the layers above applied in order.
  m.def(
      "pdn_forward(Tensor input, Tensor[] weights, Tensor?[] biases, int[] paddings, "
      "bool[] relus, bool[] pools, int[] pool_paddings) -> Tensor");
}

// Importing the module runs the registrations above; whether CUDA kernels were built is in
// _build_config.json (efficientad_ext.build_info), and the dispatcher picks the device.
PYBIND11_MODULE(_C, m) { m.doc() = "efficientad_ext compiled kernels; the ops are torch.ops.efficientad.*"; }
