#!/usr/bin/env bash
# The graven demo: build the bundled shop example from a git commit, sign it, verify it, export it
# and import it into a second graven home that trusts only the public key (and, when docker-registry is
# installed, push it to a throwaway OCI registry and pull it into a third).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/graven-demo.XXXXXX")
registry_pid=""
cleanup() {
    [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
    # graven makes deployed releases read-only: without write permission back on their directories, only
    # root could remove them (chmod -R does not follow symbolic links)
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
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

step "prove it: build twice, the second time varied (build path, file order, file system, umask, hostname, TZ, locale, limits, a later second)"
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
printf '$ graven export %s -o - | cmp - shop.tar.zst\n' "$digest"
graven export "$digest" -o - | cmp - "$work/shop.tar.zst" && echo "byte-identical exports (the second to standard output)"
zstd -dc "$work/shop.tar.zst" | tar -tvf - > "$work/listing.txt"   # GNU tar reads it
head -n 5 "$work/listing.txt"

step "a second graven home that trusts only the public key"
graven keys export ci > "$work/ci.pub"
export GRAVEN_HOME="$work/home2"
run graven keys trust "$work/ci.pub"
run graven import "$work/shop.tar.zst" --attestation "$work/shop.intoto.json"
run graven verify "$digest"
run graven attest verify "$work/shop.sigstore.json" --artifact "$digest"

step "through an OCI registry: push from the build home, pull by digest into a third one"
if command -v docker-registry >/dev/null; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$work/registry"
    printf 'version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n  secret: demo\n' \
        "$work/registry/data" "$port" > "$work/registry/config.yml"
    docker-registry serve "$work/registry/config.yml" > "$work/registry/log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 50); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null && break; sleep 0.1; done
    echo "$ graven push $digest 127.0.0.1:$port/demo/shop:v1"
    pinned=$(GRAVEN_HOME="$work/home" graven push "$digest" "127.0.0.1:$port/demo/shop:v1")
    echo "$pinned"
    export GRAVEN_HOME="$work/home3"
    run graven keys trust "$work/ci.pub"
    run graven pull "127.0.0.1:$port/demo/shop@${pinned##*@}"
    run graven verify "$digest"
    kill "$registry_pid" && registry_pid=""
    export GRAVEN_HOME="$work/home2"
else
    echo "(skipped: no docker-registry here; apt-get install docker-registry to see it)"
fi

step "tampering is caught: a changed object fails verification"
obj=$(find "$work/home2/objects/pack" -name '*.pack' | head -n 1)
chmod u+w "$obj"
printf 'X' | dd of="$obj" bs=1 seek=200 conv=notrunc status=none
if graven verify "$digest"; then echo "tampering was NOT detected" >&2; exit 1; fi
echo "(exit 1, as expected)"

step "artifacts"
export GRAVEN_HOME="$work/home"
run graven artifacts

step "environments: prod requires a healthy staging deployment, so deploying there first is refused"
export GRAVEN_DEPLOY_ROOT="$work/srv"       # the shop's [env] paths are relative to this root
if graven deploy "$digest" prod; then echo "requires was NOT enforced" >&2; exit 1; fi
echo "(exit 1, as expected)"

step "deploy to staging: settings, config and health check come from the signed graven.toml"
run graven deploy "$digest" staging
ls -l "$work/srv/shop/staging"
echo "config: $(head -n 1 "$work/srv/shop/staging/config")"

step "promote: prod gets exactly the digest that is live and healthy in staging"
run graven promote staging prod

step "a second version: see what would change, then deploy it (unchanged files are linked, not copied)"
cd "$work/shop"
sed -i 's/"price_cents": 450/"price_cents": 475/' app/catalog.py
git commit -q -am "shop v2: green tea costs more"
digest2=$(graven build 2>/dev/null | tail -n 1)
run graven deploy "$digest2" staging --plan
run graven deploy "$digest2" staging
run graven promote staging prod

step "roll prod back without a rebuild: the old release is still on disk, so it is a verified switch"
run graven rollback prod --reason "demo: the price change is not approved"
if graven promote staging prod; then echo "the hold was NOT enforced" >&2; exit 1; fi
echo "(exit 1: prod is held after a rollback, so automation cannot undo it)"
run graven unhold prod --reason "demo: approved after all"

step "status, history and the audit log"
run graven status
run graven history prod
run graven log --env prod
run graven log verify
echo
echo "demo finished: $digest"

step "drift: an intruder appends to a deployed file in prod and puts its mtime and modes back"
victim="$work/srv/shop/prod/current/app/catalog.py"
chmod u+w "$(dirname "$victim")" "$victim"
cp -p "$victim" "$work/catalog.orig"
printf '\nPRODUCTS.clear()\n' >> "$victim"
touch -r "$work/catalog.orig" "$victim"      # the mtime is back; the ctime cannot be
chmod a-w "$victim" "$(dirname "$victim")"
if graven drift; then echo "drift was NOT detected" >&2; exit 1; fi
echo "(exit 1: the default check re-hashed the one file whose stat changed, and named it)"

step "heal: prod's release is written back from the store; a full check (every file re-hashed) is clean"
run graven heal prod
run graven drift --full
run graven log --env prod
echo
echo "drift demo finished: prod matches $(graven status --json | python3 -c 'import json, sys; print([e["live"] for e in json.load(sys.stdin) if e["env"] == "prod"][0])')"
