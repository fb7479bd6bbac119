"""Child names are valid Kubernetes names whatever the ModelDeployment is called,
and two ModelDeployments never get the same child."""

from __future__ import annotations

import hashlib
import re

import pytest

from turnpike.render import child_name, label_value
from turnpike.render.names import is_dns1035_label, is_label_value

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def assert_dns1035(name: str) -> None:
    assert len(name) <= 63, name
    assert DNS1035.fullmatch(name), name


@pytest.mark.parametrize("name", ["llama", "llama-3-8b", "a", "m" * 63, "gpt2"])
def test_valid_names_are_kept_verbatim(name: str) -> None:
    assert child_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "m" * 64,
        "x" * 253,
        "7b-chat",
        "0",
        "llama.v2",
        "a.b.c",
        "3.1-instruct",
        "-leading-dash",
        "trailing-dash-",
        "",
        "ünïcode",
        "UPPER",
        "a" * 62 + "-b",
        "a" * 62 + ".b",
    ],
)
def test_any_name_gives_a_valid_dns1035_label(name: str) -> None:
    assert_dns1035(child_name(name))
    assert_dns1035(child_name(name, "metrics"))


def test_exactly_63_characters_is_not_truncated() -> None:
    name = "a" + "b" * 61 + "c"
    assert len(name) == 63
    assert child_name(name) == name


def test_64_characters_is_shortened_to_63_at_most() -> None:
    name = "a" * 64
    assert len(child_name(name)) <= 63
    assert child_name(name).startswith("a" * 40)


def test_name_starting_with_a_digit_gets_a_letter_prefix() -> None:
    derived = child_name("7b-chat")
    assert derived.startswith("md-7b-chat-")
    assert_dns1035(derived)


def test_derived_name_does_not_collide_with_the_literal_prefixed_name() -> None:
    # "7b" cannot be called "md-7b": someone else may have that name already.
    assert child_name("7b") != child_name("md-7b")


def test_long_names_sharing_a_prefix_do_not_collide() -> None:
    prefix = "organisation-team-llama-3-70b-instruct-quantised-awq-"
    first, second = prefix + "production-eu", prefix + "staging-canary"
    assert len(first) > 63 and len(second) > 63
    assert child_name(first) != child_name(second)
    assert child_name(first).startswith(prefix[:40])


def test_names_differing_only_in_replaced_characters_do_not_collide() -> None:
    assert child_name("llama.v2") != child_name("llama-v2")
    assert child_name("llama.v2") != child_name("llama_v2")


def test_dotted_names_stay_readable() -> None:
    assert child_name("llama.v2").startswith("llama-v2-")


def test_names_are_stable_across_processes() -> None:
    # Children must keep their names when the operator restarts, so the hash is
    # sha256 (documented) and not str.__hash__, which is salted per process.
    digest = hashlib.sha256(b"x" * 100).hexdigest()[:8]
    assert child_name("x" * 100) == "x" * 54 + "-" + digest


def test_suffix_survives_truncation() -> None:
    derived = child_name("y" * 100, "metrics")
    assert derived.endswith("-metrics")
    assert_dns1035(derived)


def test_short_name_with_suffix_is_plain_concatenation() -> None:
    assert child_name("llama", "canary") == "llama-canary"


@pytest.mark.parametrize("suffix", ["-x", "X", "a_b", "s" * 21, "x-"])
def test_invalid_suffix_is_a_programming_error(suffix: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        child_name("llama", suffix)


@pytest.mark.parametrize("value", ["llama", "Llama_3.1", "7b", "a" * 63])
def test_valid_label_values_are_kept(value: str) -> None:
    assert label_value(value) == value


@pytest.mark.parametrize("value", ["a" * 64, "x" * 253, "-x-", "a b", "", "é", ".hidden"])
def test_any_value_gives_a_valid_label_value(value: str) -> None:
    derived = label_value(value)
    assert len(derived) <= 63
    assert LABEL_VALUE.fullmatch(derived)


def test_long_label_values_sharing_a_prefix_stay_distinct() -> None:
    # These labels select pods: equal values would let one Service reach
    # another ModelDeployment's pods.
    assert label_value("p" * 63 + "a") != label_value("p" * 63 + "b")


# --- Issue 11: the mapping is injective, and "$" means end of text ------------------


def test_a_derived_name_is_never_another_model_deployments_name_as_is() -> None:
    # Defect 4: "a.b" derived "a-b-2e7336dc", which a ModelDeployment could be called.
    derived = child_name("a.b")
    assert derived == "a-b-" + hashlib.sha256(b"a.b").hexdigest()[:8]
    assert child_name(derived) != derived
    assert_dns1035(child_name(derived))


@pytest.mark.parametrize("name", ["a.b", "7b", "x" * 100, "Llama", "a-b-2e7336dc"])
def test_names_derived_from_derived_names_differ(name: str) -> None:
    derived = child_name(name)
    assert child_name(derived) != derived
    assert child_name(derived, "metrics") != child_name(name, "metrics")


def test_names_that_end_like_a_hash_are_derived_too() -> None:
    assert child_name("model-20261201").startswith("model-20261201-")
    assert child_name("model-2026120") == "model-2026120"  # seven digits: no hash shape
    assert child_name("model-2026120g") == "model-2026120g"


def test_long_names_do_not_collide_in_the_selector_label() -> None:
    # Defect 4: a 64-character name's label, "p"*54 + "-" + hash, is a valid
    # 63-character name someone else could have; their pods would be selected too.
    long = "p" * 64
    derived = label_value(long)
    assert len(derived) <= 63 and LABEL_VALUE.fullmatch(derived)
    assert label_value(derived) != derived
    assert label_value("-") != label_value("x")


@pytest.mark.parametrize("name", ["llama\n", "a\n", "m" * 62 + "\n"])
def test_a_trailing_newline_is_not_a_valid_name(name: str) -> None:
    # Defect 5: re.match with "$" accepted "llama\n" as a DNS-1035 label.
    assert not is_dns1035_label(name)
    assert_dns1035(child_name(name))
    assert "\n" not in child_name(name)
    assert not is_label_value(name)
    assert "\n" not in label_value(name)


def test_a_suffix_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="suffix"):
        child_name("llama", "metrics\n")
