"""How a computation runs: the device and dtype (``device``), seeding (``seeding``), peak memory (``memory``) and
the executor of independent units (``executor``)."""
