"""The split and fraction checks that every DataModule shares."""

import pytest
import torch
from torch.utils.data import random_split

from llm_course.errors import ConfigError
from llm_course.loaders import check_fractions, split_indices


@pytest.mark.parametrize(("n", "val", "test"), [(506, 0.1, 0.1), (5000, 0.1, 0.1), (120, 0.25, 0.0), (7, 0.3, 0.2)])
def test_split_indices_are_random_splits_and_cover_every_row_once(n, val, test):
    train, val_idx, test_idx = split_indices(n, val, test, seed=42)
    n_val, n_test = round(n * val), round(n * test)
    # the same indices as the seeded random_split the DataModules used before, so earlier results reproduce
    reference = random_split(range(n), [n - n_val - n_test, n_val, n_test], torch.Generator().manual_seed(42))
    assert [t.tolist() for t in (train, val_idx, test_idx)] == [list(s.indices) for s in reference]
    assert (len(val_idx), len(test_idx)) == (n_val, n_test)
    assert sorted(torch.cat([train, val_idx, test_idx]).tolist()) == list(range(n))
    assert train.dtype == torch.long


def test_split_indices_depend_on_the_seed_only():
    assert torch.equal(split_indices(100, 0.2, 0.1, seed=3)[1], split_indices(100, 0.2, 0.1, seed=3)[1])
    assert not torch.equal(split_indices(100, 0.2, 0.1, seed=3)[1], split_indices(100, 0.2, 0.1, seed=4)[1])


@pytest.mark.parametrize(("val", "test", "message"), [
    (0.0, 0.1, r"data.val_fraction=0.0 must lie in \(0, 1\)$"),
    (1.0, 0.0, r"data.val_fraction=1.0 must lie in \(0, 1\)$"),
    (0.1, -0.1, r"data.test_fraction=-0.1 must lie in \[0, 1\)$"),
    (0.1, float("nan"), r"data.test_fraction=nan must lie in \[0, 1\)$"),
    (0.6, 0.4, r"data.val_fraction \+ data.test_fraction = 0.6 \+ 0.4 = 1 leaves no training rows"),
])  # fmt: skip
def test_fractions_out_of_range_name_the_key_and_the_value(val, test, message):
    with pytest.raises(ConfigError, match=message) as exc:
        check_fractions(val, test)
    assert isinstance(exc.value, ValueError)  # callers that catch ValueError still do


def test_a_split_that_leaves_no_training_row_is_refused():
    with pytest.raises(ConfigError, match="leave no training rows out of 2"):
        split_indices(2, 0.5, 0.4)
