// CUDA kernels of efficientad::anomaly_maps_raw and efficientad::anomaly_maps.
//
// Math: common/anomaly_math.h; accumulation in float (double for double inputs). Features are
// read in place with their strides (any layout, no copy); every element is read once.
//   stats kernel: mean[c] and inv_std[c] = 1 / std[c] (computed in double, as the CPU) in the
//     accumulation type, from the device tensors (no host sync).
//   stage 1, two layouts: unit stride along W (contiguous NCHW, channel slices) or any other
//     non-channels-last layout: one thread per feature pixel looping over the channels in
//     order (coalesced across x; the CPU's summation order). Unit stride along C
//     (channels-last): one warp per pixel, lanes over channels, then a warp reduction
//     (coalesced; the summation order differs from the CPU's by a few ulp).
//     anomaly_maps_raw writes map_st and map_ae; anomaly_maps writes the combined normalised
//     map (make_map_normalization / combine_maps of the device quantiles) into a [B, h, w]
//     workspace, which is all that is ever materialised at feature resolution.
//   stage 2: one thread per output pixel (grid y = image): bilinear_tap / resized_map_value
//     of the padded map (border = combine_maps(0, 0)), and the image score as a block-level
//     nan_max reduced across blocks by atomicMax on ordered keys (NaN -> the largest key, so a
//     NaN anywhere gives a NaN score); a decode kernel turns the keys into scores.
// nvcc contracts multiply-adds into FMAs, so values can differ from the CPU's in the last bits
// (relative ~1e-7 for float); the NaN semantics and the shapes are exactly the CPU's.
#include <cmath>

#include "common/anomaly_math.h"
#include "cuda/device_utils.cuh"

namespace efficientad::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;

template <typename Acc>
__global__ void channel_stats_kernel(const double* __restrict__ mean, const double* __restrict__ std_dev, int64_t C,
                                     Acc* __restrict__ stats) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    stats[c] = Acc(mean[c]);
    stats[C + c] = Acc(1.0 / std_dev[c]);
  }
}

template <typename Acc>
__device__ __forceinline__ MapNormalization<Acc> load_normalization(const double* __restrict__ quantiles) {
  const Acc q[4] = {Acc(quantiles[0]), Acc(quantiles[1]), Acc(quantiles[2]), Acc(quantiles[3])};
  return make_map_normalization(q);
}

// Where stage 1 puts a pixel's raw maps: both maps, or their normalised combination (the
// normalisation is derived on the device from the quantiles: see normalization()).
template <typename Acc, bool kCombine>
struct MapSink {
  Acc* __restrict__ out0;              // map_st, or the combined map
  Acc* __restrict__ out1;              // map_ae (raw only)
  const double* __restrict__ quantiles;  // combined only
  __device__ __forceinline__ MapNormalization<Acc> normalization() const {
    if constexpr (kCombine) return load_normalization<Acc>(quantiles);
    return {};
  }
  __device__ __forceinline__ void store(int64_t p, Acc st, Acc ae, const MapNormalization<Acc>& norm) const {
    if constexpr (kCombine) {
      out0[p] = combine_maps(st, ae, norm);
    } else {
      out0[p] = st;
      out1[p] = ae;
    }
  }
};

// Pointers of pixel p = (b, y, x) in the three feature tensors.
template <typename T>
struct PixelPointers {
  const T* t;
  const T* s;
  const T* a;
  __device__ __forceinline__ PixelPointers(const FeatureArgs<T>& f, int64_t p) {
    const int64_t r = idiv(p, f.W), x = p - r * f.W, b = idiv(r, f.H), y = r - b * f.H;
    t = f.teacher + b * f.teacher_strides[0] + y * f.teacher_strides[2] + x * f.teacher_strides[3];
    s = f.student + b * f.student_strides[0] + y * f.student_strides[2] + x * f.student_strides[3];
    a = f.autoencoder + b * f.autoencoder_strides[0] + y * f.autoencoder_strides[2] + x * f.autoencoder_strides[3];
  }
};

