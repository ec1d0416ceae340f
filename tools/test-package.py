#!/usr/bin/env python3
"""End-to-end test of the Debian package, on this machine (root, Debian 12).

    python3 tools/test-package.py [--work DIR] [--keep] [--timeout SECONDS]

1. installs the build tools (debhelper, dh-virtualenv, lintian...) with apt;
2. copies the clone (its tracked and unignored files) and runs
   ``dpkg-buildpackage -us -uc -b`` at its top; lintian must report no error;
3. ``apt-get install ./speedproxy_<version>_<arch>.deb``: user, group,
   conffile, directories, logrotate, unit (enabled), plugin cache, sysctl
   example not applied; ``systemd-analyze verify`` on the installed unit;
4. edits the conffile, then starts speedproxy exactly as the unit's
   ExecStartPre/ExecStart/ExecStartPost say, as the unit's User= with its
   capabilities, no-new-privs and LimitNOFILE (systemd is not PID 1 here),
   on port 80 if free (CAP_NET_BIND_SERVICE); proxies a request to a local
   origin, checks the workers' CPU affinity, reloads with ExecReload
   (SIGHUP), reopens the access log as logrotate's postrotate does (SIGUSR1)
   and stops it as KillMode=mixed does;
5. rebuilds with a bumped version and upgrades over the installed package:
   the edited conffile must survive (no prompt), and the upgraded package
   must serve again;
6. ``apt-get remove`` keeps the config; ``apt-get purge`` removes config,
   cache, logs and the user.

Every step is bounded in time and prints ``ok`` or ``FAILED: what``; the
exit status is 0 only if every step passed.  Artifacts (the .debs, build
and lintian logs) are left in ``--work`` (default: build/package-test).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ci_support import (  # noqa: E402
    Failed,
    Origin,
    Steps,
    alive,
    allowed_cpus,
    apt_install,
    free_port,
    get_json,
    port_free,
    proc_status,
    proxied_request,
    require_root,
    run,
    tail_of,
    wait_until,
)

PACKAGE = "speedproxy"
UNIT = "/lib/systemd/system/speedproxy.service"
CONFIG = "/etc/speedproxy/speedproxy.yaml"
VENV = "/usr/lib/speedproxy"
BUILD_DEPENDS = [
    "build-essential", "debhelper", "dh-virtualenv", "python3", "python3-venv", "fakeroot",
    "lintian", "systemd", "adduser", "logrotate", "git",
]
EDIT_MARK = "# edited by tools/test-package.py: must survive the upgrade"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the unit file ----------------------------------------------------------------------


def parse_unit(path: str) -> Dict[str, List[str]]:
    """The ``[Service]`` settings of a unit file: key → values in order."""
    settings: Dict[str, List[str]] = {}
    section = None
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section == "Service" and "=" in line:
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(unit: Dict[str, List[str]], key: str) -> str:
    values = unit.get(key)
    if not values:
        raise Failed(f"the unit has no {key}=")
    return values[-1]


class UnitRunner:
    """Runs a unit's commands as systemd would, minus systemd.

    User=/Group= with supplementary groups, AmbientCapabilities= (also
    inheritable), CapabilityBoundingSet=, NoNewPrivileges=, LimitNOFILE=,
    RuntimeDirectory=/CacheDirectory=/LogsDirectory= created for the user,
    a clean environment and / as working directory.  Filesystem namespaces
    (ProtectSystem=, PrivateTmp=...) are not emulated.
    """

    def __init__(self, unit: Dict[str, List[str]], log_path: str) -> None:
        self.unit = unit
        self.log_path = log_path
        self.user = one(unit, "User")
        self.group = unit.get("Group", [self.user])[-1]
        self.main: Optional[subprocess.Popen] = None

    def prepare(self) -> None:
        uid = pwd.getpwnam(self.user).pw_uid
        gid = grp.getgrnam(self.group).gr_gid
        for key, base, mode in (
            ("RuntimeDirectory", "/run", 0o755),
            ("CacheDirectory", "/var/cache", 0o755),
            ("LogsDirectory", "/var/log", int(self.unit.get("LogsDirectoryMode", ["0755"])[-1], 8)),
        ):
            for name in " ".join(self.unit.get(key, [])).split():
                path = os.path.join(base, name)
                os.makedirs(path, exist_ok=True)
                os.chown(path, uid, gid)
                os.chmod(path, mode)

    def _caps(self, key: str) -> List[str]:
        caps = " ".join(self.unit.get(key, [])).split()
        return [cap.lower().replace("cap_", "") for cap in caps]

    def wrap(self, command: str) -> List[str]:
        argv = shlex.split(command)
        if argv and argv[0][:1] in "-+@!:":
            raise Failed(f"command prefixes are not emulated: {command}")
        wrapper = ["setpriv", "--reuid", self.user, "--regid", self.group, "--init-groups"]
        ambient = self._caps("AmbientCapabilities")
        if ambient:
            caps = ",".join("+" + cap for cap in ambient)
            wrapper += ["--inh-caps", caps, "--ambient-caps", caps]
        bounding = self._caps("CapabilityBoundingSet")
        if bounding:
            wrapper += ["--bounding-set", "-all," + ",".join("+" + cap for cap in bounding)]
        if self.unit.get("NoNewPrivileges", ["no"])[-1] in ("yes", "true", "1"):
            wrapper.append("--no-new-privs")
        return wrapper + ["--"] + argv

    def _env(self) -> Dict[str, str]:
        entry = pwd.getpwnam(self.user)
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": entry.pw_dir,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": entry.pw_shell,
        }

    def nofile(self) -> Optional[int]:
        """LimitNOFILE=, or as much of it as this machine lets root set.

        systemd (PID 1) can always set it; a container without
        CAP_SYS_RESOURCE cannot raise its hard limit, so the run gets the
        current hard limit (said once on stdout).
        """
        values = self.unit.get("LimitNOFILE")
        if not values:
            return None
        wanted = int(values[-1])
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, wanted))
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # only probing
            except (ValueError, OSError):
                if not getattr(self, "_said", False):
                    print(f"(note) LimitNOFILE={wanted}: this machine does not let root raise the hard "
                          f"limit above {hard} (no CAP_SYS_RESOURCE): runs get {hard}")
                    self._said = True
                return hard
        return wanted

    def _limits(self) -> None:
        value = self.nofile()
        if value is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (value, value))

    def command(self, key: str, timeout: float, mainpid: Optional[int] = None) -> None:
        self.nofile()  # says so here, not from inside preexec_fn
        for command in self.unit.get(key, []):
            if mainpid is not None:
                command = command.replace("$MAINPID", str(mainpid))
            run(self.wrap(command), timeout=timeout, log=self.log_path, env=self._env(), cwd="/",
                preexec_fn=self._limits, what=f"{key}={command}")

    def start(self, timeout: float) -> subprocess.Popen:
        self.prepare()
        self.command("ExecStartPre", timeout)
        command = one(self.unit, "ExecStart")
        print(f"$ ExecStart={command} (as {self.user})", flush=True)
        log = open(self.log_path, "ab")
        self.main = subprocess.Popen(
            self.wrap(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._env(), cwd="/", preexec_fn=self._limits, start_new_session=True,
        )
        log.close()
        # setpriv execs the command: the Popen pid is the main pid.
        try:
            self.command("ExecStartPost", timeout, mainpid=self.main.pid)
        except Failed:
            self.kill()
            raise
        if self.main.poll() is not None:
            raise Failed(f"ExecStart exited with {self.main.returncode}:\n{tail_of(self.log_path)}")
        return self.main

    def reload(self, timeout: float) -> None:
        assert self.main is not None
        self.command("ExecReload", timeout, mainpid=self.main.pid)

    def stop(self, timeout: float) -> int:
        """KillMode=mixed: KillSignal= to the main process, then SIGKILL to the rest."""
        assert self.main is not None
        main, self.main = self.main, None
        kill_signal = getattr(signal, self.unit.get("KillSignal", ["SIGTERM"])[-1])
        main.send_signal(kill_signal)
        try:
            code = main.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(main.pid, signal.SIGKILL)
            main.wait(5)
            raise Failed(f"the main process did not exit within {timeout:.0f}s of {kill_signal.name}") from None
        leftovers = processes_of(self.user)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        if leftovers:
            raise Failed(f"processes of {self.user} left after the main process exited: {leftovers}")
        return code

    def kill(self) -> None:
        if self.main is not None and self.main.poll() is None:
            try:
                os.killpg(self.main.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.main.wait(10)
        self.main = None


def processes_of(user: str) -> List[int]:
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and alive(int(name)):
                    pids.append(int(name))
            except OSError:
                pass
    return pids


# -- the test -----------------------------------------------------------------------------


class PackageTest:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = os.path.abspath(args.work)
        self.src = os.path.join(self.work, "src")
        self.log = os.path.join(self.work, "commands.log")
        self.proxy_log = os.path.join(self.work, "speedproxy.log")
        self.debs: List[str] = []
        self.runner: Optional[UnitRunner] = None
        self.edited = ""
        self.port = 0
        self.admin_port = 0
        self.origin: Optional[Origin] = None

    # -- build ----------------------------------------------------------------

    def install_build_tools(self) -> None:
        apt_install(BUILD_DEPENDS, timeout=900, log=self.log)

    def copy_clone(self) -> None:
        shutil.rmtree(self.src, ignore_errors=True)
        os.makedirs(self.src)
        if os.path.isdir(os.path.join(ROOT, ".git")):
            listed = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         timeout=60, quiet=True).stdout.decode().split("\0")
            files = [name for name in listed if name and os.path.lexists(os.path.join(ROOT, name))]
        else:
            skip = {".git", ".venv", "build", "dist", ".hypothesis", ".mypy_cache", "run"}
            files = []
            for top, dirs, names in os.walk(ROOT):
                dirs[:] = [d for d in dirs if d not in skip and d != "__pycache__" and not d.endswith(".egg-info")]
                files += [os.path.relpath(os.path.join(top, n), ROOT) for n in names]
        for name in files:
            source, target = os.path.join(ROOT, name), os.path.join(self.src, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
        print(f"copied {len(files)} files to {self.src}")

    def build(self) -> str:
        for name in os.listdir(self.work):
            if name.endswith((".deb", ".changes", ".buildinfo")):
                os.unlink(os.path.join(self.work, name))
        build_log = os.path.join(self.work, "build.log")
        run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=self.src, timeout=1200, log=build_log)
        version = run(["dpkg-parsechangelog", "-S", "Version"], cwd=self.src, timeout=30, quiet=True).text.strip()
        arch = run(["dpkg-architecture", "-qDEB_HOST_ARCH"], timeout=30, quiet=True).text.strip()
        deb = os.path.join(self.work, f"{PACKAGE}_{version}_{arch}.deb")
        if not os.path.isfile(deb):
            raise Failed(f"{deb} was not built (see {build_log})")
        print(f"built {deb} ({os.path.getsize(deb) // 1024} KiB)")
        self.changes = os.path.join(self.work, f"{PACKAGE}_{version}_{arch}.changes")
        return deb

    def lintian(self) -> None:
        result = run(["lintian", "--fail-on", "error", self.changes], timeout=600, check=False)
        with open(os.path.join(self.work, "lintian.txt"), "w") as out:
            out.write(result.text)
        tags = [line for line in result.text.splitlines() if re.match(r"^[EWI]: ", line)]
        for line in tags:
            print("  " + line)
        errors = [line for line in tags if line.startswith("E: ")]
        if errors or result.returncode != 0:
            raise Failed(f"lintian: {len(errors)} error(s), exit {result.returncode}")
        print(f"lintian: no errors, {sum(1 for t in tags if t.startswith('W: '))} warning(s)")

    # -- install ------------------------------------------------------------------

    def purge_leftovers(self) -> None:
        status = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE], timeout=30, check=False, quiet=True)
        if status.returncode == 0 and status.text.strip() not in ("", "un"):
            print(f"{PACKAGE} is present from an earlier run ({status.text.strip()}): purging it")
            self.apt(["purge", "-y", PACKAGE])

    def apt(self, args: List[str]) -> None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", *args], timeout=600, log=self.log, env=env)

    def install(self, deb: str) -> None:
        self.apt(["install", "-y", deb])
        self.check_installed()
        self.systemd_started()

    def systemd_started(self) -> None:
        """Where systemd is PID 1 the package has started the unit: look, then stop it.

        The checks that follow run the unit's commands themselves (on the
        edited config), the same way with or without systemd.
        """
        if not os.path.isdir("/run/systemd/system"):
            print("(systemd is not PID 1 here: the package enabled the unit but nothing starts it; "
                  "this script runs the unit's commands itself)")
            return
        state = run(["systemctl", "is-active", PACKAGE], timeout=120, check=False, quiet=True).text.strip()
        if state == "active":
            print("(systemd is PID 1: the package started speedproxy.service: active)")
        else:
            status = run(["systemctl", "status", "--no-pager", PACKAGE], timeout=60, check=False, quiet=True).text
            print(f"(warning) speedproxy.service is {state} after install (ports 8080/9901 of the shipped "
                  f"config taken on this host?):\n{status}")
        run(["systemctl", "stop", PACKAGE], timeout=120)

    def check_installed(self) -> None:
        try:
            user, group = pwd.getpwnam(PACKAGE), grp.getgrnam(PACKAGE)
        except KeyError as error:
            raise Failed(f"no {PACKAGE} user or group after install: {error}") from None
        if user.pw_gid != group.gr_gid or user.pw_uid >= 1000:
            raise Failed(f"{PACKAGE} is not a system user with its own group: {user}")
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE], timeout=30, quiet=True).text
        if CONFIG not in conffiles:
            raise Failed(f"{CONFIG} is not a conffile: {conffiles!r}")
        for path in ("/var/cache/speedproxy", "/var/log/speedproxy"):
            info = os.stat(path)
            if info.st_uid != user.pw_uid:
                raise Failed(f"{path} is not owned by {PACKAGE}")
        for path in ("/etc/logrotate.d/speedproxy", UNIT, f"{VENV}/bin/twistd",
                     "/usr/share/doc/speedproxy/examples/60-speedproxy.conf",
                     "/etc/systemd/system/multi-user.target.wants/speedproxy.service"):
            if not os.path.lexists(path):
                raise Failed(f"{path} is missing")
        if os.path.exists("/etc/sysctl.d/60-speedproxy.conf"):
            raise Failed("the sysctl example was installed into /etc/sysctl.d (it must not be applied)")
        run(["logrotate", "--debug", "/etc/logrotate.d/speedproxy"], timeout=60, quiet=True,
            what="logrotate --debug /etc/logrotate.d/speedproxy")
        # Twisted's plugin cache: present, fresh, and nobody needs to write it.
        plugins = run([f"{VENV}/bin/python", "-c", "import os, twisted.plugins; print(os.path.dirname(twisted.plugins.__file__))"],
                      timeout=60, quiet=True).text.strip()
        cache = os.path.join(plugins, "dropin.cache")
        if not os.path.isfile(cache):
            raise Failed(f"{cache} was not generated")
        newest = max(os.path.getmtime(os.path.join(plugins, n)) for n in os.listdir(plugins) if n.endswith(".py"))
        if os.path.getmtime(cache) < newest:
            raise Failed(f"{cache} is older than the plugins it describes")
        probe = (
            "import sys; from twisted.python import log; log.startLogging(sys.stdout, setStdout=False)\n"
            "import twisted.plugins; from twisted.plugin import IPlugin, getPlugins\n"
            "names = [getattr(p, 'tapname', '') for p in getPlugins(IPlugin, twisted.plugins)]\n"
            "assert 'speedproxy' in names, names\n"
        )
        for user_name in (PACKAGE, "nobody"):
            out = run(["runuser", "-u", user_name, "--", f"{VENV}/bin/python", "-c", probe], timeout=60, cwd="/",
                      quiet=True, what=f"plugin lookup as {user_name}").text
            if "plugin cache" in out.lower() or "dropin" in out.lower():
                raise Failed(f"the plugin cache is not usable by {user_name}:\n{out}")
        out = run(["runuser", "-u", "nobody", "--", f"{VENV}/bin/twistd", "speedproxy", "--config", CONFIG, "--check"],
                  timeout=60, cwd="/", quiet=True, what="twistd speedproxy --check as nobody").text
        print(out.strip())
        print("user, group, conffile, directories, logrotate, unit (enabled), plugin cache: ok")

    def verify_unit(self) -> None:
        result = run(["systemd-analyze", "verify", UNIT], timeout=120)
        if result.text.strip():
            raise Failed(f"systemd-analyze verify printed:\n{result.text}")
        security = run(["systemd-analyze", "security", "--offline=yes", UNIT], timeout=120, check=False, quiet=True)
        for line in security.text.splitlines():
            if "Overall exposure level" in line:
                print("(info) " + line.strip())

    # -- run as the unit does ---------------------------------------------------------

    def edit_config(self) -> None:
        """The operator's edit: ports, a local origin, 2 workers pinned (auto)."""
        assert self.origin is not None
        self.port = 80 if port_free(80) else free_port("0.0.0.0")
        self.admin_port = free_port()
        with open(CONFIG, encoding="utf-8") as handle:
            text = handle.read()
        replacements = [
            (r"(?m)^  port: 8080$", f"  port: {self.port}"),
            (r"(?m)^  workers: auto$", "  workers: 2"),
            (r'(?m)^  cpu_affinity: "off"', '  cpu_affinity: auto  #'),
            (r'(?m)^  listen: "127\.0\.0\.1:9901"', f'  listen: "127.0.0.1:{self.admin_port}"'),
            (r"(?m)^      port: 8081$", f"      port: {self.origin.port}"),
        ]
        for pattern, replacement in replacements:
            text, count = re.subn(pattern, replacement, text)
            if count != 1:
                raise Failed(f"the shipped {CONFIG} has no line matching {pattern!r} to edit")
        self.edited = EDIT_MARK + "\n" + text
        with open(CONFIG, "w", encoding="utf-8") as handle:
            handle.write(self.edited)
        print(f"{CONFIG}: port {self.port}, admin {self.admin_port}, origin {self.origin.port}, 2 workers, cpu_affinity auto")

    def start(self) -> None:
        self.runner = UnitRunner(parse_unit(UNIT), self.proxy_log)
        main = self.runner.start(timeout=120)
        self.check_process(main.pid)

    def status(self) -> dict:
        return get_json(f"http://127.0.0.1:{self.admin_port}/status")

    def workers(self) -> Dict[int, int]:
        return {w["slot"]: w["pid"] for w in self.status()["workers"]}

    def check_process(self, main_pid: int) -> None:
        uid = pwd.getpwnam(PACKAGE).pw_uid
        workers = self.workers()
        for pid in [main_pid, *workers.values()]:
            status = proc_status(pid)
            uids = {int(value) for value in status["Uid"].split()}
            if uids != {uid}:
                raise Failed(f"pid {pid} runs as uid {status['Uid']}, not {PACKAGE} ({uid})")
            if status.get("NoNewPrivs") != "1":
                raise Failed(f"pid {pid}: NoNewPrivs is {status.get('NoNewPrivs')}")
            effective = int(status["CapEff"], 16)
            if effective != 1 << 10:  # CAP_NET_BIND_SERVICE only
                raise Failed(f"pid {pid}: effective capabilities {status['CapEff']}, expected only CAP_NET_BIND_SERVICE")
            with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
                line = next(line for line in limits if line.startswith("Max open files"))
            if line.split()[3] != str(self.runner.nofile()):
                raise Failed(f"pid {pid}: {line.strip()}, expected LimitNOFILE {self.runner.nofile()}")
        with open(self.proxy_log, encoding="utf-8", errors="replace") as handle:
            complaints = [line for line in handle if "plugin cache" in line.lower() or "dropin.cache" in line]
        if complaints:
            raise Failed("twistd complained about the plugin cache:\n" + "".join(complaints))
        available = sorted(os.sched_getaffinity(0))
        for slot, pid in workers.items():
            expected = [available[slot % len(available)]]
            if allowed_cpus(pid) != expected:
                raise Failed(f"worker {slot} (pid {pid}): Cpus_allowed_list {allowed_cpus(pid)}, expected {expected}")
        print(f"master {main_pid} and workers {workers} run as {PACKAGE}, only CAP_NET_BIND_SERVICE, "
              f"NoNewPrivs, {self.runner.nofile()} files; workers pinned to CPUs "
              f"{ {slot: allowed_cpus(pid) for slot, pid in workers.items()} } (cpu_affinity auto)")

    def proxy(self) -> None:
        proxied_request(self.port)

    def access_log(self) -> None:
        path = "/var/log/speedproxy/access.log"
        wait_until(lambda: os.path.isfile(path) and "/ci-check" in open(path).read(), 10, f"the request in {path}")
        print(f"{path}: the request is logged")

    def reload(self) -> None:
        assert self.runner is not None
        before = self.status()
        pids = self.workers()
        self.runner.reload(timeout=30)
        after = wait_until(lambda: (lambda s: s if s["config_version"] > before["config_version"] else None)(self.status()),
                           15, "the config version to change after SIGHUP")
        if self.workers() != pids:
            raise Failed(f"workers changed on reload: {pids} -> {self.workers()}")
        print(f"config version {before['config_version']} -> {after['config_version']}, same workers {pids}")
        self.proxy()

    def rotate_log(self) -> None:
        """What logrotate does: rename, then its postrotate (SIGUSR1 to the main pid)."""
        assert self.runner is not None and self.runner.main is not None
        path = "/var/log/speedproxy/access.log"
        with open("/etc/logrotate.d/speedproxy", encoding="utf-8") as handle:
            if "--signal=USR1" not in handle.read():
                raise Failed("the logrotate postrotate no longer sends SIGUSR1: update this check")
        os.rename(path, path + ".1")
        os.kill(self.runner.main.pid, signal.SIGUSR1)  # systemctl kill --kill-whom=main --signal=USR1
        wait_until(lambda: os.path.isfile(path), 10, f"{path} reopened after SIGUSR1")
        proxied_request(self.port, "/after-rotation")
        wait_until(lambda: "/after-rotation" in open(path).read(), 10, "the next request in the new access.log")
        if not self.runner.main or self.runner.main.poll() is not None:
            raise Failed("speedproxy exited on SIGUSR1")
        print("access.log renamed, SIGUSR1: reopened, the next request is in the new file")

    def stop(self) -> None:
        assert self.runner is not None
        code = self.runner.stop(timeout=float(self.runner.unit.get("TimeoutStopSec", ["45"])[-1]))
        if code != 0:
            raise Failed(f"speedproxy exited {code} on SIGTERM:\n{tail_of(self.proxy_log)}")
        print("stopped: exit 0, no process left")

    # -- upgrade, remove, purge ---------------------------------------------------------

    def bump_version(self) -> str:
        changelog = os.path.join(self.src, "debian", "changelog")
        version = run(["dpkg-parsechangelog", "-S", "Version"], cwd=self.src, timeout=30, quiet=True).text.strip()
        new = version + "+ci1"
        with open(changelog, encoding="utf-8") as handle:
            old = handle.read()
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        entry = (f"{PACKAGE} ({new}) UNRELEASED; urgency=medium\n\n  * CI upgrade test.\n\n"
                 f" -- CI <ci@localhost>  {date}\n\n")
        with open(changelog, "w", encoding="utf-8") as handle:
            handle.write(entry + old)
        return new

    def upgrade(self, deb: str) -> None:
        self.apt(["install", "-y", deb])  # stdin is /dev/null: a conffile prompt would fail here
        version = run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], timeout=30, quiet=True).text.strip()
        if not deb.endswith(f"_{version}_" + deb.rsplit("_", 1)[1]):
            raise Failed(f"installed version is {version} after installing {deb}")
        with open(CONFIG, encoding="utf-8") as handle:
            if handle.read() != self.edited:
                raise Failed(f"the edited {CONFIG} did not survive the upgrade")
        leftovers = [n for n in os.listdir("/etc/speedproxy") if ".dpkg-" in n]
        if leftovers:
            raise Failed(f"dpkg left {leftovers} in /etc/speedproxy")
        print(f"upgraded to {version}; the edited {CONFIG} is unchanged")
        self.check_installed()
        if os.path.isdir("/run/systemd/system"):
            run(["systemctl", "stop", PACKAGE], timeout=120)

    def remove(self) -> None:
        self.apt(["remove", "-y", PACKAGE])
        if not os.path.isfile(CONFIG):
            raise Failed(f"apt remove removed {CONFIG}")
        if os.path.exists(VENV):
            raise Failed(f"{VENV} is left after apt remove: {os.listdir(VENV)}")
        print(f"removed; {CONFIG} kept")

    def purge(self) -> None:
        self.apt(["purge", "-y", PACKAGE])
        left = [p for p in ("/etc/speedproxy", "/var/cache/speedproxy", "/var/log/speedproxy", "/run/speedproxy", VENV,
                            "/etc/systemd/system/multi-user.target.wants/speedproxy.service") if os.path.lexists(p)]
        if left:
            raise Failed(f"left after purge: {left}")
        for lookup, name in ((pwd.getpwnam, "user"), (grp.getgrnam, "group")):
            try:
                lookup(PACKAGE)
            except KeyError:
                continue
            raise Failed(f"the {PACKAGE} {name} is left after purge")
        print("purged: config, cache, logs, venv, user and group are gone")

    # -- all of it ------------------------------------------------------------------

    def main(self) -> int:
        os.makedirs(self.work, exist_ok=True)
        open(self.log, "w").close()
        open(self.proxy_log, "w").close()
        steps = Steps(time.monotonic() + self.args.timeout)
        installed = False
        try:
            steps.run("install the build tools (apt-get)", self.install_build_tools)
            steps.run("copy the clone", self.copy_clone)
            deb = steps.run("dpkg-buildpackage -us -uc -b", self.build)
            self.debs.append(deb)
            steps.run("lintian: no errors", self.lintian)
            steps.run("purge a speedproxy left by an earlier run", self.purge_leftovers)
            installed = True
            steps.run(f"apt-get install ./{os.path.basename(deb)}", lambda: self.install(deb))
            steps.run("systemd-analyze verify", self.verify_unit)
            with Origin() as self.origin:
                steps.run("edit the conffile", self.edit_config)
                steps.run("start as the unit does (ExecStartPre, ExecStart, ExecStartPost)", self.start)
                steps.run("proxy a request to the local origin", self.proxy)
                steps.run("access log written", self.access_log)
                steps.run("reload (ExecReload: SIGHUP)", self.reload)
                steps.run("log rotation (rename + SIGUSR1)", self.rotate_log)
                steps.run("stop (KillMode=mixed: SIGTERM to the main pid)", self.stop)
                new_version = steps.run("bump the version (debian/changelog)", self.bump_version)
                deb2 = steps.run(f"rebuild {new_version}", self.build)
                self.debs.append(deb2)
                steps.run("upgrade over the installed package, edited conffile kept", lambda: self.upgrade(deb2))
                steps.run("start the upgraded package as the unit does", self.start)
                steps.run("proxy a request after the upgrade", self.proxy)
                steps.run("stop", self.stop)
            steps.run("apt-get remove: config kept", self.remove)
            steps.run("apt-get purge: config, cache, user gone", self.purge)
            installed = False
        except Failed:
            print(f"\nspeedproxy log (last lines of {self.proxy_log}):\n{tail_of(self.proxy_log)}")
            print(f"commands log: {self.log}")
            return 1
        finally:
            if self.runner is not None:
                self.runner.kill()
            steps.summary()
            if installed and not self.args.keep:
                print(f"(purging {PACKAGE} after the failure; --keep leaves it installed)")
                subprocess.run(["apt-get", "purge", "-y", "-q", PACKAGE], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=300,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        print(f"\nall package checks passed; packages in {self.work}: "
              + ", ".join(os.path.basename(d) for d in self.debs))
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "package-test"),
                        help="build directory and artifacts (default: build/package-test)")
    parser.add_argument("--keep", action="store_true", help="leave the package installed after a failure")
    parser.add_argument("--timeout", type=float, default=2400, help="for the whole test, seconds (2400)")
    args = parser.parse_args()
    require_root()
    return PackageTest(args).main()


if __name__ == "__main__":
    sys.exit(main())
