"""`graven watch --heal` and a file that something keeps changing (an application that rewrites its
own file every second): each heal succeeds, the file drifts again at once, and the watcher healed it
again and again, as fast as it noticed, forever: four audit entries and two alerts per round, several
times a second. What a heal restored drifting again soon after is now held back as a heal that fails
is (the interval, then twice as long each time), and said in one `heal` line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_drift_watch import Watcher, wait_for

from graven.drift.watch import WatchOptions
from graven.service import drift_watch
from graven.service.drift_heal import HealResult
from graven.service.drift_heal import heal as real
from helpers_deploy import World, append_to


def test_a_file_rewritten_after_every_heal_is_not_healed_again_and_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    main = (world.env_dir("staging") / "current").resolve() / "app/main.py"
    heals: list[bool] = []

    def heal_then_rewritten(*args: Any, **kwargs: Any) -> HealResult:
        """The application writes its file again as soon as each heal is done: every time."""
        result = real(*args, **kwargs)
        heals.append(result.ok)
        append_to(main, b"# the application's own line\n")
        return result

    monkeypatch.setattr(drift_watch, "heal", heal_then_rewritten)
    watcher = Watcher(world, WatchOptions(interval=60, heal=True, as_json=True))
    try:
        assert wait_for(lambda: watcher.checks() >= 1)
        append_to(main, b"# the application's own line\n")

        def held_back() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in list(watcher.lines)]
            return [d for d in lines if d["type"] == "heal" and "again" in d.get("error", "")]

        assert wait_for(lambda: bool(held_back()) or len(heals) >= 6, timeout=10)
        for _ in range(2):  # the application goes on: its drift is still found...
            checked = watcher.checks() + 1
            append_to(main, b"# the application's own line\n")
            assert wait_for(lambda: watcher.checks() >= checked, timeout=10)  # noqa: B023 (waited here)
    finally:
        watcher.close()
    assert heals == [True]  # ... but healed once, not again while it keeps coming back
    [line] = held_back()
    assert line["env"] == "staging" and line["ok"] is False and line["retry_in"] == 60
    assert "app/main.py drifted again" in line["error"], line
