"""Identifiability metrics. Functions take arrays and return numbers (or one number per dimension).

linear_disentanglement       R² of a least-squares map (with intercept) h(z) -> z
linear_r2_per_dimension      the same, one R² per dimension of z (their mean is the above)
permutation_disentanglement  mean |Pearson corr| of dimensions matched one-to-one
matched_correlations         the same, one |corr| per dimension of z (their mean is the above)
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


def linear_disentanglement(z, hz):
    """R² (uniform average over dimensions) of the OLS fit hz -> z, scored on the fitting data.

    Returns:
        float, 1 when z is an affine function of hz.
    """
    return float(np.mean(linear_r2_per_dimension(z, hz)))


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


def permutation_disentanglement(z, hz):
    """Mean |corr| of the one-to-one matching of dimensions that maximises Σ|corr|.

    Returns:
        float in [0, 1]; invariant to permuting, rescaling and flipping hz's dimensions.
    """
    corr = np.abs(correlation_matrix(z, hz))
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return float(corr[rows, cols].mean())
