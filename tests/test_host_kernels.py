"""Properties of gpslib.host_kernels (compiled loops) against the tensor functions they stand for."""

import numpy as np
import pytest
import torch

from gpslib.host_kernels import cosine_assignment_row, grouped_rows
from gpslib.tokenmixer import cosine_assignment


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.15, 0.9])
def test_host_cosine_rule_equals_cosine_assignment(threshold):
    image, tokens = _randn(7, 20, 16), _randn(8, 12, 16)
    tokens[3] = 4 * image[0]  # a sure match
    tokens[5] = 2 * tokens[3]  # and a tie with it: the lower index wins
    text_pos = np.array([0, 2, 3, 5, 7, 8, 11, 0, 0])  # 7 text tokens in place among 12 rows, padded
    expected, _ = cosine_assignment(image, tokens[torch.from_numpy(text_pos[:7])], threshold)
    out = np.empty(20, dtype=np.int64)
    cosine_assignment_row(image.numpy(), tokens.numpy(), text_pos, 7, threshold, out)
    assert out.tolist() == expected.tolist()
    cosine_assignment_row(image.numpy(), tokens.numpy(), text_pos, 0, threshold, out)  # no text: all unmatched
    assert out.tolist() == [-1] * 20


@pytest.mark.parametrize("after", [False, True])
def test_grouped_rows_equal_the_literal_algorithm(after):
    rng = np.random.default_rng(0)
    for n_text in (0, 1, 5):
        assignment = rng.integers(-1, n_text, (6, 9)) if n_text else np.full((6, 9), -1)
        out = np.empty((6, 9 + n_text), dtype=np.int64)
        grouped_rows(assignment, n_text, after, out)
        for row, a in zip(out, assignment):
            groups = [[k for k in range(9) if a[k] == j] for j in range(n_text)]
            expected = [k for k in range(9) if a[k] < 0]
            for j in range(n_text):
                expected += [9 + j] + groups[j] if after else groups[j] + [9 + j]
            assert row.tolist() == expected
