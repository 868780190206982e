# Locate the torch that the building interpreter imports, without torch's own CMake config.
#
# Why not find_package(Torch): its config insists on nvrtc/cuDNN libraries, ignores
# CMAKE_CUDA_ARCHITECTURES and adds compute_50 (rejected by nvcc 13). We only need headers,
# four libraries and a handful of facts, which the interpreter can tell us directly.
#
# Defines: TORCH_VERSION, TORCH_CUDA_VERSION ("" for a CPU build), TORCH_CXX11_ABI,
#          TORCH_INCLUDE_DIRS, TORCH_LIBRARY_DIR, and the imported target efficientad::torch.

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c [=[
import os, torch
root = os.path.dirname(torch.__file__)
print(torch.__version__)
print(torch.version.cuda or "")
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(os.path.join(root, "include"))
print(os.path.join(root, "include", "torch", "csrc", "api", "include"))
print(os.path.join(root, "lib"))
]=]
  OUTPUT_VARIABLE _torch_facts
  RESULT_VARIABLE _torch_rc
  ERROR_VARIABLE _torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "efficientad_ext needs PyTorch at build time, but `${Python_EXECUTABLE} -c 'import torch'` "
    "failed:\n${_torch_err}\nInstall torch first (e.g. `pip install torch`), then build with "
    "`pip install --no-build-isolation .`.")
endif()
string(REPLACE "\n" ";" _torch_facts "${_torch_facts}")
list(GET _torch_facts 0 TORCH_VERSION)
list(GET _torch_facts 1 TORCH_CUDA_VERSION)
list(GET _torch_facts 2 TORCH_CXX11_ABI)
list(GET _torch_facts 3 _torch_inc)
list(GET _torch_facts 4 _torch_api_inc)
list(GET _torch_facts 5 TORCH_LIBRARY_DIR)
set(TORCH_INCLUDE_DIRS "${_torch_inc};${_torch_api_inc}")
message(STATUS "efficientad_ext: building against torch ${TORCH_VERSION} "
               "(CUDA: '${TORCH_CUDA_VERSION}', CXX11 ABI: ${TORCH_CXX11_ABI}) from ${TORCH_LIBRARY_DIR}")

foreach(_lib c10 torch_cpu)
  find_library(TORCH_${_lib}_LIBRARY NAMES ${_lib} PATHS "${TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
endforeach()

add_library(efficientad_torch INTERFACE)
add_library(efficientad::torch ALIAS efficientad_torch)
target_include_directories(efficientad_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
target_compile_definitions(efficientad_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
target_link_libraries(efficientad_torch INTERFACE ${TORCH_c10_LIBRARY} ${TORCH_torch_cpu_LIBRARY})
