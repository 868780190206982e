// Host-callable launchers of the CUDA kernels: the only interface between the registration
// files (*_cuda.cpp, host compiler, torch headers) and the kernels (*_cuda.cu, nvcc, no torch
// headers). Everything is plain pointers, sizes, strides (in elements) and a cudaStream_t.
//
// Element types T are __half, __nv_bfloat16, float and double (each launcher is explicitly
// instantiated for those four); acc_t<T> is the accumulation type: float, or double for double.
// Every launcher only enqueues work on `stream` (kernels, cudaMemsetAsync): no host
// synchronisation and no host<->device copies, so each call can be captured in a CUDA graph.
// The launch sequence depends only on sizes, dtypes and host arguments, never on data.
// Workspaces are allocated by the caller (the caching allocator) with the *_workspace_bytes
// functions; they need no initialisation. Launchers return the first CUDA error (launch
// configuration / enqueue), or cudaSuccess.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/accumulation.h"

namespace efficientad::cuda {

// acc_t<T>: efficientad::acc_t (common/accumulation.h), visible here unqualified.

// Expands INSTANTIATE(T) for the four element types every launcher is compiled for; each *.cu
// file instantiates its launchers with it.
#define EFFICIENTAD_FOR_ELEMENT_TYPES(INSTANTIATE) \
  INSTANTIATE(__half)                              \
  INSTANTIATE(__nv_bfloat16)                       \
  INSTANTIATE(float)                               \
  INSTANTIATE(double)

// ---- quantile: q[0..nq) of the n elements of the dense array x, written to out[0..nq).
size_t quantile_workspace_bytes(int64_t nq);
template <typename T>
cudaError_t launch_quantile(const T* x, int64_t n, const double* q, int64_t nq, T* out, void* workspace,
                            cudaStream_t stream);

// ---- hard-feature loss over `groups` contiguous segments of `group_size` elements each.
size_t hard_loss_workspace_bytes(int64_t groups, int64_t group_size);
template <typename T>
cudaError_t launch_hard_feature_loss(const T* teacher, const T* student, int64_t groups, int64_t group_size,
                                     double p, acc_t<T>* loss, acc_t<T>* threshold, int64_t* count,
                                     void* workspace, cudaStream_t stream);
// grad_loss: one double on the device. grad_teacher may be null (not requested).
template <typename T>
cudaError_t launch_hard_feature_loss_backward(const T* teacher, const T* student, int64_t groups,
                                              int64_t group_size, const double* grad_loss,
                                              const acc_t<T>* threshold, const int64_t* count,
                                              T* grad_teacher, T* grad_student, cudaStream_t stream);

// ---- anomaly maps. Features are [B, C, H, W] (student [B, 2C, H, W]) with arbitrary strides.
template <typename T>
struct FeatureArgs {
  const T* teacher;
  const T* student;
  const T* autoencoder;
  int64_t B, C, H, W;
  int64_t teacher_strides[4], student_strides[4], autoencoder_strides[4];
};
// mean, std_dev: C doubles on the device. stats: workspace of 2C acc_t<T>. Maps: [B, H, W] dense.
template <typename T>
cudaError_t launch_anomaly_maps_raw(const FeatureArgs<T>& f, const double* mean, const double* std_dev,
                                    acc_t<T>* stats, acc_t<T>* map_st, acc_t<T>* map_ae, cudaStream_t stream);
// quantiles: 4 doubles on the device. combined: workspace of B*H*W acc_t<T>; keys: workspace of
// B uint64. out: [B, OH, OW] dense; score: [B].
template <typename T>
cudaError_t launch_anomaly_maps(const FeatureArgs<T>& f, const double* mean, const double* std_dev,
                                const double* quantiles, int64_t out_h, int64_t out_w, int64_t pad,
                                acc_t<T>* stats, acc_t<T>* combined, unsigned long long* keys,
                                acc_t<T>* out, acc_t<T>* score, cudaStream_t stream);

// ---- PDN epilogue on a dense NHWC (channels-last) convolution output y [B, H, W, C] (memory
// order), computed without bias: out = pool?(relu?(y + bias)), written as two dense NHWC
// tensors out0 [B, OH, OW, split] (channels [0, split)) and out1 [B, OH, OW, C - split]
// (channels [split, C); null when split == C). Without pooling OH = H, OW = W and out0 may
// be y (in place). bias: C values or null.
template <typename T>
struct EpilogueArgs {
  const T* y;
  const T* bias;
  T* out0;
  T* out1;
  int64_t B, C, H, W, out_h, out_w, split;
  bool relu, pool;
  int64_t pool_padding;
};
template <typename T>
cudaError_t launch_conv_epilogue_nhwc(const EpilogueArgs<T>& args, cudaStream_t stream);

}  // namespace efficientad::cuda
