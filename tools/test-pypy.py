#!/usr/bin/env python3
"""The README's PyPy install, as written, on Debian's pypy3; then a proxied request.

    python3 tools/test-pypy.py [--work DIR] [--timeout SECONDS]

Installs ``pypy3`` and ``pypy3-venv`` with apt (root) when ``pypy3`` is
missing, copies the clone, runs the install command found in README.rst's
PyPy paragraph (the indented line starting ``pypy3 -m venv``) in the copy,
without pip's cache, then ``venv/bin/twistd speedproxy --check`` and
``venv/bin/twistd -n speedproxy`` with one PyPy worker in front of a local
origin: one request must come back through it.  Exit 0 when all passed, 1
on a failure (printed as ``FAILED: what``), 0 with ``SKIPPED`` when no
pypy3 can be had on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ci_support import (  # noqa: E402
    Failed,
    Origin,
    Steps,
    apt_install,
    free_port,
    get_json,
    proxied_request,
    run,
    tail_of,
    wait_until,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_command() -> str:
    """The PyPy install command of README.rst (an indented literal line)."""
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^\s{4,}(pypy3 -m venv \S+ && \S+/bin/pip install .*)$", line.rstrip("\n"))
            if match:
                return match.group(1).strip()
    raise Failed("README.rst has no indented 'pypy3 -m venv ... && .../bin/pip install ...' line")


class PyPyTest:
    def __init__(self, args: argparse.Namespace) -> None:
        self.work = os.path.abspath(args.work)
        self.src = os.path.join(self.work, "src")
        self.log = os.path.join(self.work, "commands.log")
        self.proxy_log = os.path.join(self.work, "speedproxy.log")
        self.timeout = args.timeout
        self.venv = ""

    def get_pypy(self) -> bool:
        if shutil.which("pypy3") and run(["pypy3", "-c", "import venv, ensurepip"], timeout=60, check=False,
                                         quiet=True).returncode == 0:
            return True
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return False
        try:
            apt_install(["pypy3", "pypy3-venv"], timeout=600, log=self.log)
        except Failed as failure:
            print(f"apt-get could not install pypy3: {failure}")
            return False
        return bool(shutil.which("pypy3"))

    def copy_clone(self) -> None:
        shutil.rmtree(self.src, ignore_errors=True)
        listed = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                     timeout=60, quiet=True).stdout.decode().split("\0")
        for name in listed:
            source = os.path.join(ROOT, name)
            if not name or not os.path.lexists(source):
                continue
            target = os.path.join(self.src, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)

    def install(self) -> None:
        command = readme_command()
        version = run(["pypy3", "--version"], timeout=60, quiet=True).text.strip().replace("\n", " ")
        print(f"{version}\nREADME: {command}")
        env = dict(os.environ, PIP_NO_CACHE_DIR="1")  # as on a machine that never ran pip
        run(["sh", "-c", command], cwd=self.src, timeout=900, log=self.log, env=env, what=command)
        self.venv = os.path.join(self.src, re.search(r"(\S+)/bin/pip", command).group(1))
        implementation = run([os.path.join(self.venv, "bin", "python"), "-c",
                              "import platform, cryptography; print(platform.python_implementation(), "
                              "platform.python_version(), 'cryptography', cryptography.__version__)"],
                             timeout=60, quiet=True).text.strip()
        print(implementation)
        if not implementation.startswith("PyPy"):
            raise Failed(f"the venv does not run PyPy: {implementation}")

    def config(self, origin: Origin) -> str:
        self.port, self.admin_port = free_port(), free_port()
        path = os.path.join(self.work, "speedproxy.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                f"server: {{host: 127.0.0.1, port: {self.port}, workers: 1, shutdown_grace: 5s}}\n"
                f'admin: {{listen: "127.0.0.1:{self.admin_port}"}}\n'
                f"backends:\n  default:\n    - {{id: origin, host: 127.0.0.1, port: {origin.port}}}\n"
                f'routing:\n  default: {{path: "/", upstream: default}}\n'
            )
        return path

    def check(self, config: str) -> None:
        out = run([os.path.join(self.venv, "bin", "twistd"), "speedproxy", "--config", config, "--check"],
                  timeout=120, cwd=self.work).text
        print(out.strip())

    def serve(self, config: str) -> None:
        log = open(self.proxy_log, "wb")
        process = subprocess.Popen(
            [os.path.join(self.venv, "bin", "twistd"), "-n", "--pidfile=", "--logfile=-", "speedproxy", "--config", config],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.work, start_new_session=True,
        )
        log.close()
        try:
            def ready() -> bool:
                if process.poll() is not None:
                    raise Failed(f"twistd exited {process.returncode}:\n{tail_of(self.proxy_log)}")
                status = get_json(f"http://127.0.0.1:{self.admin_port}/status", timeout=2)
                return status["status"] == "running" and status["workers_ready"] == 1

            wait_until(ready, 90, "the PyPy master and worker to be ready")
            proxied_request(self.port, "/pypy-check")
            process.send_signal(signal.SIGTERM)
            code = process.wait(30)
            if code != 0:
                raise Failed(f"twistd exited {code} on SIGTERM:\n{tail_of(self.proxy_log)}")
            print("stopped: exit 0")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def main(self) -> int:
        os.makedirs(self.work, exist_ok=True)
        open(self.log, "w").close()
        steps = Steps(time.monotonic() + self.timeout)
        try:
            if not steps.run("pypy3 and pypy3-venv", self.get_pypy):
                print("SKIPPED: no pypy3 (with venv) on this machine and none to install")
                return 0
            steps.run("copy the clone", self.copy_clone)
            steps.run("README's PyPy install, as written", self.install)
            with Origin() as origin:
                config = self.config(origin)
                steps.run("twistd speedproxy --check (PyPy)", lambda: self.check(config))
                steps.run("serve one request through a PyPy worker", lambda: self.serve(config))
        except Failed:
            print(f"commands log: {self.log}")
            return 1
        finally:
            steps.summary()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "pypy-test"))
    parser.add_argument("--timeout", type=float, default=1200, help="for the whole test, seconds (1200)")
    return PyPyTest(parser.parse_args()).main()


if __name__ == "__main__":
    sys.exit(main())
