// Glue shared by the CUDA registration files (*_cuda.cpp; host compiler, torch headers): the
// ATen scalar type -> CUDA element type mapping the launchers are instantiated for, typed
// pointers, and the current stream. Only lightweight headers (no ATen/cuda/CUDAContext.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"

namespace efficientad::cuda {

template <typename scalar_t> struct DeviceScalar { using type = scalar_t; };
template <> struct DeviceScalar<c10::Half> { using type = __half; };
template <> struct DeviceScalar<c10::BFloat16> { using type = __nv_bfloat16; };
template <typename scalar_t> using device_t = typename DeviceScalar<scalar_t>::type;

static_assert(sizeof(c10::Half) == sizeof(__half) && alignof(c10::Half) == alignof(__half));
static_assert(sizeof(c10::BFloat16) == sizeof(__nv_bfloat16) && alignof(c10::BFloat16) == alignof(__nv_bfloat16));

template <typename scalar_t>
const device_t<scalar_t>* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const device_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
device_t<scalar_t>* out_ptr(const at::Tensor& t) {
  return reinterpret_cast<device_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace efficientad::cuda
