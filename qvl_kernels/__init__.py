"""Triton kernels for Pyramid Sparse Attention (PSA).

Depends on torch and triton only: never on transformers or qvl.
"""
