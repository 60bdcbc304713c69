"""Fake hosts for the multi-host tests: network namespaces on a bridge, each with its own name and ``/dev/shm``.

:class:`FakeHosts` makes hosts ``h1``, ``h2``, ... as network namespaces
``zpt-h1``, ... whose ``eth0`` sits on a bridge in a namespace of its own
(``zpt-sw``), at ``10.211.0.1``, ``10.211.0.2``, ... (a /24 used by
nothing else). A process runs "on" a host through :meth:`FakeHosts.popen`:
in the host's network namespace, with its own host name (a UTS namespace)
and its own ``/dev/shm`` (a mount namespace binding a private folder over
it), so that shared memory is per host as on real machines. The file
system is otherwise shared (the checkout, the virtual environment,
``/tmp``).

**Network safety.** The namespaces have no route out of the machine, and
the root namespace gets an ``unreachable`` route for the test subnet, so a
test that sends to a test address from the root namespace fails at once
instead of sending it out. Tests send only to the hosts' addresses, from
inside the hosts.

Learned from the recipes in ``../shared/testbed`` (``netns-up.sh``,
``hostexec.sh``), written anew for the tests. Needs root and iproute2's
``ip``, ``nsenter`` and ``unshare``; :func:`unavailable` says why they
cannot be made, and the tests skip with that reason.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import psutil

__all__ = ["NET", "FakeHosts", "HostCluster", "alive", "no_mpi", "no_slurm", "no_sshd", "unavailable"]

NET = "10.211.0"
PREFIX = "zpt-"
SWITCH = PREFIX + "sw"
GUARD = f"unreachable {NET}.0/24 metric 4243"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def no_sshd() -> str | None:
    """Why an sshd cannot run on the fake hosts (None: it can)."""
    if not os.access("/usr/sbin/sshd", os.X_OK):
        return "no /usr/sbin/sshd (Debian's openssh-server; .ci/run installs it)"
    if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        return "no ssh client"
    return None


def no_slurm() -> str | None:
    """Why Slurm daemons cannot run on the fake hosts (None: they can)."""
    for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged", "mungekey"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"no {tool} (Debian's slurm-wlm; .ci/run installs it)"
    return None


def no_mpi() -> str | None:
    """Why engines cannot be started with Open MPI's mpiexec here (None: they can)."""
    if shutil.which("mpiexec") is None:
        return "no mpiexec (Debian's openmpi-bin; .ci/run installs it)"
    return None


