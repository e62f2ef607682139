"""Influence-function machinery for editing trained adapters: gradients and Hessian-vector products
of a training objective (hessian) and inverse-Hessian-vector solvers (solvers)."""
