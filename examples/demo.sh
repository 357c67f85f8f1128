#!/usr/bin/env bash
# The graven demo: build the bundled shop example from a git commit, sign it, verify it, export it
# and import it into a second graven home that trusts only the public key.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/graven-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "a git repository with the shop example, committed at a fixed date"
cp -r "$here/shop" "$work/shop"
cd "$work/shop"
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid
export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
git init -q -b main . && git add -A && git commit -q -m "shop v1"
git log --oneline

export GRAVEN_HOME="$work/home"
step "a signing key for this graven home (private key 0600, public key trusted here)"
run graven keys generate --name ci

step "build the commit: graven.toml is read from the commit, the steps run in a bubblewrap sandbox"
digest=$(graven build | tail -n 1)
echo "$digest"

step "the same commit built again gives the same digest"
again=$(graven build 2>/dev/null | tail -n 1)
[ "$again" = "$digest" ] && echo "same digest: $again"

step "prove it: build twice, the second time varied (build path, file order, umask, hostname, TZ, locale)"
run graven build --check

step "a step that writes the clock into an output is caught by --check: exit 1, the path is named"
mkdir "$work/clock" && cd "$work/clock"
printf '[artifact]\nname = "clock"\n\n[build]\nsteps = ["mkdir out && date +%%s%%N > out/built-at"]\noutputs = ["out/"]\n' \
    > graven.toml
git init -q -b main . && git add -A && git commit -q -m "clock"
if graven build --check; then echo "--check did NOT catch the clock" >&2; exit 1; fi
echo "(exit 1, as expected)"
cd "$work/shop"

step "rebuild from the recorded commit (as nix build --check / guix challenge): same digest"
run graven verify "$digest" --rebuild

step "verify: every object re-hashed, provenance signed by a trusted key"
run graven verify "$digest"
run graven show "${digest:7:12}"

step "export a deterministic archive with its attestation and a Sigstore bundle"
run graven export "$digest" -o "$work/shop.tar.zst" --attestation "$work/shop.intoto.json" \
    --bundle "$work/shop.sigstore.json"
run graven export "$digest" -o "$work/shop-again.tar.zst"
cmp "$work/shop.tar.zst" "$work/shop-again.tar.zst" && echo "byte-identical exports"
zstd -dc "$work/shop.tar.zst" | tar -tvf - > "$work/listing.txt"   # GNU tar reads it
head -n 5 "$work/listing.txt"

step "a second graven home that trusts only the public key"
graven keys export ci > "$work/ci.pub"
export GRAVEN_HOME="$work/home2"
run graven keys trust "$work/ci.pub"
run graven import "$work/shop.tar.zst" --attestation "$work/shop.intoto.json"
run graven verify "$digest"
run graven attest verify "$work/shop.sigstore.json" --artifact "$digest"

step "tampering is caught: a changed object fails verification"
obj=$(find "$work/home2/objects/pack" -name '*.pack' | head -n 1)
chmod u+w "$obj"
printf 'X' | dd of="$obj" bs=1 seek=200 conv=notrunc status=none
if graven verify "$digest"; then echo "tampering was NOT detected" >&2; exit 1; fi
echo "(exit 1, as expected)"

step "artifacts"
export GRAVEN_HOME="$work/home"
run graven artifacts
echo
echo "demo finished: $digest"