// The per-channel terms of M_ST and M_AE, accumulated into st and ae.
template <typename T, typename Acc>
__device__ __forceinline__ void add_channel(const FeatureArgs<T>& f, const PixelPointers<T>& px,
                                            const Acc* __restrict__ stats, int64_t c, Acc& st, Acc& ae) {
  const Acc t = to_acc(px.t[c * f.teacher_strides[1]]);
  const Acc s = to_acc(px.s[c * f.student_strides[1]]);
  const Acc s2 = to_acc(px.s[(f.C + c) * f.student_strides[1]]);
  const Acc a = to_acc(px.a[c * f.autoencoder_strides[1]]);
  st += squared((t - stats[c]) * stats[f.C + c] - s);
  ae += squared(a - s2);
}

template <typename T, bool kCombine>
__global__ void __launch_bounds__(kThreads)
    maps_pixel_kernel(FeatureArgs<T> f, const acc_t<T>* __restrict__ stats, MapSink<acc_t<T>, kCombine> sink) {
  using Acc = acc_t<T>;
  const Acc inv_c = Acc(1) / Acc(f.C);
  const MapNormalization<Acc> norm = sink.normalization();
  const int64_t pixels = f.B * f.H * f.W;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels; p += int64_t(gridDim.x) * blockDim.x) {
    const PixelPointers<T> px(f, p);
    Acc st = 0, ae = 0;
    for (int64_t c = 0; c < f.C; ++c) add_channel(f, px, stats, c, st, ae);
    sink.store(p, st * inv_c, ae * inv_c, norm);
  }
}

template <typename T, bool kCombine>
__global__ void __launch_bounds__(kThreads)
    maps_warp_kernel(FeatureArgs<T> f, const acc_t<T>* __restrict__ stats, MapSink<acc_t<T>, kCombine> sink) {
  using Acc = acc_t<T>;
  const Acc inv_c = Acc(1) / Acc(f.C);
  const MapNormalization<Acc> norm = sink.normalization();
  const int64_t pixels = f.B * f.H * f.W;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t p = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; p < pixels; p += warps) {
    const PixelPointers<T> px(f, p);
    Acc st = 0, ae = 0;
    for (int64_t c = lane; c < f.C; c += 32) add_channel(f, px, stats, c, st, ae);
    st = warp_reduce(st, Plus{});
    ae = warp_reduce(ae, Plus{});
    if (lane == 0) sink.store(p, st * inv_c, ae * inv_c, norm);
  }
}

struct NanMax {
  template <typename Acc>
  __device__ __forceinline__ Acc operator()(Acc a, Acc b) const { return nan_max(a, b); }
};

template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    resize_kernel(const Acc* __restrict__ combined, int64_t B, int64_t h, int64_t w, int64_t pad, int64_t out_h,
                  int64_t out_w, const double* __restrict__ quantiles, Acc* __restrict__ out,
                  unsigned long long* __restrict__ keys) {
  const Acc border = combine_maps(Acc(0), Acc(0), load_normalization<Acc>(quantiles));  // padded raw maps are 0
  const int64_t npix = out_h * out_w;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const Acc* map = combined + b * h * w;
    Acc m = Acc(-INFINITY);
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < npix; p += int64_t(gridDim.x) * blockDim.x) {
      const int64_t oy = idiv(p, out_w), ox = p - oy * out_w;
      const Acc v = resized_map_value(map, h, w, pad, border, bilinear_tap<Acc>(oy, h + 2 * pad, out_h),
                                      bilinear_tap<Acc>(ox, w + 2 * pad, out_w));
      out[b * npix + p] = v;
      m = nan_max(v, m);
    }
    m = block_reduce(m, NanMax{}, Acc(-INFINITY));
    if (threadIdx.x == 0) atomicMax(&keys[b], max_key(m));
  }
}

