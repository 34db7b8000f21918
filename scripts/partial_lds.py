#!/usr/bin/env python3
"""Usage: python scripts/partial_lds.py  (from the project root)

Partial LDS: Spearman over subsets of the method's predicted loss and the measured loss, both with the count of
corrupted tasks regressed out (linear), from results/E3/omniglot-quick.json's series."""
import json, numpy as np
from scipy import stats
d = json.load(open("results/E3/omniglot-quick.json"))
s = d["per_seed"]["0"]["series"]["unrolled_conv4"]
masks = np.array(s["masks"], float); bad = np.array(s["corrupted"], float)
y = 0.5 * (np.array(s["losses_a"]).mean(1) + np.array(s["losses_b"]).mean(1))
ya, yb = np.array(s["losses_a"]).mean(1), np.array(s["losses_b"]).mean(1)
n = masks @ bad
X = np.c_[np.ones_like(n), n]
res = lambda v: v - X @ np.linalg.lstsq(X, v, rcond=None)[0]
print("ceiling of residuals (A vs B):", round(stats.spearmanr(res(ya), res(yb))[0], 3))
for m, sc in s["scores"].items():
    pred = -(masks @ np.array(sc))
    print(m, round(stats.spearmanr(res(pred), res(y))[0], 3))
