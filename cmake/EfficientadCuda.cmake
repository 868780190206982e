# Decide whether to build the CUDA kernels and, if so, set up the CUDA language and the
# efficientad::torch_cuda target. Sets EFFICIENTAD_WITH_CUDA (ON/OFF) and the facts that
# _build_config.json records.
#
# The .cu files include no ATen/torch headers (only CUDA's own), which keeps nvcc fast and
# independent of the C++ standard torch's headers demand; the per-op *_cuda.cpp files hold
# the dispatcher registrations and are compiled by the host compiler.

set(EFFICIENTAD_WITH_CUDA OFF)
string(TOUPPER "${EFFICIENTAD_CUDA}" _want_cuda)

if(_want_cuda STREQUAL "OFF")
  message(STATUS "efficientad_ext: CUDA kernels disabled (EFFICIENTAD_CUDA=OFF)")
elseif(TORCH_CUDA_VERSION STREQUAL "")
  if(_want_cuda STREQUAL "ON")
    message(FATAL_ERROR "EFFICIENTAD_CUDA=ON but torch ${TORCH_VERSION} is a CPU-only build; "
                        "install a CUDA build of torch or set EFFICIENTAD_CUDA=OFF.")
  endif()
  message(STATUS "efficientad_ext: torch is a CPU build: CPU kernels only")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    if(_want_cuda STREQUAL "ON")
      message(FATAL_ERROR "EFFICIENTAD_CUDA=ON but no CUDA compiler (nvcc) was found; "
                          "put nvcc on PATH or set CMAKE_CUDA_COMPILER.")
    endif()
    message(STATUS "efficientad_ext: no nvcc found: CPU kernels only")
  else()
    set(EFFICIENTAD_WITH_CUDA ON)
  endif()
endif()

if(EFFICIENTAD_WITH_CUDA)
  set(CMAKE_CUDA_ARCHITECTURES "${EFFICIENTAD_CUDA_ARCHS}")
  # Link only the shared cudart (libcudart.so, the one torch loads): CMake's default, Static,
  # would bundle cudart_static into _C beside the CUDA::cudart below, i.e. two runtimes with
  # their own state in one process. Must be set before enable_language(CUDA).
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  string(APPEND CMAKE_CUDA_FLAGS " --expt-relaxed-constexpr -lineinfo")
  foreach(_lib c10_cuda torch_cuda)
    find_library(TORCH_${_lib}_LIBRARY NAMES ${_lib} PATHS "${TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
  endforeach()
  add_library(efficientad_torch_cuda INTERFACE)
  add_library(efficientad::torch_cuda ALIAS efficientad_torch_cuda)
  target_link_libraries(efficientad_torch_cuda INTERFACE
    ${TORCH_c10_cuda_LIBRARY} ${TORCH_torch_cuda_LIBRARY} CUDA::cudart)
  target_include_directories(efficientad_torch_cuda SYSTEM INTERFACE ${CUDAToolkit_INCLUDE_DIRS})
  set(EFFICIENTAD_CUDA_ARCHS_BUILT "${CMAKE_CUDA_ARCHITECTURES}")
  set(EFFICIENTAD_CUDA_COMPILER "${CMAKE_CUDA_COMPILER_ID} ${CMAKE_CUDA_COMPILER_VERSION}")
  message(STATUS "efficientad_ext: CUDA kernels ON for archs ${CMAKE_CUDA_ARCHITECTURES} "
                 "(${EFFICIENTAD_CUDA_COMPILER}, torch CUDA ${TORCH_CUDA_VERSION})")
endif()

if(EFFICIENTAD_WITH_CUDA)
  set(EFFICIENTAD_WITH_CUDA_JSON "true")
else()
  set(EFFICIENTAD_WITH_CUDA_JSON "false")
endif()
