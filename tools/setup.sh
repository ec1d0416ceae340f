#!/bin/sh
# speedproxy set-up for a fresh Debian/Ubuntu machine with python3 and git.
#
#   sh tools/setup.sh demo   install into .venv and start speedproxy on the
#                            shipped config with its demo origin (port 8080)
#   sh tools/setup.sh test   install with test dependencies and run the suite
#   sh tools/setup.sh stop   stop the demo started above
set -eu
cd "$(dirname "$0")/.."
VENV=${SPEEDPROXY_VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "setup: need root (or sudo) to run: $*" >&2; exit 1; fi
}

make_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return
    fi
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately.
        echo "setup: installing python3-venv" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
}

case "${1:-}" in
demo)
    make_venv
    "$VENV/bin/python" -m pip install -q .
    mkdir -p run
    if [ -f run/speedproxy.pid ] && kill -0 "$(cat run/speedproxy.pid)" 2>/dev/null; then
        echo "speedproxy already running (pid $(cat run/speedproxy.pid)); sh tools/setup.sh stop"
        exit 0
    fi
    "$VENV/bin/twistd" --pidfile=run/speedproxy.pid --logfile=run/speedproxy.log \
        speedproxy --config etc/speedproxy.yaml --demo-origin
    # twistd returns once daemonised; wait (bounded) for the listener.
    i=0
    until "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', 8080), 1).close()" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then echo "speedproxy did not start; see run/speedproxy.log" >&2; tail -20 run/speedproxy.log >&2; exit 1; fi
        sleep 0.1
    done
    echo "speedproxy is running on http://localhost:8080/ (log: run/speedproxy.log)"
    echo "try: curl -i localhost:8080/     stop: sh tools/setup.sh stop"
    ;;
stop)
    if [ -f run/speedproxy.pid ]; then kill "$(cat run/speedproxy.pid)" && echo "stopped"; else echo "not running"; fi
    ;;
test)
    make_venv
    "$VENV/bin/python" -m pip install -q ".[test]"
    # Integration tests use curl when present; install it where we can.
    command -v curl >/dev/null || as_root apt-get install -y -qq curl >/dev/null 2>&1 || true
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests
    ;;
*)
    echo "usage: sh tools/setup.sh demo|test|stop" >&2
    exit 2
    ;;
esac
