"""The candidates a top-k sampler can keep, found without sorting the whole vocabulary (pure numpy).

llama.cpp's sampler chain starts by copying the logits row into an array of n_vocab candidates
(262,144 for Gemma 3) and partially sorting it for top-k: ~0.4 ms a token on a small CPU for
k = 40, more than a GPU's whole decode step of a small model. When the chain begins with top-k,
only the k best can matter. Split the row into groups; a group holding one of the k best has a
maximum at least as high as the k-th best, and at most k groups can, so the k best all lie in the
k groups of highest maxima. The row is read once for the group maxima (the groups are the row's
columns when it is laid out as GROUPS wide, so that numpy reduces whole rows at a time) and only
those groups are searched.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

GROUPS = 1024


def top_candidates(row: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Token ids, ascending: at least `k`, holding the `k` highest values of `row`. Of values
    equal to the k-th, those in groups not searched are left out; which of equal candidates top-k
    keeps is arbitrary in llama.cpp too. A row with a NaN where it matters gives every id: no order
    holds, and llama.cpp's chain on the whole row decides as it always did."""
    n = int(row.shape[0])
    if k <= 0 or k >= n:
        return np.arange(n)
    depth = n // GROUPS  # members per group; the tail of n % GROUPS is searched whole
    whole = depth * GROUPS
    candidates = np.arange(whole, n)
    if depth:
        maxima = row[:whole].reshape(depth, GROUPS).max(axis=0)
        if np.isnan(maxima).any():
            return np.arange(n)
        chosen = np.argpartition(maxima, GROUPS - k)[GROUPS - k :] if k < GROUPS else np.arange(GROUPS)
        members = (np.arange(depth)[:, None] * GROUPS + chosen).ravel()
        candidates = np.concatenate([members, candidates])
    values = row[candidates]
    if np.isnan(values).any():
        return np.arange(n)
    if k < candidates.shape[0]:
        kth = values[np.argpartition(values, candidates.shape[0] - k)[candidates.shape[0] - k :]].min()
        candidates = candidates[values >= kth]
    return np.sort(candidates)
