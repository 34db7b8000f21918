"""metainf: task- and instance-level influence functions for bilevel meta learning.

Sign convention (everywhere in this package, its baselines and its ground truth)::

    score[u] ~ L_eval(trained without u) - L_eval(trained with u)

Positive: unit ``u`` helps (removing it raises the evaluation loss). Negative: ``u`` is harmful.
"""

__version__ = "0.1.0"
