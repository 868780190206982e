// CUDA registration of efficientad::anomaly_maps_raw and efficientad::anomaly_maps (kernels:
// anomaly_maps_cuda.cu). Same checks, outputs ([B, 1, h, w] maps; [B, 1, H, W] map and [B]
// score; contiguous, accumulation dtype) and NaN semantics as the CPU kernels. Features are
// passed with their strides (never copied); teacher_mean / teacher_std / quantiles are
// converted to contiguous float64 on the device (no-ops when they already are): no host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "cuda/torch_glue.h"

namespace efficientad::cuda {
namespace {

template <typename scalar_t>
FeatureArgs<device_t<scalar_t>> feature_args(const at::Tensor& t, const at::Tensor& s, const at::Tensor& a) {
  FeatureArgs<device_t<scalar_t>> f{in_ptr<scalar_t>(t), in_ptr<scalar_t>(s), in_ptr<scalar_t>(a),
                                    t.size(0), t.size(1), t.size(2), t.size(3), {}, {}, {}};
  std::copy_n(t.strides().begin(), 4, f.teacher_strides);
  std::copy_n(s.strides().begin(), 4, f.student_strides);
  std::copy_n(a.strides().begin(), 4, f.autoencoder_strides);
  return f;
}

at::Tensor on_device_double(const at::Tensor& v, const at::Tensor& like) {
  return v.to(like.device(), at::kDouble).contiguous();
}

std::tuple<at::Tensor, at::Tensor> anomaly_maps_raw_cuda(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                                                         const at::Tensor& teacher_std, const at::Tensor& student,
                                                         const at::Tensor& autoencoder) {
  check_feature_maps(teacher, teacher_mean, teacher_std, student, autoencoder);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1), H = teacher.size(2), W = teacher.size(3);
  const auto opts = teacher.options().dtype(accumulation_type(teacher.scalar_type()));
  at::Tensor map_st = at::empty({B, 1, H, W}, opts), map_ae = at::empty({B, 1, H, W}, opts);
  at::Tensor stats = at::empty({2 * C}, opts);
  const at::Tensor mean = on_device_double(teacher_mean, teacher), stdev = on_device_double(teacher_std, teacher);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "anomaly_maps_raw_cuda", [&] {
    using Acc = acc_t<device_t<scalar_t>>;
    C10_CUDA_CHECK(launch_anomaly_maps_raw(feature_args<scalar_t>(teacher, student, autoencoder),
                                           mean.const_data_ptr<double>(), stdev.const_data_ptr<double>(),
                                           stats.mutable_data_ptr<Acc>(), map_st.mutable_data_ptr<Acc>(),
                                           map_ae.mutable_data_ptr<Acc>(), current_stream()));
  });
  return {map_st, map_ae};
}

std::tuple<at::Tensor, at::Tensor> anomaly_maps_cuda(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                                                     const at::Tensor& teacher_std, const at::Tensor& student,
                                                     const at::Tensor& autoencoder, const at::Tensor& quantiles,
                                                     at::IntArrayRef output_size, int64_t pad) {
  check_anomaly_maps_args(teacher, teacher_mean, teacher_std, student, autoencoder, quantiles, output_size, pad);
  const c10::cuda::CUDAGuard guard(teacher.device());
  const int64_t B = teacher.size(0), C = teacher.size(1), h = teacher.size(2), w = teacher.size(3);
  const int64_t OH = output_size[0], OW = output_size[1];
  const auto opts = teacher.options().dtype(accumulation_type(teacher.scalar_type()));
  at::Tensor out = at::empty({B, 1, OH, OW}, opts);
  at::Tensor score = at::empty({B}, opts);
  at::Tensor stats = at::empty({2 * C}, opts), combined = at::empty({B * h * w}, opts);
  at::Tensor keys = at::empty({B}, opts.dtype(at::kLong));
  const at::Tensor mean = on_device_double(teacher_mean, teacher), stdev = on_device_double(teacher_std, teacher);
  const at::Tensor q = on_device_double(quantiles, teacher);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "anomaly_maps_cuda", [&] {
    using Acc = acc_t<device_t<scalar_t>>;
    C10_CUDA_CHECK(launch_anomaly_maps(
        feature_args<scalar_t>(teacher, student, autoencoder), mean.const_data_ptr<double>(),
        stdev.const_data_ptr<double>(), q.const_data_ptr<double>(), OH, OW, pad, stats.mutable_data_ptr<Acc>(),
        combined.mutable_data_ptr<Acc>(), reinterpret_cast<unsigned long long*>(keys.mutable_data_ptr<int64_t>()),
        out.mutable_data_ptr<Acc>(), score.mutable_data_ptr<Acc>(), current_stream()));
  });
  return {out, score};
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CUDA, m) {
  m.impl("anomaly_maps_raw", &anomaly_maps_raw_cuda);
  m.impl("anomaly_maps", &anomaly_maps_cuda);
}

}  // namespace efficientad::cuda
