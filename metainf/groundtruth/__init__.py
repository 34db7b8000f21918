"""Ground truth for attribution, apart from the methods it judges: converged leave-one-out retraining
(``converged``), trajectory-specific leave-one-out replay (``trajectory``), retraining on random subsets for the
linear datamodeling score (``lds``) and warm-start leave-one-out with a paired control (``warmstart``)."""
