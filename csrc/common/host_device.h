// Marks functions that both the C++ (CPU) kernels and the CUDA kernels call.
// Everything in csrc/common/ is plain arithmetic on scalars and raw pointers: no torch and
// no CUDA headers, so the CPU build (and so the CPU tests) exercise exactly the math that
// the CUDA kernels run.
#pragma once

#if defined(__CUDACC__)
#define EAD_HD __host__ __device__ __forceinline__
#else
#define EAD_HD inline
#endif
