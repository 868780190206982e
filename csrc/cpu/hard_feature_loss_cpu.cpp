// CPU kernels of efficientad::hard_feature_loss and its backward.
//
// d = (teacher - student)^2 is recomputed on the fly in every pass (two radix-selection
// passes, one sum pass; one pass in backward) and never stored. Accumulation: d and the
// threshold in float (double for double inputs), the sum of selected d in double.
// Groups: one group (the whole batch) or one per sample; a group is a contiguous block of
// memory in the layout chosen by hard_loss_layout (checks.h).
// NaN in d makes that group's threshold NaN, selects nothing, and the loss NaN; its
// gradient is zero.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "checks.h"
#include "common/accumulation.h"
#include "common/anomaly_math.h"
#include "cpu/radix_select_cpu.h"

namespace efficientad::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_feature_loss_cpu(const at::Tensor& teacher_in,
                                                                     const at::Tensor& student_in,
                                                                     double p, bool per_sample) {
  check_hard_loss_inputs(teacher_in, student_in);
  check_probability(p, "p");
  const auto [teacher, student] = hard_loss_layout(teacher_in, student_in);
  const int64_t B = teacher.size(0);
  const int64_t groups = per_sample ? B : 1;
  const int64_t group_size = teacher.numel() / groups;
  const auto acc_type = accumulation_type(teacher.scalar_type());
  at::Tensor threshold = at::empty({groups}, teacher.options().dtype(acc_type));
  at::Tensor count = at::empty({groups}, teacher.options().dtype(at::kLong));
  at::Tensor loss = at::empty({}, teacher.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "hard_feature_loss_cpu", [&] {
    using Acc = acc_t<scalar_t>;
    const scalar_t* t = teacher.const_data_ptr<scalar_t>();
    const scalar_t* s = student.const_data_ptr<scalar_t>();
    Acc* thr = threshold.mutable_data_ptr<Acc>();
    int64_t* cnt = count.mutable_data_ptr<int64_t>();
    double loss_sum = 0.0;
    const int nthreads = at::get_num_threads();
    for (int64_t g = 0; g < groups; ++g) {
      const scalar_t* tg = t + g * group_size;
      const scalar_t* sg = s + g * group_size;
      auto d_at = [tg, sg](int64_t i) { return squared(Acc(tg[i]) - Acc(sg[i])); };
      select_quantiles<Acc>(group_size, d_at, &p, 1, thr + g);
      const Acc threshold_g = thr[g];
      std::vector<double> sums(nthreads, 0.0);
      std::vector<int64_t> counts(nthreads, 0);
      at::parallel_for(0, group_size, 1 << 14, [&](int64_t begin, int64_t end) {
        double sum = 0.0;
        int64_t c = 0;
        for (int64_t i = begin; i < end; ++i) {
          const Acc d = d_at(i);
          if (d >= threshold_g) {
            sum += d;
            ++c;
          }
        }
        sums[at::get_thread_num()] += sum;
        counts[at::get_thread_num()] += c;
      });
      double sum = 0.0;
      int64_t c = 0;
      for (int k = 0; k < nthreads; ++k) {
        sum += sums[k];
        c += counts[k];
      }
      cnt[g] = c;
      loss_sum += sum / double(c);  // c == 0 only when threshold is NaN: NaN loss
    }
    loss.fill_(loss_sum / double(groups));
  });
  return {loss, threshold, count};
}

std::tuple<at::Tensor, at::Tensor> hard_feature_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& teacher_in, const at::Tensor& student_in,
    const at::Tensor& threshold, const at::Tensor& count, bool per_sample, bool teacher_grad) {
  check_hard_loss_inputs(teacher_in, student_in);
  const auto [teacher, student] = hard_loss_layout(teacher_in, student_in);
  const int64_t B = teacher.size(0);
  const int64_t groups = per_sample ? B : 1;
  const int64_t group_size = teacher.numel() / groups;
  check_hard_loss_backward_args(teacher, grad_loss, threshold, count, groups);
  at::Tensor grad_student = at::empty_like(student);
  at::Tensor grad_teacher = teacher_grad ? at::empty_like(teacher) : at::empty({0}, teacher.options());
  const double upstream = grad_loss.item<double>();
  const at::Tensor thr_d = threshold.to(at::kDouble).contiguous();
  const at::Tensor cnt = count.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "hard_feature_loss_backward_cpu", [&] {
    using Acc = acc_t<scalar_t>;
    const scalar_t* t = teacher.const_data_ptr<scalar_t>();
    const scalar_t* s = student.const_data_ptr<scalar_t>();
    scalar_t* gs = grad_student.mutable_data_ptr<scalar_t>();
    scalar_t* gt = teacher_grad ? grad_teacher.mutable_data_ptr<scalar_t>() : nullptr;
    for (int64_t g = 0; g < groups; ++g) {
      const Acc thr = Acc(thr_d.const_data_ptr<double>()[g]);
      // d loss / d d_i = upstream / (groups * count_g) for selected i, 0 otherwise.
      const Acc scale = Acc(2.0 * upstream / (double(groups) * double(cnt.const_data_ptr<int64_t>()[g])));
      const int64_t off = g * group_size;
      at::parallel_for(0, group_size, 1 << 14, [&](int64_t begin, int64_t end) {
        for (int64_t i = off + begin; i < off + end; ++i) {
          const Acc diff = Acc(t[i]) - Acc(s[i]);
          const Acc gd = squared(diff) >= thr ? scale * diff : Acc(0);
          gs[i] = static_cast<scalar_t>(-gd);
          if (gt) gt[i] = static_cast<scalar_t>(gd);
        }
      });
    }
  });
  return {grad_teacher, grad_student};
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) {
  m.impl("hard_feature_loss", &hard_feature_loss_cpu);
  m.impl("hard_feature_loss_backward", &hard_feature_loss_backward_cpu);
}

}  // namespace efficientad::cpu
