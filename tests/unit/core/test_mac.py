"""graven.core.mac.Hmac256 is HMAC-SHA256 (RFC 2104), checked against the standard library's."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from graven.core.mac import Hmac256


def test_rfc4231_case_2() -> None:
    # RFC 4231, test case 2: a key shorter than the block.
    tag = Hmac256(b"Jefe").hexdigest(b"what do ya want for nothing?")
    assert tag == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_rfc4231_case_6_key_longer_than_block() -> None:
    tag = Hmac256(b"\xaa" * 131).hexdigest(b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert tag == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"


@given(st.binary(max_size=200), st.lists(st.binary(max_size=300), max_size=5))
def test_equals_hmac_digest_for_any_key_and_messages(key: bytes, messages: list[bytes]) -> None:
    mac = Hmac256(key)
    for message in messages:  # one object, many messages: no state leaks from one to the next
        assert mac.digest(message) == hmac.digest(key, message, "sha256")
        assert mac.hexdigest(message) == hmac.new(key, message, hashlib.sha256).hexdigest()
