// CPU kernels of efficientad::anomaly_maps_raw and efficientad::anomaly_maps.
//
// Stage 1 reads every feature element exactly once and keeps only per-pixel running sums
// (a row of w accumulators per map), so no [C, h, w] intermediate (normalised teacher or
// squared difference) ever exists. Rows are parallel. Layouts: when every feature tensor has
// unit stride along W (contiguous, or a channel slice) the loop runs channels outside and
// pixels inside; when every one has unit stride along C (channels-last) it runs pixels
// outside and channels inside; anything else is made contiguous first.
// Stage 2 (anomaly_maps only) pads and bilinearly resizes the small [h, w] combined map to
// the output size and takes the NaN-propagating max per image.
// Math: common/anomaly_math.h. Accumulation in float (double for double inputs).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "common/accumulation.h"
#include "common/anomaly_math.h"

namespace efficientad::cpu {
namespace {

struct Features {
  at::Tensor teacher, student, autoencoder;
  bool channels_inner;  // true: unit stride along C (channels-last)
};

Features feature_layout(const at::Tensor& t, const at::Tensor& s, const at::Tensor& a) {
  auto unit_w = [](const at::Tensor& x) { return x.stride(3) == 1 || x.size(3) == 1; };
  auto unit_c = [](const at::Tensor& x) { return x.stride(1) == 1; };
  if (unit_w(t) && unit_w(s) && unit_w(a)) return {t, s, a, false};
  if (unit_c(t) && unit_c(s) && unit_c(a)) return {t, s, a, true};
  return {t.contiguous(), s.contiguous(), a.contiguous(), false};
}

// Raw maps of one image row: st[x], ae[x] for x in [0, w).
template <typename scalar_t, typename Acc>
void row_maps(const Features& f, const Acc* mean, const Acc* inv_std, int64_t b, int64_t y,
              Acc* st, Acc* ae) {
  const int64_t C = f.teacher.size(1), W = f.teacher.size(3);
  const scalar_t* t = f.teacher.const_data_ptr<scalar_t>() + b * f.teacher.stride(0) + y * f.teacher.stride(2);
  const scalar_t* s = f.student.const_data_ptr<scalar_t>() + b * f.student.stride(0) + y * f.student.stride(2);
  const scalar_t* a = f.autoencoder.const_data_ptr<scalar_t>() + b * f.autoencoder.stride(0) + y * f.autoencoder.stride(2);
  const int64_t tc = f.teacher.stride(1), sc = f.student.stride(1), ac = f.autoencoder.stride(1);
  const int64_t tw = f.teacher.stride(3), sw = f.student.stride(3), aw = f.autoencoder.stride(3);
  const Acc inv_c = Acc(1) / Acc(C);
  if (!f.channels_inner) {
    for (int64_t x = 0; x < W; ++x) st[x] = ae[x] = Acc(0);
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* tr = t + c * tc;
      const scalar_t* sr = s + c * sc;
      const scalar_t* s2 = s + (C + c) * sc;
      const scalar_t* ar = a + c * ac;
      const Acc m = mean[c], is = inv_std[c];
      for (int64_t x = 0; x < W; ++x) {  // unit stride: vectorised
        st[x] += squared((Acc(tr[x]) - m) * is - Acc(sr[x]));
        ae[x] += squared(Acc(ar[x]) - Acc(s2[x]));
      }
    }
  } else {
    for (int64_t x = 0; x < W; ++x) {
      const scalar_t* tp = t + x * tw;
      const scalar_t* sp = s + x * sw;
      const scalar_t* ap = a + x * aw;
      Acc acc_st = 0, acc_ae = 0;
      for (int64_t c = 0; c < C; ++c) {  // unit stride: vectorised
        acc_st += squared((Acc(tp[c]) - mean[c]) * inv_std[c] - Acc(sp[c]));
        acc_ae += squared(Acc(ap[c]) - Acc(sp[C + c]));
      }
      st[x] = acc_st;
      ae[x] = acc_ae;
    }
  }
  for (int64_t x = 0; x < W; ++x) {
    st[x] *= inv_c;
    ae[x] *= inv_c;
  }
}

template <typename Acc>
std::vector<Acc> channel_vector(const at::Tensor& v, bool invert) {
  const at::Tensor d = v.to(at::kDouble).contiguous();
  std::vector<Acc> out(d.numel());
  for (int64_t i = 0; i < d.numel(); ++i) {
    const double x = d.const_data_ptr<double>()[i];
    out[i] = Acc(invert ? 1.0 / x : x);
  }
  return out;
}

// Runs stage 1 for every row, handing each finished row to `emit(b, y, st_row, ae_row)`.
template <typename scalar_t, typename Acc, typename Emit>
void for_each_row(const Features& f, const at::Tensor& mean, const at::Tensor& std, const Emit& emit) {
  const int64_t B = f.teacher.size(0), H = f.teacher.size(2), W = f.teacher.size(3);
  const std::vector<Acc> m = channel_vector<Acc>(mean, false), inv_std = channel_vector<Acc>(std, true);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> st(W), ae(W);
    for (int64_t r = begin; r < end; ++r) {
      row_maps<scalar_t, Acc>(f, m.data(), inv_std.data(), r / H, r % H, st.data(), ae.data());
      emit(r / H, r % H, st.data(), ae.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor> anomaly_maps_raw_cpu(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                                                        const at::Tensor& teacher_std, const at::Tensor& student,
                                                        const at::Tensor& autoencoder) {
  check_feature_maps(teacher, teacher_mean, teacher_std, student, autoencoder);
  const Features f = feature_layout(teacher, student, autoencoder);
  const int64_t B = teacher.size(0), H = teacher.size(2), W = teacher.size(3);
  const auto opts = teacher.options().dtype(accumulation_type(teacher.scalar_type()));
  at::Tensor map_st = at::empty({B, 1, H, W}, opts), map_ae = at::empty({B, 1, H, W}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "anomaly_maps_raw_cpu", [&] {
    using Acc = acc_t<scalar_t>;
    Acc* ost = map_st.mutable_data_ptr<Acc>();
    Acc* oae = map_ae.mutable_data_ptr<Acc>();
    for_each_row<scalar_t, Acc>(f, teacher_mean, teacher_std, [&](int64_t b, int64_t y, const Acc* st, const Acc* ae) {
      std::copy(st, st + W, ost + (b * H + y) * W);
      std::copy(ae, ae + W, oae + (b * H + y) * W);
    });
  });
  return {map_st, map_ae};
}

std::tuple<at::Tensor, at::Tensor> anomaly_maps_cpu(const at::Tensor& teacher, const at::Tensor& teacher_mean,
                                                    const at::Tensor& teacher_std, const at::Tensor& student,
                                                    const at::Tensor& autoencoder, const at::Tensor& quantiles,
                                                    at::IntArrayRef output_size, int64_t pad) {
  check_anomaly_maps_args(teacher, teacher_mean, teacher_std, student, autoencoder, quantiles, output_size, pad);
  const Features f = feature_layout(teacher, student, autoencoder);
  const int64_t B = teacher.size(0), h = teacher.size(2), w = teacher.size(3);
  const int64_t OH = output_size[0], OW = output_size[1];
  const int64_t ph = h + 2 * pad, pw = w + 2 * pad;
  const auto opts = teacher.options().dtype(accumulation_type(teacher.scalar_type()));
  at::Tensor out = at::empty({B, 1, OH, OW}, opts);
  at::Tensor score = at::empty({B}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "anomaly_maps_cpu", [&] {
    using Acc = acc_t<scalar_t>;
    const std::vector<Acc> q = channel_vector<Acc>(quantiles, false);
    const MapNormalization<Acc> norm = make_map_normalization(q.data());
    TORCH_CHECK_VALUE(normalization_is_valid(norm),
                      "quantiles must be finite with q_st_a < q_st_b and q_ae_a < q_ae_b (0.1 / (q_b - q_a) finite), "
                      "got [", q[0], ", ", q[1], ", ", q[2], ", ", q[3], "]");
    const Acc border = combine_maps(Acc(0), Acc(0), norm);  // padded raw maps are 0
    std::vector<Acc> combined(B * h * w);
    for_each_row<scalar_t, Acc>(f, teacher_mean, teacher_std, [&](int64_t b, int64_t y, const Acc* st, const Acc* ae) {
      Acc* row = combined.data() + (b * h + y) * w;
      for (int64_t x = 0; x < w; ++x) row[x] = combine_maps(st[x], ae[x], norm);
    });
    std::vector<BilinearTap<Acc>> tx(OW);
    for (int64_t x = 0; x < OW; ++x) tx[x] = bilinear_tap<Acc>(x, pw, OW);
    std::vector<Acc> row_max(B * OH);
    Acc* o = out.mutable_data_ptr<Acc>();
    at::parallel_for(0, B * OH, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / OH, y = r % OH;
        const BilinearTap<Acc> ty = bilinear_tap<Acc>(y, ph, OH);
        const Acc* map = combined.data() + b * h * w;
        Acc* orow = o + r * OW;
        Acc m = -std::numeric_limits<Acc>::infinity();
        for (int64_t x = 0; x < OW; ++x) {
          orow[x] = resized_map_value(map, h, w, pad, border, ty, tx[x]);
          m = nan_max(orow[x], m);
        }
        row_max[r] = m;
      }
    });
    Acc* sc = score.mutable_data_ptr<Acc>();
    for (int64_t b = 0; b < B; ++b) {
      Acc m = -std::numeric_limits<Acc>::infinity();
      for (int64_t y = 0; y < OH; ++y) m = nan_max(row_max[b * OH + y], m);
      sc[b] = m;
    }
  });
  return {out, score};
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) {
  m.impl("anomaly_maps_raw", &anomaly_maps_raw_cpu);
  m.impl("anomaly_maps", &anomaly_maps_cpu);
}

}  // namespace efficientad::cpu
