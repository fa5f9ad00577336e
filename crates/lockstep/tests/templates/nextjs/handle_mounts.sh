#!/usr/bin/env bash
# Keeps what the build writes into a mounted folder. A mount is empty (or holds what earlier
# deployments left) when the app runs, hiding the image's copy of that folder; so at the end of
# the build hook each mount's content is set aside in $STAGING, and in the deploy hook, when the
# mounts are there and writable, it is copied into them. The mounts come from
# PLATFORM_APPLICATION, the app's configuration as base64 JSON. The build has no PLATFORM_BRANCH;
# the deploy hook has one.
set -euo pipefail

STAGING="$PLATFORM_APP_DIR/.mounts-staging"

# One mount path per line, without a leading slash (`/.next` is the folder `.next`).
mount_paths() {
    echo "$PLATFORM_APPLICATION" | base64 -d | node -e '
        let text = "";
        process.stdin.on("data", (chunk) => { text += chunk; });
        process.stdin.on("end", () => {
            const mounts = JSON.parse(text).mounts || {};
            for (const key of Object.keys(mounts)) console.log(key.replace(/^\/+/, ""));
        });'
}

set_aside() {
    local mount=$1
    mkdir -p "$STAGING/$mount"
    if [ -d "$PLATFORM_APP_DIR/$mount" ]; then
        find "$PLATFORM_APP_DIR/$mount" -mindepth 1 -maxdepth 1 -exec mv -t "$STAGING/$mount" {} +
    fi
    echo "set aside the build's $mount"
}

put_back() {
    local mount=$1
    if [ -d "$STAGING/$mount" ]; then
        find "$PLATFORM_APP_DIR/$mount" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
        cp -R "$STAGING/$mount/." "$PLATFORM_APP_DIR/$mount/"
        echo "restored the build's $mount into its mount"
    fi
}

paths=$(mount_paths)
if [ -z "$paths" ]; then
    echo "handle_mounts: PLATFORM_APPLICATION names no mount" >&2
    exit 1
fi
for mount in $paths; do
    if [ -z "${PLATFORM_BRANCH:-}" ]; then
        set_aside "$mount"
    else
        put_back "$mount"
    fi
done
