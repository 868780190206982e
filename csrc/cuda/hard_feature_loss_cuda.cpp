// CUDA registration of efficientad::hard_feature_loss and its backward (kernels:
// hard_feature_loss_cuda.cu). Same checks, layout (hard_loss_layout), outputs (loss 0-d and
// threshold [groups] in the accumulation dtype, count [groups] int64; grad_teacher an empty [0]
// tensor unless requested) and NaN semantics as the CPU kernels. grad_loss, threshold and count
// stay on the device (converted there if needed): no .item(), no host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/torch_glue.h"

namespace efficientad::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_feature_loss_cuda(const at::Tensor& teacher_in,
                                                                      const at::Tensor& student_in, double p,
                                                                      bool per_sample) {
  check_hard_loss_inputs(teacher_in, student_in);
  check_probability(p, "p");
  const c10::cuda::CUDAGuard guard(teacher_in.device());
  const auto [teacher, student] = hard_loss_layout(teacher_in, student_in);
  const int64_t groups = per_sample ? teacher.size(0) : 1;
  const int64_t group_size = teacher.numel() / groups;
  const auto acc_opts = teacher.options().dtype(accumulation_type(teacher.scalar_type()));
  at::Tensor loss = at::empty({}, acc_opts);
  at::Tensor threshold = at::empty({groups}, acc_opts);
  at::Tensor count = at::empty({groups}, teacher.options().dtype(at::kLong));
  at::Tensor workspace =
      at::empty({int64_t(hard_loss_workspace_bytes(groups, group_size))}, teacher.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "hard_feature_loss_cuda", [&] {
    using Acc = acc_t<device_t<scalar_t>>;
    C10_CUDA_CHECK(launch_hard_feature_loss(in_ptr<scalar_t>(teacher), in_ptr<scalar_t>(student), groups,
                                            group_size, p, loss.mutable_data_ptr<Acc>(),
                                            threshold.mutable_data_ptr<Acc>(), count.mutable_data_ptr<int64_t>(),
                                            workspace.mutable_data_ptr(), current_stream()));
  });
  return {loss, threshold, count};
}

std::tuple<at::Tensor, at::Tensor> hard_feature_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& teacher_in, const at::Tensor& student_in,
    const at::Tensor& threshold, const at::Tensor& count, bool per_sample, bool teacher_grad) {
  check_hard_loss_inputs(teacher_in, student_in);
  const c10::cuda::CUDAGuard guard(teacher_in.device());
  const auto [teacher, student] = hard_loss_layout(teacher_in, student_in);
  const int64_t groups = per_sample ? teacher.size(0) : 1;
  const int64_t group_size = teacher.numel() / groups;
  check_hard_loss_backward_args(teacher, grad_loss, threshold, count, groups);
  const auto acc_type = accumulation_type(teacher.scalar_type());
  // Device-side conversions (no-ops when already right): never a host round trip.
  const at::Tensor grad = grad_loss.to(teacher.device(), at::kDouble).contiguous();
  const at::Tensor thr = threshold.to(teacher.device(), acc_type).contiguous();
  const at::Tensor cnt = count.to(teacher.device(), at::kLong).contiguous();
  at::Tensor grad_student = at::empty_like(student);
  at::Tensor grad_teacher = teacher_grad ? at::empty_like(teacher) : at::empty({0}, teacher.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "hard_feature_loss_backward_cuda", [&] {
    using Acc = acc_t<device_t<scalar_t>>;
    C10_CUDA_CHECK(launch_hard_feature_loss_backward(
        in_ptr<scalar_t>(teacher), in_ptr<scalar_t>(student), groups, group_size, grad.const_data_ptr<double>(),
        thr.const_data_ptr<Acc>(), cnt.const_data_ptr<int64_t>(),
        teacher_grad ? out_ptr<scalar_t>(grad_teacher) : nullptr, out_ptr<scalar_t>(grad_student),
        current_stream()));
  });
  return {grad_teacher, grad_student};
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CUDA, m) {
  m.impl("hard_feature_loss", &hard_feature_loss_cuda);
  m.impl("hard_feature_loss_backward", &hard_feature_loss_backward_cuda);
}

}  // namespace efficientad::cuda
