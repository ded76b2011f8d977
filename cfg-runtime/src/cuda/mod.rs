//! The CUDA backend (cudarc + NVRTC) and the NCCL communicator.
