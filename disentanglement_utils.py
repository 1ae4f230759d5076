"""Identifiability metrics. Functions take arrays and return numbers (or one number per dimension).

linear_r2_per_dimension  R² of each dimension of z under a least-squares map (with intercept) h(z) -> z;
                         their mean is the score the logs call Lin.
correlation_matrix       Pearson correlations between the dimensions of z and of h(z)
matched_correlations     |corr| of each dimension of z with the one of h(z) matched to it one-to-one;
                         their mean is the score the logs call Perm.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score


def _as_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def linear_r2_per_dimension(z, hz):
    """R² of each dimension z_i predicted by the OLS fit hz -> z (with intercept), on the fitting data.

    Args:
        z: (N, n) ground-truth latents.
        hz: (N, m) representations.
    Returns:
        (n,) array: 1 where z_i is an affine function of hz, about 0 where hz holds nothing of it.
    """
    z, hz = _as_numpy(z), _as_numpy(hz)
    pred = LinearRegression().fit(hz, z).predict(hz)
    return r2_score(z, pred, multioutput="raw_values")


def correlation_matrix(z, hz):
    """(n, m) Pearson correlations between the columns of z and of hz."""
    z, hz = _as_numpy(z), _as_numpy(hz)
    zc = z - z.mean(0)
    hc = hz - hz.mean(0)
    zs = np.sqrt((zc * zc).sum(0))
    hs = np.sqrt((hc * hc).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (zc.T @ hc) / np.outer(zs, hs)
    # A constant column correlates with nothing.
    return np.nan_to_num(corr, nan=0.0)


def matched_correlations(z, hz):
    """|corr| of each dimension z_i with the dimension of hz it is matched to, in the one-to-one
    matching that maximises Σ|corr| (Hungarian algorithm).

    Returns:
        (n,) array in [0, 1], ordered as z's dimensions (for n <= m).
    """
    corr = np.abs(correlation_matrix(z, hz))
    rows, cols = linear_sum_assignment(corr, maximize=True)
    out = np.zeros(corr.shape[0])
    out[rows] = corr[rows, cols]
    return out
