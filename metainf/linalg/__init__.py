"""The linear-algebra layer: inverse total-Hessian-vector products and the curvature models behind them, the
paper's acceleration strategies (section 4) and the ablation alternatives.

- ``curvature``: the ``Curvature`` protocol (``matvec``, ``solve``) that every curvature below implements, and
  ``OperatorCurvature`` for one given by its products.
- ``cg``: the one conjugate gradient (tolerance mode with preconditioner and warm start; vmap-safe fixed-iteration
  mode). ``solvers``: ``solve(hvp, b, method)`` (dense, CG, Neumann, LiSSA); ``types``: ``SolveInfo`` and the two
  solver errors; ``chunked``: ``map_chunked``, the memory-bounded ``vmap`` over tasks.
- ``neumann``: truncated Neumann series and LiSSA for (damping I + H)^-1 b (``metainf.linalg.solvers.solve`` methods
  ``"neumann"`` / ``"lissa"``); ``batches``: mini-batch total HVPs over task subsets for LiSSA.
- ``ekfac``: EK-FAC for the proximal inner Hessian (``ProximalInner(inner_solver="ekfac")``), and its factors
  pooled over many sets of examples, each at its own parameters.
- ``total_ekfac``: an EK-FAC model of the Gauss-Newton part of the total Hessian (every task's query points at its
  adapted parameters) as a CG preconditioner (``task_if_truncated`` / ``task_if_fast`` ``precond="ekfac"``).
- ``gamma``: the Gamma surrogate for H' (``hprime="gamma"`` / ``"gamma_scaled:c"``) and its dominance check.
- ``gauss_newton``: the TLXML-style Gauss-Newton total Hessian (the one GN HVP: ``gn_hvp``, ``gn_dense``).
- ``fisher``: the empirical-Fisher total curvature (1/M) G^T G + delta I from the per-task total gradients, solved
  by Woodbury (``TaskIF(solver="fisher")``, method ``task_if_fisher``).
- ``nystrom``: a low-rank model of the exact total Hessian from one batched pass of total HVPs on probe directions
  (Rayleigh-Ritz or Nystrom), solved by Woodbury, optionally refined by preconditioned CG (method
  ``task_if_nystrom``).
- ``diagonal``: diagonal models of the damped total Hessian as Jacobi preconditioners (the empirical-Fisher diagonal,
  free; a Hutchinson estimate from batched HVPs; ``task_if_truncated`` / ``task_if_fast`` ``precond``).
- ``finite_difference``: total HVPs as difference quotients of the meta-gradient (unrolled MAML; one gradient pass
  each) and the task and evaluation gradients in one pass (method ``task_if_truncated``: truncated CG).
"""
