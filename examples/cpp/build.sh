#!/bin/sh
# Build classify against the torch wheel's own headers and libraries (no separate libtorch download):
#   PYTHON=.venv/bin/python sh examples/cpp/build.sh [OUTPUT]
# The library path is baked in (rpath), so the program runs where that torch is installed.
set -eu
PYTHON=${PYTHON:-python3}
# one import of torch for both: the C++ ABI it was built with, then its folder (which may hold spaces)
INFO=$("$PYTHON" -c 'import os, torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI), os.path.dirname(torch.__file__))')
ABI=${INFO%% *}
TORCH=${INFO#* }
OUTPUT=${1:-classify}
exec "${CXX:-g++}" -std=c++20 -O2 -D_GLIBCXX_USE_CXX11_ABI="$ABI" -I"$TORCH/include" \
  "$(dirname "$0")/classify.cpp" -o "$OUTPUT" \
  -L"$TORCH/lib" -Wl,-rpath,"$TORCH/lib" -ltorch -ltorch_cpu -lc10
