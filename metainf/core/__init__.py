"""The bilevel problem: models over a flat parameter vector, the task tensors, the two inner problems (MAML
unrolled, iMAML proximal) with their exact total derivatives, the meta-objective over a task pool, and the
attribution problem that methods and ground truths share."""