template <typename Acc>
__global__ void decode_scores_kernel(const unsigned long long* __restrict__ keys, int64_t B, Acc* __restrict__ score) {
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < B; b += int64_t(gridDim.x) * blockDim.x)
    score[b] = value_of<Acc>(keys[b]);
}

template <typename T, bool kCombine>
cudaError_t launch_stage1(const FeatureArgs<T>& f, const double* mean, const double* std_dev, acc_t<T>* stats,
                          MapSink<acc_t<T>, kCombine> sink, cudaStream_t stream) {
  channel_stats_kernel<<<grid_blocks(f.C, kThreads, 1024), kThreads, 0, stream>>>(mean, std_dev, f.C, stats);
  auto unit_w = [&f](const int64_t* st) { return st[3] == 1 || f.W == 1; };
  auto unit_c = [](const int64_t* st) { return st[1] == 1; };
  const bool channels_inner =
      !(unit_w(f.teacher_strides) && unit_w(f.student_strides) && unit_w(f.autoencoder_strides)) &&
      unit_c(f.teacher_strides) && unit_c(f.student_strides) && unit_c(f.autoencoder_strides);
  const int64_t pixels = f.B * f.H * f.W, cap = int64_t(sm_count()) * kBlocksPerSm;
  if (channels_inner)
    maps_warp_kernel<T, kCombine><<<grid_blocks(pixels, kThreads / 32, cap), kThreads, 0, stream>>>(f, stats, sink);
  else
    maps_pixel_kernel<T, kCombine><<<grid_blocks(pixels, kThreads, cap), kThreads, 0, stream>>>(f, stats, sink);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_anomaly_maps_raw(const FeatureArgs<T>& f, const double* mean, const double* std_dev,
                                    acc_t<T>* stats, acc_t<T>* map_st, acc_t<T>* map_ae, cudaStream_t stream) {
  return launch_stage1<T, false>(f, mean, std_dev, stats, {map_st, map_ae, nullptr}, stream);
}

template <typename T>
cudaError_t launch_anomaly_maps(const FeatureArgs<T>& f, const double* mean, const double* std_dev,
                                const double* quantiles, int64_t out_h, int64_t out_w, int64_t pad,
                                acc_t<T>* stats, acc_t<T>* combined, unsigned long long* keys,
                                acc_t<T>* out, acc_t<T>* score, cudaStream_t stream) {
  using Acc = acc_t<T>;
  cudaError_t err = launch_stage1<T, true>(f, mean, std_dev, stats, {combined, nullptr, quantiles}, stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(keys, 0, size_t(f.B) * sizeof(unsigned long long), stream);  // below every value's key
  if (err != cudaSuccess) return err;
  const unsigned gy = segment_blocks(f.B);
  const int64_t cap = std::max<int64_t>(1, int64_t(sm_count()) * kBlocksPerSm / gy);
  resize_kernel<Acc><<<dim3(grid_blocks(out_h * out_w, kThreads, cap), gy), kThreads, 0, stream>>>(
      combined, f.B, f.H, f.W, pad, out_h, out_w, quantiles, out, keys);
  decode_scores_kernel<Acc><<<grid_blocks(f.B, kThreads, 1024), kThreads, 0, stream>>>(keys, f.B, score);
  return cudaGetLastError();
}

#define EFFICIENTAD_INSTANTIATE(T)                                                                             \
  template cudaError_t launch_anomaly_maps_raw<T>(const FeatureArgs<T>&, const double*, const double*,         \
                                                  acc_t<T>*, acc_t<T>*, acc_t<T>*, cudaStream_t);               \
  template cudaError_t launch_anomaly_maps<T>(const FeatureArgs<T>&, const double*, const double*, const double*, \
                                              int64_t, int64_t, int64_t, acc_t<T>*, acc_t<T>*,                   \
                                              unsigned long long*, acc_t<T>*, acc_t<T>*, cudaStream_t);
EFFICIENTAD_FOR_ELEMENT_TYPES(EFFICIENTAD_INSTANTIATE)
#undef EFFICIENTAD_INSTANTIATE

}  // namespace efficientad::cuda
