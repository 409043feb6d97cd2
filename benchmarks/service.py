"""The served side: a `bertserve serve` process (or a given URL) and the load clients that drive it."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.common import (
    cpu_seconds_from_stat,
    established_inodes,
    parent_pid_from_stat,
    parse_wrk,
    summarize_latencies,
    system_cpu,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0, api_key: str | None = None):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return response.status, json.loads(response.read())


def _stat(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc, no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(parent_pid_from_stat(stat), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def machine_cpu() -> dict[str, float]:
    return system_cpu(Path("/proc/stat").read_text(), CLOCK_TICKS)


def other_load(before: dict[str, float], after: dict[str, float], own_cpu_s: float, wall_s: float) -> dict:
    """CPU the rest of the machine used meanwhile (other processes; steal = other virtual machines), % of one core."""
    busy = after["busy"] - before["busy"]
    return {"other_cpu_pct": max(0.0, 100 * (busy - own_cpu_s) / wall_s),
            "steal_pct": 100 * (after["steal"] - before["steal"]) / wall_s}


def connections_per_process(port: int, pids: list[int]) -> list[int]:
    """How many established client connections each process holds on `port` (keep-alive pins them there)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            inodes |= established_inodes(Path(table).read_text(), port)
        except OSError:
            pass
    counts = []
    for pid in pids:
        n = 0
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    n += 1
        except OSError:
            pass
        counts.append(n)
    return counts


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds_from_stat(s, CLOCK_TICKS) for p in pids if (s := _stat(p)))


