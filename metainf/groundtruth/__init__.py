"""Ground truth for attribution, apart from the methods it judges: converged leave-one-out retraining
(``converged``) and trajectory-specific leave-one-out replay (``trajectory``)."""
