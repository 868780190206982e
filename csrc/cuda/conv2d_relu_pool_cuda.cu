// CUDA kernels of the epilogue of efficientad::conv2d_relu_pool (the convolution and its bias
// run in cuDNN; see conv2d_relu_pool_cuda.cpp). Math: common/pdn_epilogue.h, accumulation in
// float (double for double).
//   relu_inplace_kernel: ReLU over the dense convolution output (any dense layout), in place.
//   relu_pool_kernel: NHWC in, NHWC out (channels-last): one thread per pooled output element,
//     consecutive threads on consecutive channels, so every read and write is coalesced; each
//     convolution activation is read once (windows do not overlap: stride 2, kernel 2).
//     Output = 0.25 * sum over the in-bounds taps of maybe_relu(tap), taps added in the CPU's
//     order (count_include_pad: always divide by 4). No multiply-add to contract: bit-identical
//     to the CPU epilogue for identical convolution outputs.
// grid.y walks output rows (b, oy) so the only per-element division is by C (32-bit when it fits).
#include "common/pdn_epilogue.h"
#include "cuda/device_utils.cuh"

namespace efficientad::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) relu_inplace_kernel(T* __restrict__ data, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    data[i] = from_acc<T>(maybe_relu(to_acc(data[i]), true));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    relu_pool_kernel(const T* __restrict__ y, T* __restrict__ out, int64_t B, int64_t C, int64_t H, int64_t W,
                     int64_t out_h, int64_t out_w, bool relu, int64_t pp) {
  using Acc = acc_t<T>;
  const int64_t row_len = out_w * C;
  for (int64_t row = blockIdx.y; row < B * out_h; row += gridDim.y) {
    const int64_t b = row / out_h, oy = row - b * out_h;
    const int64_t y0 = pool_tap(oy, 0, pp), y1 = pool_tap(oy, 1, pp);
    const bool y0_ok = y0 >= 0 && y0 < H, y1_ok = y1 >= 0 && y1 < H;
    const T* plane = y + b * H * W * C;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < row_len; i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t ox = idiv(i, C), c = i - ox * C;
      const int64_t x0 = pool_tap(ox, 0, pp), x1 = pool_tap(ox, 1, pp);
      const bool x0_ok = x0 >= 0 && x0 < W, x1_ok = x1 >= 0 && x1 < W;
      Acc acc = 0;
      if (y0_ok && x0_ok) acc += maybe_relu(to_acc(plane[(y0 * W + x0) * C + c]), relu);
      if (y0_ok && x1_ok) acc += maybe_relu(to_acc(plane[(y0 * W + x1) * C + c]), relu);
      if (y1_ok && x0_ok) acc += maybe_relu(to_acc(plane[(y1 * W + x0) * C + c]), relu);
      if (y1_ok && x1_ok) acc += maybe_relu(to_acc(plane[(y1 * W + x1) * C + c]), relu);
      out[row * row_len + i] = from_acc<T>(acc * Acc(0.25));
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_relu_inplace(T* data, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  relu_inplace_kernel<T><<<grid_blocks(n, kThreads, int64_t(sm_count()) * 8), kThreads, 0, stream>>>(data, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_relu_pool_nhwc(const T* y, T* out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t out_h,
                                  int64_t out_w, bool relu, int64_t pool_padding, cudaStream_t stream) {
  if (B * C * out_h * out_w == 0) return cudaSuccess;
  const unsigned gy = segment_blocks(B * out_h);
  const int64_t cap = std::max<int64_t>(1, int64_t(sm_count()) * 8 / gy);
  relu_pool_kernel<T><<<dim3(grid_blocks(out_w * C, kThreads, cap), gy), kThreads, 0, stream>>>(
      y, out, B, C, H, W, out_h, out_w, relu, pool_padding);
  return cudaGetLastError();
}

#define EFFICIENTAD_INSTANTIATE(T)                                                                        \
  template cudaError_t launch_relu_inplace<T>(T*, int64_t, cudaStream_t);                                 \
  template cudaError_t launch_relu_pool_nhwc<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                                int64_t, bool, int64_t, cudaStream_t);
EFFICIENTAD_INSTANTIATE(__half)
EFFICIENTAD_INSTANTIATE(__nv_bfloat16)
EFFICIENTAD_INSTANTIATE(float)
EFFICIENTAD_INSTANTIATE(double)
#undef EFFICIENTAD_INSTANTIATE

}  // namespace efficientad::cuda
