# The build hook (brought into .platform.app.yaml with `!include`, run by /bin/sh).

install_engine() {
    echo "* installing searchd $SEARCHD_VERSION"
    cp engine/searchd.py searchd
    chmod 755 searchd
}

install_runner() {
    echo "* installing pyrun $PYRUN_VERSION into ~/.local/bin"
    set -eu
    mkdir -p "$HOME/.local/bin"
    # `pyrun python SCRIPT` runs SCRIPT with the app's folder on the module path.
    printf '%s\n' '#!/bin/sh' \
        'if [ "$1" = python ]; then shift; fi' \
        'PYTHONPATH="$PLATFORM_APP_DIR${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"' \
        > "$HOME/.local/bin/pyrun"
    chmod 755 "$HOME/.local/bin/pyrun"
}

install_engine
install_runner
