# ruff: noqa: SIM300, PLR0124 - the comparison operators themselves are under test
"""Mutation-testing gaps in graven.model.digest.Digest: equality with other types and a strict order
(belongs in tests/unit/model/test_manifest.py or a new tests/unit/model/test_digest.py)."""

import pytest

from graven.model.digest import Digest

A = Digest("aa" * 32)
B = Digest("bb" * 32)


def test_a_digest_is_never_equal_to_its_text_and_comparing_does_not_crash() -> None:
    assert A != str(A)
    assert A != A.hex
    assert A != A.raw
    assert A != None  # noqa: E711 (the == operator itself is under test)
    assert A == Digest("aa" * 32)
    assert A in {Digest("aa" * 32)}


def test_the_order_is_strict_and_total() -> None:
    assert A < B and not B < A and not A < A
    assert A <= A and A <= B and not B <= A
    assert B > A and not A > B and not A > A
    assert A >= A and B >= A and not A >= B
    assert sorted([B, A, B]) == [A, B, B]


@pytest.mark.parametrize("other", [str(A), A.hex, 1])
def test_ordering_against_another_type_is_a_type_error(other: object) -> None:
    for compare in (A.__lt__, A.__le__, A.__gt__, A.__ge__):
        assert compare(other) is NotImplemented  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'<' not supported between instances"):
        A < other  # type: ignore[operator]  # noqa: B015
