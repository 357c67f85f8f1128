"""``without_credentials``: no secret of a remote URL reaches the provenance or a log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.sources.git import without_credentials


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("https://TOKEN@github.com/o/r.git", "https://github.com/o/r.git"),
        ("https://gitlab-ci-token:SECRET@gitlab.com/o/r", "https://gitlab.com/o/r"),
        # an "@" in the user name: the host follows the last "@" (a review found the token kept)
        ("https://me@corp.com:SECRETTOKEN123@dev.azure.com/org/repo", "https://dev.azure.com/org/repo"),
        ("https://a@b:c@d@host:8443/p?q=x@y#f@g", "https://host:8443/p?q=x@y#f@g"),
        ("ssh://git@host/r.git", "ssh://git@host/r.git"),  # a user name alone is no secret
        ("ssh://git:pw@host/r.git", "ssh://host/r.git"),
        ("git@host:path.git", "git@host:path.git"),
        ("https://host/path@v1", "https://host/path@v1"),  # an "@" after the authority stays
        ("/srv/repos/r.git", "/srv/repos/r.git"),
    ],
)
def test_credentials_are_removed(url: str, public: str) -> None:
    assert without_credentials(url) == public


@given(
    user=st.text(st.sampled_from("abc:@%.-"), min_size=1),
    secret=st.text(st.sampled_from("SECRETX9"), min_size=4),
    host=st.sampled_from(["example.com", "h:8080", "10.0.0.1"]),
)
def test_no_secret_is_left_whatever_the_user_name(user: str, secret: str, host: str) -> None:
    url = f"https://{user}:{secret}@{host}/repo.git"
    assert without_credentials(url) == f"https://{host}/repo.git"
