"""The block scores on maps of z whose answer is known: n 10, bimodal groups 5 + 5, 4,096 samples of z
uniform on the sphere, fitted on the first half and scored on the second, as every metrics record does.

    python training_logs/theory/score_table.py
"""

import os
import sys

import numpy as np
from scipy.stats import ortho_group

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import disentanglement_utils as du  # noqa: E402

N, SAMPLES, SEEDS = 10, 4096, 10
GROUPS = du.lambda_groups([25] * 5 + [5] * 5)


def block_orthogonal(rng):
    q = np.zeros((N, N))
    q[:5, :5], q[5:, 5:] = (ortho_group.rvs(5, random_state=rng) for _ in range(2))
    return q


def maps(z, rng):
    """(name, h(z)) for the table's rows."""
    q, std = block_orthogonal(rng), z.std(0).mean()
    perm = np.eye(N)[rng.permutation(N)]
    shear, pair = np.eye(N), np.eye(N)
    shear[0, 1] = 1.0
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    pair[np.ix_([0, 7], [0, 7])] = [[c, -s], [s, c]]
    noise = rng.standard_normal((len(z), 5)) * std
    return [("block-orthogonal, outputs permuted, scaled by 3, shifted", 3 * z @ q @ perm + 1),
            ("a shear inside the content block (1 above the diagonal)", z @ shear @ q),
            ("block-orthogonal, output scales 1 (content) and 2 (style)", z @ q * np.repeat([1.0, 2.0], 5)),
            ("one content-style pair rotated 20°", z @ pair @ q),
            ("random orthogonal map, no block structure", z @ ortho_group.rvs(N, random_state=rng)),
            ("style block replaced by noise", np.column_stack([(z @ q)[:, :5], noise])),
            ("style outputs constant (collapsed)", np.column_stack([(z @ q)[:, :5], np.zeros((len(z), 5))])),
            ("tanh of a block-orthogonal map, a = 1 (z standardised)", np.tanh(z @ q / std)),
            ("tanh of a block-orthogonal map, a = 2 (z standardised)", np.tanh(2 * z @ q / std))]


def scores(z, hz):
    """The row of ``hz``: the scores a run's metrics records hold, by the functions that compute them there."""
    block, reference = du.block_scores(z, hz, GROUPS), du.identifiability_scores(z, hz, GROUPS)
    return (block["block_orthogonal_r2"], block["block_linear_r2"], *block["block_linear_groups"],
            reference["lin"], reference["perm"])


def main():
    rows = {}
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((SAMPLES, N))
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        for name, hz in maps(z, rng):
            rows.setdefault(name, []).append(scores(z, hz))
    print(f"mean (± std over {SEEDS} draws of z and of the random maps)\n")
    print("| h | R²_BO | block-linear R² | content / style | Lin. | Perm. |")
    print("|---|---:|---:|---|---:|---:|")
    for name, values in rows.items():
        m, s = np.mean(values, axis=0), np.std(values, axis=0)
        print(f"| {name} | {m[0]:.3f} ± {s[0]:.3f} | {m[1]:.3f} ± {s[1]:.3f} | {m[2]:.3f} / {m[3]:.3f} | "
              f"{m[4]:.3f} | {m[5]:.3f} |")


if __name__ == "__main__":
    main()