class Server:
    """`bertserve serve` on 127.0.0.1 and a free port: W workers x T intra-op threads, plus extra BERTSERVE_* env."""

    def __init__(self, repository: Path, workers: int, threads: int, env: dict[str, str], log_dir: Path,
                 src: Path | None = None, ready_timeout_s: float = 600, command: list[str] | None = None) -> None:
        self.workers, self.threads = workers, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_API_KEYS")}
        # threads 0: the server's own layout (as `make run` starts it)
        own = {"BERTSERVE_INTRA_OP_THREADS": str(threads)} if threads else {}
        # gRPC off unless asked: two benchmark servers must not contend for its default port
        self.env = {**inherited, **own, "BERTSERVE_LOG_LEVEL": "warning", "BERTSERVE_GRPC_PORT": "0", **env}
        if src is not None:  # another checkout: its `app` package first on the path (ahead of an editable install)
            src = Path(src).resolve()
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), self.env.get("PYTHONPATH")]))
        self.log_path = log_dir / f"server-{workers}x{threads}-{self.port}.log"
        self._log = open(self.log_path, "w+")  # noqa: SIM115 - open for the server's whole life, closed in stop()
        command = command or [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                              "--workers", str(workers), "--model-repository", str(Path(repository).resolve())]
        self.process = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in command],
            cwd=src or ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_ready(ready_timeout_s)

    @classmethod
    def plain(cls, version_dir: Path, log_dir: Path) -> "Server":
        """benchmarks/plain_server.py on 2 uvloop + httptools workers, one single-thread INT8 session each."""
        command = [sys.executable, "-m", "uvicorn", "benchmarks.plain_server:app", "--host", "127.0.0.1", "--port",
                   "{port}", "--workers", "2", "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                   "--no-access-log"]
        return cls(version_dir, 2, 1, {"PLAIN_MODEL_DIR": str(Path(version_dir).resolve())}, log_dir, command=command)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench: server exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                status, _ = get_json(self.url + "/health/ready", timeout=2)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"bench: server not ready within {timeout_s:.0f} s; log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text()[-chars:]

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def worker_pids(self) -> list[int]:
        """Processes that serve requests: the uvicorn workers, or the server itself when it runs one."""
        pids = self.pids()
        if self.workers == 1:
            return [self.process.pid]
        found = []
        for pid in pids[1:]:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if (b"spawn_main" in cmd or b"multiprocessing.spawn" in cmd) and b"resource_tracker" not in cmd:
                found.append(pid)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def model_info(url: str, model: str, version: int | None, api_key: str | None = None, tries: int = 8
               ) -> tuple[dict, list[dict]]:
    """GET /models several times (fresh connections reach different workers, each of which autotunes its own
    batch caps): the model version's entry and every distinct `batching` choice seen."""
    info, choices = {}, []
    for _ in range(tries):
        _, listed = get_json(url + "/models", api_key=api_key)
        mine = [m for m in listed if m.get("name") == model] or listed
        entry = next((m for m in mine if version is None or m.get("version") == version), mine[-1] if mine else {})
        info = info or entry
        if entry.get("batching") not in choices:
            choices.append(entry.get("batching"))
    return info, choices


# ---- load clients ----


def ensure_wrk(install: bool) -> str | None:
    """wrk's path; installs Debian's package when missing and allowed (root + apt-get); None -> fallback."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk missing, installing Debian's package (apt-get install -y wrk) ...", flush=True)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, check=False, **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=False, **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, check=False, **quiet)
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].split("Copyright")[0].strip() if (out.stdout + out.stderr) else "wrk"


class Client:
    """Runs one closed-loop load point in a separate process and measures that process's CPU."""

    def __init__(self, wrk: str | None, bodies: Path, api_key: str | None = None) -> None:
        self.wrk, self.bodies, self.api_key = wrk, bodies, api_key
        self.name = wrk_version(wrk) if wrk else "python asyncio raw-socket client (benchmarks/loadgen.py)"

    def command(self, url: str, concurrency: int, duration: float, offset: int) -> list[str]:
        if self.wrk:
            return [self.wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "60s",
                    "-s", str(HERE / "wrk.lua"), url + "/predict", "--", str(self.bodies), str(offset)] + (
                        [f"Bearer {self.api_key}"] if self.api_key else [])
        parts = urlsplit(url)
        return [sys.executable, str(HERE / "loadgen.py"), "--host", parts.hostname, "--port", str(parts.port),
                "--path", "/predict", "--bodies", str(self.bodies), "-c", str(concurrency), "-d", str(duration),
                "--offset", str(offset)] + (["--authorization", f"Bearer {self.api_key}"] if self.api_key else [])

    def run(self, url: str, concurrency: int, duration: float, offset: int = 0, server_pids: list[int] = (),
            worker_pids: list[int] = ()) -> dict:
        import threading

        conns: list[int] = []
        if worker_pids:  # halfway through: which worker holds how many of the client's connections
            port = urlsplit(url).port
            timer = threading.Timer(duration / 2, lambda: conns.extend(connections_per_process(port, list(worker_pids))))
            timer.start()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = cpu_seconds(list(server_pids))
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        machine_before = machine_cpu()
        t0 = time.perf_counter()
        out = subprocess.run(self.command(url, concurrency, duration, offset), capture_output=True, text=True,
                             check=False)
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds(list(server_pids)) - server_before
        machine_after = machine_cpu()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        if out.returncode != 0:
            raise RuntimeError(f"load client failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        if self.wrk:
            result = parse_wrk(out.stdout)
        else:
            raw = json.loads(out.stdout)
            result = summarize_latencies(raw["latencies_s"], raw["requests"], raw["errors"], raw["duration_s"])
        client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result["client_cpu_pct"] = 100 * client_cpu / wall  # % of one core, over the client's whole life
        result["server_cpu_pct"] = 100 * server_cpu / wall if server_pids else None
        own = client_cpu + server_cpu + (own_after.ru_utime - own_before.ru_utime) + (own_after.ru_stime - own_before.ru_stime)
        if server_pids:  # with --url the server's CPU is unknown, so nothing can be told apart
            result.update(other_load(machine_before, machine_after, own, wall))
        result["concurrency"] = concurrency
        if worker_pids:
            timer.join()
            result["connections_per_worker"] = conns
        return result
