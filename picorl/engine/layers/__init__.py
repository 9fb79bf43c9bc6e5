"""Layers and kernels: attention (torch and Triton), the sampler, fused projections."""
