"""The native (C++/CUDA) QP kernel: build, op registration wrappers and the backend."""
