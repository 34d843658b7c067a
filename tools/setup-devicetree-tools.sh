#!/usr/bin/env bash
# What the device-tree tests need beyond Debian packages, cached under ${SWIFTLET_CACHE:-~/.cache/swiftlet}:
#   dtschema/<version>/venv                    dtschema (dt-validate), pinned, with its dependencies pinned too
#   dtschema/<version>/linux-<ver>-schema.json the upstream bindings of Debian's linux-source, processed by dt-mk-schema
#   arm64/Image (and arm64/VERSION)            a real Debian arm64 kernel Image, for the Image-header test
# Each step is skipped when its result is there. A step that fails (no network, no PyPI) only warns: the tests that
# need its result are then skipped with that reason, and every other test still runs.
set -uo pipefail

CACHE=${SWIFTLET_CACHE:-$HOME/.cache/swiftlet}
DTSCHEMA_VERSION=2023.1
# dtschema 2023.1 matches the bindings of Linux 6.1; its dependencies are pinned to versions tested with it.
DTSCHEMA_REQUIREMENTS=(dtschema==2023.1 jsonschema==4.17.3 pylibfdt==1.7.2.post2 pyrsistent==0.20.0 rfc3987==1.3.8
                       ruamel.yaml==0.19.1 attrs==26.1.0)
LINUX_SOURCE_PACKAGE=linux-source-6.1
LINUX_SOURCE=/usr/src/linux-source-6.1.tar.xz

log() { echo "devicetree-tools: $*"; }
warn() { echo "devicetree-tools: warning: $*" >&2; }

dtschema_dir=$CACHE/dtschema/$DTSCHEMA_VERSION
venv=$dtschema_dir/venv

setup_dtschema() {
    # .complete is written last: a venv that pip left half-installed is rebuilt.
    if [[ -e $venv/.complete ]]; then return 0; fi
    log "installing dtschema $DTSCHEMA_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || { warn "python3 -m venv failed (apt-get install python3-venv)"; rm -rf "$venv"; return 1; }
    "$venv/bin/pip" install -q --disable-pip-version-check "${DTSCHEMA_REQUIREMENTS[@]}" ||
        { warn "pip install ${DTSCHEMA_REQUIREMENTS[*]} failed"; rm -rf "$venv"; return 1; }
    touch "$venv/.complete"
}

setup_schema() {
    local version
    version=$(dpkg-query -W -f '${Version}' "$LINUX_SOURCE_PACKAGE" 2>/dev/null) ||
        { warn "$LINUX_SOURCE_PACKAGE is not installed (tools/install-deps.sh installs it)"; return 1; }
    local schema=$dtschema_dir/linux-$version-schema.json
    if [[ -s $schema ]]; then return 0; fi
    log "processing the device-tree bindings of $LINUX_SOURCE_PACKAGE $version"
    local work
    work=$(mktemp -d) || return 1
    trap 'rm -rf "$work"' RETURN
    tar -xJf "$LINUX_SOURCE" -C "$work" --wildcards '*/Documentation/devicetree/bindings/*' ||
        { warn "cannot extract the bindings from $LINUX_SOURCE"; return 1; }
    "$venv/bin/dt-mk-schema" -j "$work"/*/Documentation/devicetree/bindings > "$schema.partial" 2> "$work/mk-schema.log" ||
        { warn "dt-mk-schema failed: $(tail -3 "$work/mk-schema.log")"; rm -f "$schema.partial"; return 1; }
    mv "$schema.partial" "$schema"
}

setup_arm64_image() {
    local dir=$CACHE/arm64
    if [[ -s $dir/Image ]]; then return 0; fi
    # A private apt state: the host's own architectures and package lists stay as they are.
    local apt=$dir/apt
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" && : > "$apt/status"
    local options=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$apt/lists"
                   -o "Dir::Cache=$apt/cache" -o "Dir::State::status=$apt/status" -o APT::Sandbox::User=root)
    log "fetching Debian's arm64 kernel package list"
    apt-get "${options[@]}" -qq update || { warn "apt-get update for arm64 failed"; return 1; }
    local image
    image=$(apt-cache "${options[@]}" depends linux-image-arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [[ -n $image ]] || { warn "apt-cache cannot resolve linux-image-arm64"; return 1; }
    log "downloading ${image}-unsigned (arm64)"
    (cd "$apt" && apt-get "${options[@]}" -qq download "${image}-unsigned:arm64") ||
        { warn "apt-get download ${image}-unsigned:arm64 failed"; return 1; }
    local deb
    deb=$(ls "$apt"/"${image}"-unsigned_*_arm64.deb | head -1)
    dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './boot/vmlinuz-*' > "$dir/Image.partial" ||
        { warn "no boot/vmlinuz in $deb"; rm -f "$dir/Image.partial"; return 1; }
    mv "$dir/Image.partial" "$dir/Image"
    basename "$deb" > "$dir/VERSION"
    rm -rf "$apt"
}

mkdir -p "$dtschema_dir" "$CACHE/arm64"
setup_dtschema && setup_schema
setup_arm64_image
exit 0 # warnings only: see above
