"""Where GRAVEN_HOME is when it is not set: ``$XDG_DATA_HOME/graven``, else ``~/.local/share/graven``."""

from __future__ import annotations

from pathlib import Path

import pytest

from graven.home import Home


def test_graven_home_wins() -> None:
    home = Home.from_env({"GRAVEN_HOME": "/srv/g", "XDG_DATA_HOME": "/x", "HOME": "/h"})
    assert home.root == Path("/srv/g")


def test_an_absolute_xdg_data_home_is_used() -> None:
    assert Home.from_env({"XDG_DATA_HOME": "/x/data", "HOME": "/h"}).root == Path("/x/data/graven")


def test_a_relative_xdg_data_home_is_ignored_as_the_spec_says() -> None:
    """A relative value would put the home (keys, store, database) in whatever directory graven runs."""
    for relative in ("data", "./data", ""):
        assert Home.from_env({"XDG_DATA_HOME": relative, "HOME": "/h"}).root == Path("/h/.local/share/graven")


def test_a_relative_home_given_to_the_library_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An architecture review: Home(Path("home")) failed with a message about a database URL
    (sqlite:///home/graven.db) the caller never gave."""
    from graven.home import Home

    monkeypatch.chdir(tmp_path)
    home = Home(Path("home"))
    assert home.root == tmp_path / "home"
    assert home.db_url.endswith(f"{tmp_path}/home/graven.db"), home.db_url
