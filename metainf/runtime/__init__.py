"""How a computation runs: the executor of independent units (``executor``) and peak-memory measurement
(``memory``)."""
