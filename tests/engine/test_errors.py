"""The ground floor's words: the checks every layer shares, and warnings that point at the user's line."""
import warnings

import pytest

import kdnb
from kdnb.errors import first_line, is_integer, is_number, suggest


@pytest.mark.parametrize("value, integer, number", [(3, True, True), (0, True, True), (2.5, False, True),
                                                    (True, False, False), (False, False, False),
                                                    ("3", False, False), (None, False, False)])
def test_a_bool_is_neither_a_count_nor_a_number(value, integer, number):
    assert is_integer(value) is integer and is_number(value) is number


def test_first_line_of_a_long_error_or_its_type():
    assert first_line(RuntimeError("mat1 and mat2 shapes cannot be multiplied\n  at frame 1\n  at frame 2")) == \
        "mat1 and mat2 shapes cannot be multiplied"
    assert first_line(ValueError("")) == "ValueError" and first_line(KeyError()) == "KeyError"


def test_suggest_a_close_name_or_list_them():
    assert suggest("temprature", ["temperature", "alpha"]) == "did you mean 'temperature'?"
    assert suggest("zzz", ["a", "b"]) == "choose from 'a', 'b'"


def test_a_warning_from_deep_inside_kdnb_points_at_the_users_line():
    loader = kdnb.datasets.load("synthetic", batch_size=32, seed=0)[0]
    net = kdnb.models.mlp(20, [8], 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = kdnb.train(net, loader, epochs=1, loss=lambda logits, y: logits.sum() * float("nan"),
                             progress=False, plot=False)  # a non-finite loss at the first step
    assert history.status == "diverged"
    diverged = [w for w in caught if "loss became" in str(w.message)]
    assert diverged and all(w.filename == __file__ for w in diverged)
