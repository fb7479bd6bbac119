"""Status is written with JSON merge patches: what left the status must leave the store.

A key that disappeared from a map (a pool whose grant went to zero) used to stay
in the stored status, so every later pass saw a difference and wrote again."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.fakekube import json_merge
from turnpike.reconcile.diff import merge_patch

scalars = st.one_of(st.booleans(), st.integers(), st.text(max_size=5))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=3), json_values, max_size=5)


@given(objects, objects)
def test_the_patch_turns_the_stored_status_into_the_new_one(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert json_merge(old, merge_patch(old, new)) == new


def test_a_pool_that_left_a_map_is_nulled_and_nothing_else_is_sent() -> None:
    old = {"granted": {"NVIDIA-L4": 3}, "budget": {"NVIDIA-L4": 5}, "consumerCount": 1}
    new = {"granted": {}, "budget": {"NVIDIA-L4": 5}, "consumerCount": 0}
    assert merge_patch(old, new) == {"granted": {"NVIDIA-L4": None}, "consumerCount": 0}
