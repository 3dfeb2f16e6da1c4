"""Real servers for the scale-out tests: PostgreSQL (initdb + pg_ctl in a tmp dir) and `chroma run`, on loopback.

Both are started once per test session by the fixtures in tests/test_scale.py and stopped when
it ends. PostgreSQL refuses to run as root, so as root the cluster is created and started as the
`postgres` system user (Debian's package creates it; `make test-deps` installs the package).
Anything missing is an actionable failure naming `make test-deps`, never a silent pass or a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from openai_replica import free_port  # noqa: E402


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class Postgres:
    url: str
    data: Path
    run_as: list[str]
    pg_ctl: str

    @classmethod
    def start(cls) -> Postgres:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("PostgreSQL server binaries not found (run `make test-deps`: apt-get install postgresql)")
        root = Path(tempfile.mkdtemp(prefix="foster-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        data, port = root / "data", free_port()
        subprocess.run([*run_as, initdb, "-D", str(data), "-U", "foster", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        # loopback TCP only; the unix socket goes to the tmp dir, not /var/run/postgresql
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=100"
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "60",
                        "start"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        return cls(url=f"postgresql://foster@127.0.0.1:{port}/postgres", data=data, run_as=run_as, pg_ctl=pg_ctl)

    def stop(self) -> None:
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def wait_until_up(proc: subprocess.Popen, health_url: str, log: Path, what: str, timeout: float) -> None:
    """Until `health_url` answers 200; a server that exits or stays silent is killed and its log's tail raised."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-1000:]}")
        try:
            if httpx.get(health_url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s: {log.read_text()[-1000:]}")


@dataclass
class Chroma:
    url: str
    proc: subprocess.Popen
    path: Path

    @classmethod
    def start(cls) -> Chroma:

        exe = Path(sys.executable).with_name("chroma")
        if not exe.exists():
            raise RuntimeError("`chroma` not found next to the interpreter (chromadb's server CLI; pip install chromadb)")
        path, port = Path(tempfile.mkdtemp(prefix="foster-chroma-")), free_port()
        log = open(path / "server.log", "wb")
        proc = subprocess.Popen([str(exe), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path / "db")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(proc, f"{url}/api/v2/heartbeat", path / "server.log", "chroma run", 60)
        return cls(url=url, proc=proc, path=path)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class FosterServe:
    """`foster serve --no-ui` as its own process on loopback, over the data directory `home`: what a user
    starts beside a run (nothing of the test process, such as a loaded model's state, is shared)."""

    url: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, home: Path, timeout: float = 120.0) -> FosterServe:

        exe = Path(sys.executable).with_name("foster")
        port, log = free_port(), Path(tempfile.mkdtemp(prefix="foster-serve-")) / "serve.log"
        env = {**os.environ, "FOSTER_HOME": str(home), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(exe), "serve", "--no-ui", "--port", str(port), "--log-level", "warning"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(proc, f"{url}/healthz", log, "foster serve", timeout)
        return cls(url=url, proc=proc, log=log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.log.parent, ignore_errors=True)
