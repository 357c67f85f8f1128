"""What a commit builds to, and exports as, is pinned per graven version.

Incremental builds carry entries forward only from builds of the same graven version
(``builds.graven_version``), and ``verify --rebuild`` names what changed by version: an upgrade
review built one commit to two digests with two development snapshots that changed the glob rules
under one version string. A change to graven that changes these digests must bump the version (in
src/graven/__init__.py, which pyproject.toml reads) and add the new figures below, so that no two gravens of
one version build one commit differently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from conftest import Executable, Symlink
from graven import __version__

# The tree holds what the rules decide: bracket classes, "**", a directory named by a trailing "/",
# excludes of files and of directories, modes, symlinks, non-ASCII names.
FILES = {
    "app/main.py": "print('hi')\n",
    "app/tmp/scratch.py": "x\n",
    "app/README.md": "# app\n",
    "app/deep/er/mod.py": "y = 1\n",
    "app/link": Symlink("main.py"),
    "bin/run": Executable("#!/bin/sh\nexec python3 app/main.py\n"),
    "docs/readme": "read me\n",
    "docs/q/readme": "not me\n",
    "docsqreadme": "nor me\n",
    "docsxreadme": "but me\n",
    "data/café.txt": "crème\n",
    "data/sub/x.bin": b"\x00\xff",
    "lib/a.py": "a\n",
    "lib/b.txt": "b\n",
    "lib/sub/c.py": "c\n",
}
TOML = """[artifact]
name = "rules"
include = ["app/**", "bin/*", "docs[!q]readme", "data/", "lib/*.py"]
exclude = ["**/*.md", "app/tmp/"]
"""

# version -> (artifact digest, sha256 of `graven export -o x.tar`)
_V020 = (
    "sha256:e1b8fcac44054313486d36c463a171c76483de179f371eee6b1ec834766501e5",
    "051a1a397e0bd0687c5dec1ab365fb10fab84d9df66f01840d7ece8a237a8f84",
)
PINNED = {
    "0.2.0": _V020,
    "0.3.0": _V020,  # 0.3.0 changed the CLI and deploy policy, not what a commit builds to
    # 0.4.0 reads verified git trees (builds of 0.3.0 are not carried forward: a planted tree object
    # may have made them) and refuses group-writable directories and homes; the figures are the same
    "0.4.0": _V020,
}


def test_the_rules_of_this_version_are_pinned(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    repo = make_repo(tmp_path / "repo", FILES, TOML)
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    archive = tmp_path / "x.tar"
    assert run_cli("export", digest, "-o", archive)[0] == 0
    exported = hashlib.sha256(archive.read_bytes()).hexdigest()
    code, out, _ = run_cli("show", digest, "--files", "--json")
    paths = [entry["path"] for entry in json.loads(out)["entries"]]
    assert paths == [  # what the rules select, by path bytes
        "app/deep/er/mod.py",
        "app/link",
        "app/main.py",
        "bin/run",
        "data/café.txt",
        "data/sub/x.bin",
        "docsxreadme",  # a class never matches "/" (since 0.2.0): not docs/readme
        "lib/a.py",
    ]
    assert __version__ in PINNED, f"no pinned figures for graven {__version__}: add {(digest, exported)}"
    assert (digest, exported) == PINNED[__version__], (
        f"what a commit builds to (or exports as) changed under graven {__version__}: bump the version "
        "(src/graven/__init__.py), name the change in graven.service.reproduce's notes, "
        f"and pin {(digest, exported)} for it"
    )
