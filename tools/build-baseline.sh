#!/bin/sh
# tools/build-baseline.sh REV: build Swiftlet as it was at git revision REV, for A/B benchmarks
# (`make bench BENCH=net BASELINE=REV` runs it beside the current build, in the same lab run).
#
# Prints the path of the executable:
#   ${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}/baseline/<full commit id>/swiftlet
# A commit's source never changes, so the commit id is the whole cache key; a second call for the same REV only
# prints the path. The build is the Makefile's `build` (release, static), done in a temporary detached worktree
# with its own scratch directory; both are removed afterwards, only the executable is kept.
set -eu
rev=${1:?usage: tools/build-baseline.sh REV (a commit, tag or branch of this repository)}
root=$(git rev-parse --show-toplevel)
commit=$(git -C "$root" rev-parse --verify --quiet "$rev^{commit}") ||
    { echo "build-baseline: $rev is not a commit of this repository (git rev-parse found none)" >&2; exit 1; }
cache=${SWIFTLET_CACHE:-${HOME:?HOME is not set and SWIFTLET_CACHE is not given}/.cache/swiftlet}/baseline/$commit
if [ -x "$cache/swiftlet" ]; then echo "$cache/swiftlet"; exit 0; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-baseline.XXXXXX")
cleanup() {
    git -C "$root" worktree remove --force "$work/src" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
git -C "$root" worktree add --detach "$work/src" "$commit" >/dev/null 2>&1 ||
    { echo "build-baseline: git worktree add for $commit failed" >&2; exit 1; }
echo "build-baseline: building $(git -C "$root" log -1 --format='%h %s' "$commit" | cut -c1-80) (release, static)" >&2
if ! ${SWIFT:-swift} build --package-path "$work/src" --scratch-path "$work/build" -c release \
    --static-swift-stdlib -Xswiftc -static-executable >"$work/build.log" 2>&1; then
    tail -n 30 "$work/build.log" >&2
    echo "build-baseline: the build of $commit failed (its log is above)" >&2
    exit 1
fi
mkdir -p "$cache"
cp "$work/build/release/swiftlet" "$cache/swiftlet.tmp"
mv "$cache/swiftlet.tmp" "$cache/swiftlet"
echo "$cache/swiftlet"