def unavailable() -> str | None:
    """Why fake hosts cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool} command"
    probe = PREFIX + "probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class FakeHosts:
    """Hosts ``h1``..``hN`` as network namespaces on one bridge (see the module docstring)."""

    def __init__(self, n: int, workdir: str) -> None:
        self.names = [f"h{i}" for i in range(1, n + 1)]
        self.workdir = workdir
        self.procs: list[subprocess.Popen[Any]] = []
        self.made_run_sshd = False
        self.slurm_dir: str | None = None
        teardown()  # (whatever a killed run left)
        try:
            self._make()
        except BaseException:
            teardown()  # (nothing half made is left)
            raise

    def _make(self) -> None:
        _ip("route", "add", *GUARD.split())
        _ip("netns", "add", SWITCH)
        _ip("-n", SWITCH, "link", "set", "lo", "up")
        _ip("-n", SWITCH, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", SWITCH, "link", "set", "br0", "up")
        for i, name in enumerate(self.names, 1):
            ns = PREFIX + name
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", SWITCH, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", SWITCH, "link", "set", name, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            os.makedirs(self.shm_dir(name), mode=0o1777, exist_ok=True)
            os.chmod(self.shm_dir(name), 0o1777)
        self._wait_reachable()

    def address(self, name: str) -> str:
        return f"{NET}.{self.names.index(name) + 1}"

    def shm_dir(self, name: str) -> str:
        return os.path.join(self.workdir, f"shm-{name}")

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` run on host `name`: its network, its host name, its own /dev/shm."""
        script = 'hostname "$1"; mount --bind "$2" /dev/shm; shift 2; exec "$@"'
        return [
            "nsenter",
            f"--net=/run/netns/{PREFIX}{name}",
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            name,
            self.shm_dir(name),
            *argv,
        ]

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self.command(name, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(name, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def start_sshd(self, names: Sequence[str]) -> list[str]:
        """An sshd on each host (port 22 of its address, throwaway keys); the ssh command that reaches them.

        Root logs in with a key of the test's own; no system configuration
        is read or changed (``-F`` configs in the test's folder).
        """
        folder = os.path.join(self.workdir, "ssh")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        host_key, client_key = os.path.join(folder, "host_key"), os.path.join(folder, "id_ed25519")
        for key in (host_key, client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, timeout=30)
        shutil.copy(client_key + ".pub", os.path.join(folder, "authorized_keys"))
        sshd_config = os.path.join(folder, "sshd_config")
        with open(sshd_config, "w") as f:
            f.write(
                f"HostKey {host_key}\nAuthorizedKeysFile {folder}/authorized_keys\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
                "UseDNS no\nPrintMotd no\n"
            )
        ssh_config = os.path.join(folder, "ssh_config")
        with open(ssh_config, "w") as f:
            f.write(
                f"Host *\n  User root\n  IdentityFile {client_key}\n  IdentitiesOnly yes\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n"
                "  ConnectTimeout 5\n"
            )
        if not os.path.isdir("/run/sshd"):  # its privilege separation folder (removed again at close)
            os.makedirs("/run/sshd", mode=0o755)
            self.made_run_sshd = True
        for name in names:
            sshd = [
                "/usr/sbin/sshd",
                "-f",
                sshd_config,
                "-o",
                f"ListenAddress={self.address(name)}",
                "-o",
                f"PidFile={folder}/sshd-{name}.pid",
                "-E",
                f"{folder}/sshd-{name}.log",
            ]
            done = self.run(name, sshd, timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"sshd on {name} did not start: {done.stderr.strip()}")
        return ["ssh", "-F", ssh_config]

    def start_slurm(self, head: str, nodes: Sequence[str], cpus: int = 4) -> dict[str, str]:
        """A real Slurm cluster: munged and slurmctld on `head`, a slurmd on each of `nodes`; its client environment.

        Everything it reads and writes is in the test's folder (its own
        munge key and socket, ``slurm.conf``, state, logs): the system's
        ``/etc/slurm`` and ``/etc/munge`` are not used. The daemons run as
        root inside the hosts, so closing the hosts ends them. Client
        commands (``sbatch``, ``squeue``) work on any host, with the
        returned environment (``SLURM_CONF``).
        """
        # A short folder of its own: slurmstepd makes Unix sockets in the spool folders, whose paths a test's
        # tmp_path makes too long (108 bytes at most). Removed at close.
        folder = self.slurm_dir = tempfile.mkdtemp(prefix="zpt-slurm-")
        os.makedirs(os.path.join(folder, "log"), exist_ok=True)
        key, sock = os.path.join(folder, "munge.key"), os.path.join(folder, "munge.sock")
        subprocess.run(["mungekey", "--create", f"--keyfile={key}", "--bits=1024"], check=True, timeout=30)
        os.chmod(key, 0o400)
        munged = [
            "munged",
            "--force",  # (its folder is under a tmp dir whose parents it would otherwise refuse)
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={folder}/munged.pid",
            f"--log-file={folder}/log/munged.log",
            f"--seed-file={folder}/munged.seed",
        ]
        done = self.run(head, munged, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"munged did not start: {done.stderr.strip()}")
        lines = [
            "ClusterName=zpooltest",
            # (job ids name per-step folders in /tmp, srun --mpi=pmix's among them: none left by an earlier run clash)
            f"FirstJobId={random.randrange(10_000, 1_000_000)}",
            f"SlurmctldHost={head}({self.address(head)})",
            "SlurmctldPort=6817",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            f"StateSaveLocation={folder}/state",
            f"SlurmdSpoolDir={folder}/spool-%n",
            f"SlurmctldPidFile={folder}/slurmctld.pid",
            f"SlurmdPidFile={folder}/slurmd-%n.pid",
            f"SlurmctldLogFile={folder}/log/slurmctld.log",
            f"SlurmdLogFile={folder}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",  # (each fake node claims `cpus`, whatever the machine has)
            "ReturnToService=2",
            "MinJobAge=300",
            "KillWait=2",
            "InactiveLimit=0",
            *(
                f"NodeName={n} NodeAddr={self.address(n)} Port=6818 CPUs={cpus} RealMemory=1000 State=UNKNOWN"
                for n in nodes
            ),
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        ]
        conf = os.path.join(folder, "slurm.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.makedirs(os.path.join(folder, "state"), exist_ok=True)
        env = {**os.environ, "SLURM_CONF": conf}
        daemons = [(head, ["slurmctld", "-f", conf])]
        for n in nodes:
            os.makedirs(os.path.join(folder, f"spool-{n}"), exist_ok=True)
            daemons.append((n, ["slurmd", "-f", conf, "-N", n]))
        for host, argv in daemons:
            done = self.run(host, argv, timeout=30, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{argv[0]} on {host} did not start: {done.stderr.strip()}")
        deadline = time.monotonic() + 30
        while True:  # every node idle
            done = self.run(head, ["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], timeout=30, env=env)
            if len(set(done.stdout.split())) >= len(nodes):
                return {"SLURM_CONF": conf}
            if time.monotonic() > deadline:
                logs = "".join(open(os.path.join(folder, "log", f)).read()[-800:] for f in os.listdir(f"{folder}/log"))
                raise RuntimeError(f"the Slurm nodes are not idle: {done.stdout} {done.stderr}\n{logs}")
            time.sleep(0.2)

    def cut(self, name: str) -> None:
        """Cut host `name`'s cable at the switch (its processes live on, unreachable)."""
        _ip("-n", SWITCH, "link", "set", name, "down")

    def mend(self, name: str) -> None:
        _ip("-n", SWITCH, "link", "set", name, "up")

    def _wait_reachable(self) -> None:
        # (no ping here: a connection refused by a closed port means the address answers)
        first = self.names[0]
        for other in self.names[1:]:
            probe = ["python3", "-c", f"import socket; socket.create_connection(('{self.address(other)}', 9), 1)"]
            deadline = time.monotonic() + 10
            while True:
                done = subprocess.run(
                    ["ip", "netns", "exec", PREFIX + first, *probe], capture_output=True, text=True, timeout=30
                )
                if "refused" in done.stderr:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{first} cannot reach {other}: {done.stderr.strip()[-300:]}")
                time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        teardown()  # (the sshds and the Slurm daemons too: they run in the namespaces)
        if self.slurm_dir:
            shutil.rmtree(self.slurm_dir, ignore_errors=True)
        if self.made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def teardown() -> None:
    """Remove the fake hosts, ending what runs in them, and the guard route."""
    listed = _ip("netns", "list", check=False).stdout.split()
    for ns in listed:
        if not ns.startswith(PREFIX):
            continue
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        _ip("netns", "del", ns, check=False)
    _ip("route", "del", *GUARD.split(), check=False)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class HostCluster:
    """Cluster ``net`` of the ``zpool`` command, run on fake host `head` with its own ``ZPOOL_HOME``.

    `env`: more environment for every command (``SLURM_CONF``).
    """

    NAME = "net"

    def __init__(self, hosts: FakeHosts, home: str, head: str = "h1", env: dict[str, str] | None = None) -> None:
        self.hosts = hosts
        self.home = home
        self.head = head
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = repo + os.pathsep + os.environ.get("PYTHONPATH", "")
        self.env = {**os.environ, "ZPOOL_HOME": home, "PYTHONPATH": path, **(env or {})}
        self.repo = repo
        self.connection = os.path.join(home, "clusters", self.NAME, "cluster.json")
        self.log = os.path.join(home, "clusters", self.NAME, "controller.log")

    def zpool(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``zpool ARGS`` on the head host."""
        return self.hosts.run(self.head, [sys.executable, "-m", "zpool", *args], timeout=timeout, env=self.env)

    def start(self, *options: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``zpool cluster start --daemon --name net --ip <head's address> OPTIONS``."""
        argv = ["cluster", "start", "--daemon", "--name", self.NAME, "--ip", self.hosts.address(self.head)]
        return self.zpool(*argv, *options, timeout=timeout)

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self.zpool("cluster", "stop", "--name", self.NAME)

    def status(self) -> str:
        return self.zpool("status", "--name", self.NAME).stdout

    def engines_up(self) -> int:
        first = self.status().splitlines()[:1]
        text = first[0] if first else ""
        return int(text.split(" engine(s)")[0].rsplit(" ", 1)[1]) if " engine(s)" in text else -1

    def wait_engines(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.engines_up() != n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} engines did not register: {self.status()}")
            time.sleep(0.3)

    def script(self, path: str, text: str, *args: str) -> Any:
        """Run script `text` (at `path`) on the head, given the connection file and `args`: its last line, as JSON."""
        with open(path, "w") as f:
            f.write(text)
        done = self.hosts.run(self.head, [sys.executable, path, self.connection, *args], env=self.env, cwd=self.repo)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])
