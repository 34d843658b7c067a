#!/usr/bin/env bash
# schemathesis, for the Firecracker API's property-based test (Tests/Integration/host/test_firecracker_schema.py),
# in a venv cached under ${SWIFTLET_CACHE:-~/.cache/swiftlet}/schemathesis/<version>/venv. Skipped when it is there;
# a failure (no PyPI) only warns, and that test then fails saying schemathesis is missing.
set -uo pipefail

CACHE=${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}
SCHEMATHESIS_VERSION=4.32.5
venv=$CACHE/schemathesis/$SCHEMATHESIS_VERSION/venv

# .complete is written last: a venv that pip left half-installed is rebuilt.
if [[ -e $venv/.complete ]]; then exit 0; fi
echo "schemathesis: installing schemathesis $SCHEMATHESIS_VERSION into $venv"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv" || { echo "schemathesis: warning: python3 -m venv failed (apt-get install python3-venv)" >&2; rm -rf "$venv"; exit 0; }
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
    { echo "schemathesis: warning: pip install schemathesis==$SCHEMATHESIS_VERSION failed" >&2; rm -rf "$venv"; exit 0; }
touch "$venv/.complete"
