"""Values made and checked on the hot path without the library that usually does
it: ids and reference ids."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actors import wallets as w
from actors.errors import InvalidInput
from actors.runtime import canonical_id, new_id, random_uuids


@pytest.mark.parametrize(
    "make", [lambda n: [new_id() for _ in range(n)], lambda n: list(map(str, random_uuids(n)))]
)
def test_ids_are_unique_canonical_version_4_uuids(make):
    ids = make(5_000)
    assert len(set(ids)) == len(ids)
    for made in ids:
        parsed = uuid.UUID(made)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert canonical_id(made) == made


@given(st.text(max_size=210) | st.from_regex(r"[\w:.\-]{1,200}", fullmatch=True))
@example("a" * 200)
@example("a" * 201)
def test_a_reference_is_accepted_exactly_when_the_pattern_matches(ref):
    matches = re.fullmatch(r"[\w:.\-]{1,200}", ref) is not None
    try:
        w.validate(w.Release(ref))
    except InvalidInput:
        assert not matches
    else:
        assert matches


def test_a_subclass_of_a_message_is_checked_as_its_base():
    class Sneaky(w.Reserve):
        pass

    with pytest.raises(InvalidInput):
        w.validate(Sneaky(100, "no spaces allowed"))
    with pytest.raises(InvalidInput):
        w.validate(Sneaky(-1, "fine"))
