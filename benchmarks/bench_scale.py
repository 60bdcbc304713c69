"""How far one controller goes: registration, heartbeats, CPU per task and memory as engines grow (8 to 256).

Starts standalone clusters of its own (``--no-db``, in a temporary
``$ZPOOL_HOME``, named ``zpool-scale-<pid>-...``) with no engines, and
starts the engines by hand (``python -m zpool.engine --connection-file``),
in steps of 8, 32, 64, 128 and 256 (``--max`` changes the last). Three
clusters, one after the other, on each transport:

1. *grow*: at each step the new engines start at once, timed until the
   controller counts them all (its brief queue reply: the engines taking
   tasks), with the controller's CPU meanwhile; then the controller's CPU
   over ``--idle-s`` seconds of idleness (heartbeats only), its RSS and USS,
   and the engines' own. No task runs on this cluster, so its memory is
   the engines' alone (finished tasks are remembered, and would count).
2. *burst*: a fresh cluster and all the engines started at once. Then the
   controller is killed (SIGKILL) and started again at the same addresses:
   the engines, imported already, register again together, which times the
   controller's side of registration without the engines' start-up.
3. *tasks*: the steps again, and at each ``--tasks`` ``apply_async(abs, (i,))``
   (``--rounds`` times, the median kept) and a ``map_async`` of
   ``--tasks`` chunks of 10 items: tasks/s, and the controller's CPU
   (``psutil``, all its threads) per task.

Transports: ``ipc`` (Unix sockets, one machine) and ``tcp`` (TCP with
CURVE between network namespaces: the controller and this script's client
in ``zpb-h1``, the engines in turn in ``zpb-h1``, ``zpb-h2`` and ``zpb-h3``,
each with its own host name and ``/dev/shm``, on a bridge in ``zpb-sw``, at
10.212.0.0/24). ``tcp`` needs root, ``ip``, ``nsenter`` and ``unshare``; it
is skipped otherwise, saying why. The namespaces have no route out, the
root namespace gets an ``unreachable`` route for the subnet while they
exist, and everything is removed at the end, Ctrl-C included.

With ``--profile DIR`` (and py-spy installed), the controller is sampled
at the largest step while idle and during ``apply_async``: the collapsed
stacks go to DIR and the functions that take its time are printed.

Prints, per transport, registration, idleness and task tables, then the
projected ceiling of one controller (one core): engines its heartbeats
fill, tasks/s at this and larger sizes, memory per engine.

Run: ``python benchmarks/bench_scale.py [--max 256] [--transports ipc,tcp] [--tasks 10000] [--profile DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = (8, 32, 64, 128, 256)
NET = "10.212.0"
PREFIX = "zpb-"
SWITCH = PREFIX + "sw"
HOSTS = ("h1", "h2", "h3")
GUARD = ("unreachable", f"{NET}.0/24", "metric", "4244")
MAP_CHUNK = 10  # items per map task
REGISTER_TIMEOUT_S = 600.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- fake hosts: network namespaces on a bridge ---------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def net_unavailable() -> str | None:
    """Why the namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool} command"
    made = _ip("netns", "add", PREFIX + "probe", check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", PREFIX + "probe", check=False)
    return None


def shm_dir(workdir: str, host: str) -> str:
    return os.path.join(workdir, f"shm-{host}")


def net_up(workdir: str) -> None:
    """Hosts h1..h3 at 10.212.0.1..3 on a bridge in a namespace of its own; the guard route in the root one."""
    net_down()
    _ip("route", "add", *GUARD)
    _ip("netns", "add", SWITCH)
    _ip("-n", SWITCH, "link", "set", "lo", "up")
    _ip("-n", SWITCH, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
    _ip("-n", SWITCH, "link", "set", "br0", "up")
    for i, host in enumerate(HOSTS, 1):
        ns = PREFIX + host
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", SWITCH, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", SWITCH, "link", "set", host, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        os.makedirs(shm_dir(workdir, host), mode=0o1777, exist_ok=True)
        os.chmod(shm_dir(workdir, host), 0o1777)
    for i in range(2, len(HOSTS) + 1):  # h1 reaches the others (a refused connection means the address answers)
        probe = f"import socket; socket.create_connection(('{NET}.{i}', 9), 1)"
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run(
                ["ip", "netns", "exec", PREFIX + HOSTS[0], sys.executable, "-c", probe],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if "refused" in done.stderr:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"h1 cannot reach {NET}.{i}: {done.stderr.strip()[-300:]}")
            time.sleep(0.1)


def net_down() -> None:
    """Remove every ``zpb-`` namespace, ending what runs in it, and the guard route."""
    for ns in _ip("netns", "list", check=False).stdout.split():
        if not ns.startswith(PREFIX):
            continue
        for pid in _ip("netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        _ip("netns", "del", ns, check=False)
    _ip("route", "del", *GUARD, check=False)


def on_host(host: str, workdir: str, argv: list[str]) -> list[str]:
    """`argv` run on fake host `host`: its network namespace, its own host name and /dev/shm."""
    script = 'hostname "$1"; mount --bind "$2" /dev/shm; shift 2; exec "$@"'
    return [
        "nsenter",
        f"--net=/run/netns/{PREFIX}{host}",
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
        PREFIX + host,
        shm_dir(workdir, host),
        *argv,
    ]


# -- the driver: one transport, run in the process (and namespace) of the controller's clients ----------


def cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of `proc`, all its threads: from the scheduler's nanosecond counts where Linux has them.

    (``psutil.cpu_times`` counts in clock ticks, 10 ms, too coarse for a second of heartbeats.)
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        t = proc.cpu_times()
        return t.user + t.system


class Cluster:
    """A standalone cluster with no engines of its own, and the engines this script starts by hand."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.args = args
        self.tcp = args.driver == "tcp"
        self.engines: list[subprocess.Popen[bytes]] = []
        self.info: Any = None
        self.ctrl: psutil.Process | None = None
        self.ask_s = 0.0  # controller CPU per question (see ask_cost)
        self.sock: Any = None  # one connection for every question (a new one costs the controller a handshake)
        self.asked = 0
        self.log = open(os.path.join(args.workdir, f"engines-{args.driver}.log"), "ab")

    def start(self) -> None:
        from zpool.protocol import ConnectionInfo
        from zpool.standalone import start_cluster

        state, _ = start_cluster(self.name, 0, db=None, ip=f"{NET}.1" if self.tcp else None, ready_timeout=60)
        self.info = ConnectionInfo.read(state.connection_file)
        self.ctrl = psutil.Process(state.controller_pid)
        self.connect()
        self.ask_s = self.ask_cost()

    def connect(self) -> None:
        import zmq

        from zpool._transport import member_socket

        if self.sock is not None:
            self.sock.close()
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        member_socket(self.sock, self.info.client, self.info.curve)
        self.sock.connect(self.info.client)

    def ask(self, content: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """The controller's queue reply to `content` (as ``zpool.standalone.ask``, on a kept connection)."""
        from zpool.protocol import MsgType, Session, encode, recv_frames, send_frames

        session = Session(self.info.key)
        self.asked += 1
        send_frames(self.sock, session.build(MsgType.QUEUE_REQUEST, content=encode(content)))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise RuntimeError(f"the controller of {self.name} did not answer within {timeout:g} s")
            msg = session.unpack(recv_frames(self.sock))
            if msg.msg_type == MsgType.QUEUE_REPLY.value:
                return dict(msg.content)

    def ask_cost(self, n: int = 300) -> float:
        """Controller CPU seconds per brief question (what polling for registrations costs it)."""
        assert self.ctrl is not None
        self.up()
        c0 = cpu_s(self.ctrl)
        for _ in range(n):
            self.up()
        return (cpu_s(self.ctrl) - c0) / n

    def spawn(self, k: int, reconnect_s: float = 0.0) -> list[subprocess.Popen[bytes]]:
        """Start `k` engines at once (over the hosts in turn, on tcp)."""
        argv = [sys.executable, "-m", "zpool.engine", "--connection-file", self.connection_file]
        argv += ["--reconnect-timeout", str(reconnect_s)]
        new = []
        for _ in range(k):
            cmd = on_host(HOSTS[len(self.engines) % len(HOSTS)], self.args.workdir, argv) if self.tcp else argv
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
            self.engines.append(proc)
            new.append(proc)
        return new

    @property
    def connection_file(self) -> str:
        from zpool.standalone import state_of

        return state_of(self.name).connection_file

    def up(self) -> int:
        """Engines taking tasks, as the controller counts them (its cheapest status reply)."""
        return len(self.ask({"brief": True})["engines"])

    def detail(self) -> list[dict[str, Any]]:
        return list(self.ask({"detail": True})["engine_detail"])

    def wait_up(self, n: int) -> None:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while self.up() < n:
            dead = [p.pid for p in self.engines if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{len(dead)} engine(s) exited (pids {dead[:5]}...); see {self.log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.up()} of {n} engines registered in {REGISTER_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

    def register(self, k: int, n: int, idle_per_s: float, reconnect_s: float = 0.0) -> dict[str, float]:
        """Start `k` engines at once (to `n` in all) and time them until the controller counts all `n`."""
        assert self.ctrl is not None
        c0, w0, t0, a0 = cpu_s(self.ctrl), time.time(), time.perf_counter(), self.asked
        new = self.spawn(k, reconnect_s)
        spawned = time.perf_counter() - t0
        self.wait_up(n)
        wall = time.perf_counter() - t0
        ctrl = cpu_s(self.ctrl) - c0
        polls = self.asked - a0
        pids = {p.pid for p in new}
        times = [e["registered"] - w0 for e in self.detail() if e["pid"] in pids]
        eng = [cpu_s(psutil.Process(p.pid)) for p in new]
        # The controller's CPU for registering, less what its heartbeats to the engines up before, and the
        # polling, cost meanwhile.
        net = max(0.0, ctrl - idle_per_s * wall - polls * self.ask_s)
        return {
            "n": n,
            "new": k,
            "spawn_s": spawned,
            "first_s": min(times),
            "last_s": max(times),
            "wall_s": wall,
            "ctrl_ms": ctrl * 1e3,
            "ctrl_us_per_engine": net / k * 1e6,
            "engine_cpu_ms": statistics.mean(eng) * 1e3,
        }

    def idle(self, seconds: float) -> float:
        """The controller's CPU seconds per second while nothing but heartbeats happens."""
        assert self.ctrl is not None
        time.sleep(1.0)  # (what the last step started settles)
        c0, t0 = cpu_s(self.ctrl), time.perf_counter()
        time.sleep(seconds)
        return (cpu_s(self.ctrl) - c0) / (time.perf_counter() - t0)

    def memory(self) -> dict[str, float]:
        assert self.ctrl is not None
        mine = self.ctrl.memory_full_info()
        rss, uss = [], []
        for p in self.engines:
            try:
                m = psutil.Process(p.pid).memory_full_info()
            except psutil.Error:
                continue
            rss.append(m.rss)
            uss.append(m.uss)
        mib = 2**20
        return {
            "ctrl_rss_mib": mine.rss / mib,
            "ctrl_uss_mib": mine.uss / mib,
            "eng_rss_mib": statistics.mean(rss) / mib if rss else 0.0,
            "eng_uss_mib": statistics.mean(uss) / mib if uss else 0.0,
            "eng_uss_sum_mib": sum(uss) / mib,
            "eng_rss_sum_mib": sum(rss) / mib,
        }

    def kill_controller(self) -> None:
        assert self.ctrl is not None
        self.ctrl.kill()
        self.ctrl.wait(10)

    def stop(self) -> None:
        """Stop the controller (it tells the engines to go); end the engines that linger."""
        from zpool.standalone import stop_cluster

        try:
            stop_cluster(self.name, timeout=10.0)
        except Exception as exc:
            log(f"stopping {self.name}: {type(exc).__name__}: {exc}")
        deadline = time.monotonic() + 15
        for p in self.engines:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.engines.clear()
        self.log.close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def profile_start(pid: int, path: str) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(exe, os.X_OK):
        log("py-spy not found: no profile")
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--nolineno",
        "--format",
        "raw",
        "--nonblocking",
        "-o",
        path,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # (it attaches)
    return proc


def profile_stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)  # (py-spy writes its file on Ctrl-C)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def profile_summary(path: str, top: int = 14) -> dict[str, Any]:
    """The functions that take the sampled time, from py-spy's collapsed stacks: self and inclusive shares."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                frames = [
                    fr.split(" (")[0] + " (" + fr.rsplit("/", 1)[-1] if "/" in fr else fr for fr in stack.split(";")
                ]
                total += n
                own[frames[-1]] += n
                for fr in set(frames):
                    incl[fr] += n
    except OSError:
        return {}
    if not total:
        return {}
    return {
        "samples": total,
        "self": [(fr, n / total) for fr, n in own.most_common(top)],
        "inclusive": [(fr, n / total) for fr, n in incl.most_common(top)],
    }


def apply_async_round(pool: Any, n: int, ctrl: psutil.Process) -> tuple[float, float]:
    """Tasks/s and controller CPU µs per task of `n` apply_async calls, waited for together."""
    c0, t0 = cpu_s(ctrl), time.perf_counter()
    results = [pool.apply_async(abs, (i,)) for i in range(n)]
    for r in results:
        r.get(600)
    wall = time.perf_counter() - t0
    return n / wall, (cpu_s(ctrl) - c0) / n * 1e6


def map_round(pool: Any, chunks: int, ctrl: psutil.Process) -> tuple[float, float]:
    """Chunks/s and controller CPU µs per chunk of a map_async of `chunks` chunks (the controller's path)."""
    c0, t0 = cpu_s(ctrl), time.perf_counter()
    ar = pool.map_async(abs, range(chunks * MAP_CHUNK), chunksize=MAP_CHUNK)
    ar.get(600)
    wall = time.perf_counter() - t0
    assert len(ar.msg_ids) == chunks
    return chunks / wall, (cpu_s(ctrl) - c0) / chunks * 1e6


def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one transport; returns them for the table."""
    from zpool import Pool

    steps = [s for s in STEPS if s < args.max] + [args.max]
    base = f"zpool-scale-{args.tag}-{args.driver}"
    out: dict[str, Any] = {"mode": args.driver, "steps": steps, "grow": [], "tasks": [], "profile": {}}

    log(f"[{args.driver}] grow: registration, heartbeats, memory")
    cluster = Cluster(base + "-grow", args)
    try:
        cluster.start()
        assert cluster.ctrl is not None
        out["idle0"] = idle = cluster.idle(args.idle_s)
        out["mem0"] = cluster.memory()
        out["ask_us"] = cluster.ask_s * 1e6
        have = 0
        for n in steps:
            row = cluster.register(n - have, n, idle)
            have = n
            row["idle_per_s"] = idle = cluster.idle(args.idle_s)
            row.update(cluster.memory())
            out["grow"].append(row)
            log(
                f"  {n:4d} engines: registered in {row['wall_s']:.1f} s, controller {row['ctrl_us_per_engine']:.0f}"
                f" us/engine; idle {idle * 100:.2f}% of a core; RSS {row['ctrl_rss_mib']:.1f} MiB"
            )
        if args.profile:
            path = os.path.join(args.profile, f"{args.driver}-idle-{have}.txt")
            spy = profile_start(cluster.ctrl.pid, path)
            time.sleep(args.idle_s)
            profile_stop(spy)
            out["profile"]["idle"] = profile_summary(path)
    finally:
        cluster.stop()

    log(f"[{args.driver}] burst: {args.max} engines at once, then a controller restart")
    cluster = Cluster(base + "-burst", args)
    try:
        cluster.start()
        idle0 = out["idle0"]
        out["burst"] = cluster.register(args.max, args.max, idle0, reconnect_s=120.0)
        log(f"  registered in {out['burst']['wall_s']:.1f} s")
        if args.restart:
            from zpool.standalone import start_cluster

            cluster.kill_controller()
            time.sleep(1.0)
            state, _ = start_cluster(cluster.name, 0, db=None, ip=f"{NET}.1" if cluster.tcp else None)
            cluster.ctrl = psutil.Process(state.controller_pid)
            cluster.connect()
            c0, w0, t0, a0 = cpu_s(cluster.ctrl), time.time(), time.perf_counter(), cluster.asked
            cluster.wait_up(args.max)
            wall = time.perf_counter() - t0
            ctrl = cpu_s(cluster.ctrl) - c0 - (cluster.asked - a0) * cluster.ask_s
            times = [e["registered"] - w0 for e in cluster.detail()]
            out["restart"] = {
                "n": args.max,
                "wall_s": wall,
                "first_s": min(times),
                "last_s": max(times),
                "ctrl_ms": ctrl * 1e3,
                "ctrl_us_per_engine": max(0.0, ctrl - idle0 * wall) / args.max * 1e6,
            }
            log(f"  again after a restart in {wall:.1f} s, controller {ctrl * 1e3:.0f} ms")
    finally:
        cluster.stop()

    log(f"[{args.driver}] tasks: apply_async and map at each step")
    cluster = Cluster(base + "-tasks", args)
    try:
        cluster.start()
        assert cluster.ctrl is not None
        have = 0
        for n in steps:
            cluster.register(n - have, n, 0.0)
            have = n
            pool = Pool(cluster=cluster.name, processes=n)
            try:
                pool.map_async(abs, range(4 * n), chunksize=1).get(600)  # (every engine has run a task)
                applied = [apply_async_round(pool, args.tasks, cluster.ctrl) for _ in range(args.rounds)]
                mapped = [map_round(pool, args.tasks, cluster.ctrl) for _ in range(args.rounds)]
                row = {
                    "n": n,
                    "apply_per_s": statistics.median(a[0] for a in applied),
                    "apply_us": statistics.median(a[1] for a in applied),
                    "map_per_s": statistics.median(m[0] for m in mapped),
                    "map_us": statistics.median(m[1] for m in mapped),
                }
                out["tasks"].append(row)
                log(
                    f"  {n:4d} engines: apply_async {row['apply_per_s']:,.0f}/s, {row['apply_us']:.1f} us/task;"
                    f" map {row['map_per_s']:,.0f} chunks/s, {row['map_us']:.1f} us/chunk"
                )
                if args.profile and n == steps[-1]:
                    path = os.path.join(args.profile, f"{args.driver}-apply-{n}.txt")
                    spy = profile_start(cluster.ctrl.pid, path)
                    for _ in range(max(3, args.rounds)):
                        apply_async_round(pool, args.tasks, cluster.ctrl)
                    profile_stop(spy)
                    out["profile"]["apply_async"] = profile_summary(path)
            finally:
                pool.terminate()
    finally:
        cluster.stop()
    return out


# -- the report ---------------------------------------------------------------------------------------


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line through (xs, ys): intercept, slope."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def report(res: dict[str, Any]) -> None:
    mode = res["mode"]
    what = "Unix sockets, one namespace" if mode == "ipc" else "TCP + CURVE, engines on 3 namespaces"
    print(f"\n== {mode}: {what} ==")
    print("\nregistration (the new engines started at once; controller CPU less its heartbeats meanwhile)")
    rows = []
    regs = [*res["grow"], {**res["burst"], "label": "burst"}]
    if "restart" in res:
        regs.append({**res["restart"], "new": res["restart"]["n"], "label": "restart", "engine_cpu_ms": None})
    for r in regs:
        rows.append(
            [
                f"{r['n']}" + (f" ({r['label']})" if "label" in r else ""),
                f"{r['new']}",
                f"{r['wall_s']:.1f}",
                f"{r['first_s']:.2f}-{r['last_s']:.2f}",
                f"{r['ctrl_ms']:.0f}",
                f"{r['ctrl_us_per_engine']:.0f}",
                "" if r.get("engine_cpu_ms") is None else f"{r['engine_cpu_ms']:.0f}",
            ]
        )
    table(["engines", "new", "wall s", "registered at s", "ctrl CPU ms", "ctrl us/engine", "engine CPU ms"], rows)

    print(f"(polling the controller for its count cost it {res['ask_us']:.0f} us a question; taken out)")
    print("\nidle (heartbeats every 1 s) and memory")
    idle0, mem0 = res["idle0"], res["mem0"]
    rows = [
        [
            "0",
            f"{idle0 * 100:.2f}",
            "",
            f"{mem0['ctrl_rss_mib']:.1f}",
            f"{mem0['ctrl_uss_mib']:.1f}",
            "",
            "",
            "",
        ]
    ]
    for r in res["grow"]:
        rows.append(
            [
                f"{r['n']}",
                f"{r['idle_per_s'] * 100:.2f}",
                f"{(r['idle_per_s'] - idle0) / r['n'] * 1e6:.1f}",
                f"{r['ctrl_rss_mib']:.1f}",
                f"{r['ctrl_uss_mib']:.1f}",
                f"{r['eng_rss_mib']:.1f}",
                f"{r['eng_uss_mib']:.1f}",
                f"{r['eng_uss_sum_mib']:,.0f}",
            ]
        )
    table(
        [
            "engines",
            "ctrl CPU % idle",
            "us/engine/s",
            "ctrl RSS MiB",
            "ctrl USS MiB",
            "engine RSS MiB",
            "engine USS MiB",
            "engines' USS MiB",
        ],
        rows,
    )

    print(f"\ntasks (apply_async(abs), and map_async in chunks of {MAP_CHUNK}; median of the rounds)")
    rows = [
        [
            f"{r['n']}",
            f"{r['apply_per_s']:,.0f}",
            f"{r['apply_us']:.1f}",
            f"{r['map_per_s']:,.0f}",
            f"{r['map_us']:.1f}",
        ]
        for r in res["tasks"]
    ]
    table(["engines", "apply_async/s", "ctrl us/task", "map chunks/s", "ctrl us/chunk"], rows)

    # The ceiling: one core of the controller.
    ns = [0.0] + [float(r["n"]) for r in res["grow"]]
    _, hb = slope(ns, [idle0, *(r["idle_per_s"] for r in res["grow"])])
    hb_us = hb * 1e6
    _, mem = slope(ns, [mem0["ctrl_uss_mib"], *(r["ctrl_uss_mib"] for r in res["grow"])])
    _, rss = slope(ns, [mem0["ctrl_rss_mib"], *(r["ctrl_rss_mib"] for r in res["grow"])])
    tn = [float(r["n"]) for r in res["tasks"]]
    a_apply, b_apply = slope(tn, [r["apply_us"] for r in res["tasks"]])
    a_map, b_map = slope(tn, [r["map_us"] for r in res["tasks"]])
    last = res["tasks"][-1]
    reg_us = res.get("restart", res["burst"])["ctrl_us_per_engine"]
    print(f"\nprojected ceiling of one controller (one core), {mode}:")
    print(
        f"  heartbeats: {hb_us:.1f} us of controller CPU per engine per second (fit over 0..{int(ns[-1])});"
        f" a core is full at {1e6 / hb_us:,.0f} engines, 10% of it at {1e5 / hb_us:,.0f}"
        if hb_us > 0
        else "  heartbeats: too cheap to measure"
    )
    print(
        f"  memory: {mem * 2**20 / 1024:.1f} KiB USS ({rss * 2**20 / 1024:.1f} KiB RSS) per engine:"
        f" {mem * 10_000 / 1024:.2f} GiB for 10,000 engines"
    )
    print(f"  registration: {reg_us:.0f} us of controller CPU per engine: {1e6 / max(reg_us, 1):,.0f} engines/s")
    print(
        f"  per task: apply_async {a_apply:.1f} + {b_apply * 1e3:.1f} ns x engines us,"
        f" map chunk {a_map:.1f} + {b_map * 1e3:.1f} ns x engines us (fits over {int(tn[0])}..{int(tn[-1])})"
    )
    print(
        f"  at {last['n']} engines: {1e6 / last['apply_us']:,.0f} apply_async tasks/s,"
        f" {1e6 / last['map_us']:,.0f} map chunks/s per controller core"
    )
    for e in (1024, 4096):
        left = 1e6 - e * max(hb_us, 0.0)
        line = f"  at {e:,} engines (extrapolated): heartbeats take {e * max(hb_us, 0.0) / 1e4:.0f}% of the core;"
        if left <= 0:
            print(line + " nothing is left for tasks")
            continue
        print(
            line + f" {left / (a_apply + b_apply * e):,.0f} apply_async tasks/s,"
            f" {left / (a_map + b_map * e):,.0f} map chunks/s with the rest"
        )
    for kind, prof in res.get("profile", {}).items():
        if not prof:
            continue
        print(f"\nwhere the controller's time goes at {ns[-1]:.0f} engines, {kind} ({prof['samples']} samples):")
        print("  self:      " + "; ".join(f"{fr} {share:.0%}" for fr, share in prof["self"][:10]))
        print("  inclusive: " + "; ".join(f"{fr} {share:.0%}" for fr, share in prof["inclusive"][:14]))


# -- main -----------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_driver(mode: str, args: argparse.Namespace, workdir: str) -> dict[str, Any] | None:
    """Run one transport's measurements in a child process (in namespace zpb-h1 for tcp); its results."""
    out = os.path.join(workdir, f"result-{mode}.json")
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--driver",
        mode,
        "--out",
        out,
        "--workdir",
        workdir,
        "--tag",
        str(os.getpid()),
        "--max",
        str(args.max),
        "--tasks",
        str(args.tasks),
        "--rounds",
        str(args.rounds),
        "--idle-s",
        str(args.idle_s),
    ]
    if args.profile:
        argv += ["--profile", os.path.abspath(args.profile)]
    if not args.restart:
        argv += ["--no-restart"]
    cmd = on_host("h1", workdir, argv) if mode == "tcp" else argv
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(90)  # (it cleans up after itself)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if code != 0 or not os.path.exists(out):
        log(f"[{mode}] failed (exit code {code})")
        return None
    with open(out) as f:
        result: dict[str, Any] = json.load(f)
    return result


def stop_leftovers(home: str, workdir: str, net: bool) -> None:
    """Stop any cluster of this run that is left (a driver killed mid-way): its controller, its folder.

    A cluster on TCP is stopped from zpb-h1, where its controller listens (never from the root namespace).
    """
    root = os.path.join(home, "clusters")
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        argv = [sys.executable, "-m", "zpool", "cluster", "stop", "--name", name]
        try:
            with open(os.path.join(folder, "cluster.json")) as f:
                tcp = json.load(f)["client"].startswith("tcp://")
        except (OSError, ValueError, KeyError):
            tcp = False
        if tcp and net:
            argv = on_host("h1", workdir, argv)
        subprocess.run(argv, env={**os.environ, "ZPOOL_HOME": home}, capture_output=True, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=256, help="engines at the last step (default 256)")
    parser.add_argument("--transports", default="ipc,tcp", help="ipc, tcp or both (default ipc,tcp)")
    parser.add_argument("--tasks", type=int, default=10_000, help="apply_async calls, and map chunks, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of idleness measured at each step")
    parser.add_argument("--profile", default=None, metavar="DIR", help="py-spy the controller at the largest step")
    parser.add_argument("--no-restart", dest="restart", action="store_false", help="skip the restart figure")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    # (internal: one transport's measurements, in a child process)
    parser.add_argument("--driver", choices=("ipc", "tcp"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)

    if args.driver:
        result = drive(args)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return 0

    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    if "tcp" in transports:
        why = net_unavailable()
        if why is not None:
            log(f"tcp skipped: {why}")
            transports.remove("tcp")
    results = []
    workdir = tempfile.mkdtemp(prefix="zpool-scale-")
    home = os.path.join(workdir, "home")
    os.makedirs(home, mode=0o700)
    os.environ["ZPOOL_HOME"] = home
    made_net = False
    try:
        for mode in transports:
            if mode == "tcp":
                made_net = True
                net_up(workdir)
            t0 = time.perf_counter()
            result = run_driver(mode, args, workdir)
            log(f"[{mode}] done in {time.perf_counter() - t0:.0f} s")
            if result is not None:
                results.append(result)
    finally:
        stop_leftovers(home, workdir, made_net)
        if made_net:
            net_down()  # (ends whatever still runs in the namespaces)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"one controller, {args.max} engines at most, on {psutil.cpu_count()} cores;"
        f" {args.tasks:,} tasks per round, median of {args.rounds}"
    )
    for result in results:
        report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
