"""Engines on other hosts, over TCP with CURVE: fake hosts made of network namespaces (``tests._hosts``).

The controller runs on h1 (``zpool cluster start --ip``), an engine on each
of h2 and h3 (``zpool engine --connection-file``), and the client on h1.
Each host has its own host name and ``/dev/shm``. Skipped, with the reason,
where network namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import zmq

from tests._hosts import FakeHosts, HostCluster, alive, no_sshd, unavailable

WHY_NOT = unavailable()
pytestmark = [pytest.mark.skipif(WHY_NOT is not None, reason=f"no fake hosts: {WHY_NOT}"), pytest.mark.timeout(300)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable

CLIENT = textwrap.dedent(
    """
    import json, socket, sys
    import numpy as np
    import zpool
    from tests import _tasks

    def where(_):
        import os, socket
        return socket.gethostname(), os.getpid()

    with zpool.Pool(connection=sys.argv[1], processes=2) as pool:
        hosts = sorted({h for h, _ in pool.map(where, range(16), chunksize=1)})
        arrays = [np.random.default_rng(i).random(300_000) for i in range(4)]  # 2.4 MB each
        digests = pool.map(_tasks.digest, arrays, chunksize=1)
        paths = pool.map(_tasks.received_via, arrays, chunksize=1)
        back = pool.apply(np.multiply, (arrays[0], 2.0))
        pool.scatter("part", list(range(10)))
        gathered = sorted(pool.gather("part"))

        @pool.parallel(block=True)
        def double(xs):
            return [2 * x for x in xs]

        doubled = double(list(range(12)))
        print(json.dumps({
            "client_host": socket.gethostname(),
            "hosts": hosts,
            "digests_match": digests == [_tasks.digest(a) for a in arrays],
            "paths": paths,
            "back_ok": bool(np.array_equal(back, arrays[0] * 2.0)),
            "gathered": gathered,
            "doubled": doubled,
        }))
    """
)

LINK_CUT = textwrap.dedent(
    """
    import json, sys, time
    import zpool
    from tests import _tasks

    def where_after(seconds):
        import socket, time
        time.sleep(seconds)
        return socket.gethostname()

    with zpool.Pool(connection=sys.argv[1], processes=2) as pool:
        results = [pool.apply_async(where_after, (0.5,)) for _ in range(24)]
        print("started", flush=True)
        sys.stdin.readline()  # the test cuts h3's link, then says go on
        began = time.monotonic()
        outcomes = []
        for r in results:
            try:
                outcomes.append(r.get(120))
            except zpool.EngineError as exc:
                outcomes.append("EngineError")
        print(json.dumps({"outcomes": outcomes, "seconds": time.monotonic() - began}), flush=True)
    """
)


AFTER_MEND = textwrap.dedent(
    """
    import json, sys, zpool

    def where(_):
        import socket, time
        time.sleep(0.05)
        return socket.gethostname()

    with zpool.Pool(connection=sys.argv[1], processes=2) as pool:
        print(json.dumps(sorted(set(pool.map(where, range(20), chunksize=1)))))
    """
)


def _env(home: str) -> dict[str, str]:
    return {**os.environ, "ZPOOL_HOME": home, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(hosts: FakeHosts, home: str, *options: str) -> str:
    """Start cluster "net" on h1, listening on TCP at its address, with no engines; its connection file."""
    cluster = HostCluster(hosts, home)
    done = cluster.start("-n", "0", *options)
    assert done.returncode == 0, done.stderr
    return cluster.connection


def _engine(
    hosts: FakeHosts, name: str, connection: str, home: str, log: str, reconnect: str = "0"
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # (the engine holds its own copy)
        return hosts.popen(
            name,
            [PY, "-m", "zpool", "engine", "--connection-file", connection, "--reconnect-timeout", reconnect],
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _engines_up(hosts: FakeHosts, home: str) -> int:
    return HostCluster(hosts, home).engines_up()


def _wait_engines(hosts: FakeHosts, home: str, n: int, timeout: float = 60) -> None:
    HostCluster(hosts, home).wait_engines(n, timeout)


def test_engines_on_two_hosts_over_curve(hosts, tmp_path):
    home = str(tmp_path / "home")
    connection = _start(hosts, home)
    with open(connection) as f:
        info = json.load(f)
    assert info["client"].startswith(f"tcp://{hosts.address('h1')}:")
    assert set(info["curve"]) == {"server_public", "public", "secret"}  # CURVE by default off loopback
    assert "shm_prefix" not in info  # engines may be on other machines: no shared memory
    folder = os.path.dirname(connection)
    assert os.stat(os.path.join(folder, "controller.key")).st_mode & 0o777 == 0o600
    with open(os.path.join(folder, "controller.key")) as f:
        assert json.load(f)["secret"] not in _read(connection)  # the server's secret stays with it
    engines = [_engine(hosts, h, connection, home, str(tmp_path / f"{h}.log")) for h in ("h2", "h3")]
    _wait_engines(hosts, home, 2)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    done = hosts.run("h1", [PY, str(script), connection], env=_env(home), cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["client_host"] == "h1"
    assert out["hosts"] == ["h2", "h3"]  # both remote engines served
    assert out["digests_match"] and out["back_ok"]
    assert "shm" not in out["paths"]  # arrays crossed the network as frames, not shared memory
    assert out["gathered"] == list(range(10))
    assert out["doubled"] == [2 * x for x in range(12)]

    # An engine holding another cluster's keys never gets a message through, and the controller says why.
    with open(connection) as f:
        forged = json.load(f)
    public, secret = (k.decode() for k in zmq.curve_keypair())
    forged["curve"]["public"], forged["curve"]["secret"] = public, secret
    bad_path = tmp_path / "forged.json"
    bad_path.write_text(json.dumps(forged))
    os.chmod(bad_path, 0o600)
    intruder = _engine(hosts, "h3", str(bad_path), home, str(tmp_path / "intruder.log"))
    log = os.path.join(folder, "controller.log")
    deadline = time.monotonic() + 30
    refused = f"a peer at {hosts.address('h3')} could not connect: a key that is not the cluster's was refused"
    while refused not in _read(log):
        assert time.monotonic() < deadline, _read(log)[-2000:]
        time.sleep(0.3)
    assert _engines_up(hosts, home) == 2
    intruder.kill()
    intruder.wait()

    stopped = hosts.run("h1", [PY, "-m", "zpool", "cluster", "stop", "--name", "net"], env=_env(home))
    assert stopped.returncode == 0, stopped.stderr
    for engine in engines:  # told to shut down over the network
        assert engine.wait(30) == 0
    assert not os.path.exists(folder)


def test_a_host_cut_off_mid_map_fails_its_tasks_and_the_rest_finish(hosts, tmp_path):
    home = str(tmp_path / "home")
    connection = _start(hosts, home, "--heartbeat-interval", "0.5", "--heartbeat-misses", "4")
    # h3's engine waits for its controller to come back, as `zpool engine` does by default.
    engines = [
        _engine(hosts, h, connection, home, str(tmp_path / f"{h}.log"), r) for h, r in (("h2", "0"), ("h3", "600"))
    ]
    _wait_engines(hosts, home, 2)
    script = tmp_path / "cut.py"
    script.write_text(LINK_CUT)
    client = hosts.popen(
        "h1",
        [PY, str(script), connection],
        env=_env(home),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout.readline().strip() == "started"
    time.sleep(1.0)  # both hosts run tasks
    hosts.cut("h3")
    client.stdin.write("go\n")
    client.stdin.flush()
    out, _ = client.communicate(timeout=180)
    assert client.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    outcomes = result["outcomes"]
    # h3's tasks failed once its silence passed the heartbeat bound (0.5 s x 4); the others ran on h2.
    assert "EngineError" in outcomes
    assert set(outcomes) <= {"h2", "h3", "EngineError"} and outcomes.count("h2") >= 12
    assert result["seconds"] < 60
    assert _engines_up(hosts, home) == 1  # h3's engine is not counted while cut off
    hosts.mend("h3")
    # The link comes back: h3's engine, which waited, registers again as a new engine (its old tasks
    # failed already, and what it held of them is dropped), counted once, not twice.
    cluster = HostCluster(hosts, home)
    cluster.wait_engines(2, timeout=60)
    status = cluster.status()
    lines = status.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("ENGINE")) + 1 :]
    rows = [line.split() for line in table[: table.index("")]]
    assert sorted(row[2] for row in rows) == ["h2", "h3"], status
    assert {row[0] for row in rows if row[2] == "h3"} == {"2"}, status  # a new id: the stale record is gone
    done = cluster.script(str(tmp_path / "after.py"), AFTER_MEND)
    assert sorted(done) == ["h2", "h3"]
    hosts.run("h1", [PY, "-m", "zpool", "cluster", "stop", "--name", "net"], env=_env(home))
    for engine in engines:
        assert engine.wait(30) == 0  # told to shut down, over the mended link too


@pytest.mark.skipif(no_sshd() is not None, reason=f"no sshd: {no_sshd()}")
def test_the_ssh_launcher_starts_uses_and_ends_engines_on_other_hosts(hosts, tmp_path):
    home = str(tmp_path / "home")
    ssh = hosts.start_sshd(["h2", "h3"])
    h2, h3 = hosts.address("h2"), hosts.address("h3")
    argv = [PY, "-m", "zpool", "cluster", "start", "--daemon", "--name", "net", "--ip", hosts.address("h1")]
    argv += ["--launcher", "ssh", "--hosts", f"{h2}:2,{h3}:1", "--ssh", " ".join(ssh), "--remote-python", PY]
    started = hosts.run("h1", argv, env=_env(home))
    assert started.returncode == 0, started.stderr
    assert "3 engine(s)" in started.stdout  # it returned once all three took tasks
    connection = os.path.join(home, "clusters", "net", "cluster.json")
    script = tmp_path / "where.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys, zpool

            def where(_):
                import os, socket
                return socket.gethostname(), os.getpid()

            with zpool.Pool(connection=sys.argv[1], processes=3) as pool:
                print(json.dumps(sorted(set(map(tuple, pool.map(where, range(30), chunksize=1))))))
            """
        )
    )
    done = hosts.run("h1", [PY, str(script), connection], env=_env(home))
    assert done.returncode == 0, done.stderr
    engines = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(h for h, _ in engines) == ["h2", "h2", "h3"]
    pids = [pid for _, pid in engines]
    assert all(alive(pid) for pid in pids)
    # The ssh sessions drop (killed here): the engines run on, and stopping the cluster still ends them.
    for proc in psutil_ssh_sessions():
        proc.kill()
    time.sleep(1.0)
    stopped = hosts.run("h1", [PY, "-m", "zpool", "cluster", "stop", "--name", "net"], env=_env(home))
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "engines outlived their cluster"
        time.sleep(0.2)
    assert not os.path.exists(os.path.expanduser("~/.zpool/remote")) or not os.listdir(
        os.path.expanduser("~/.zpool/remote")
    )  # (the hosts share this file system: the copies of the connection file are gone)


def psutil_ssh_sessions() -> list[psutil.Process]:
    """The ssh clients holding the launcher's engine sessions (on h1; processes are visible from everywhere)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "ssh" and "zpool.engine --connection-file .zpool/remote/" in cmdline:
            found.append(proc)
    return found
