"""Two sites on this machine: expose a service on west, reach it from east.

Runs exactly what a user would type, narrated, then stops everything it started and
removes what it created. Uses this machine's PostgreSQL when one answers on
127.0.0.1:5432 (and psql is installed), otherwise a small built-in echo service.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from tests.support.sites import SITECTL, Site, SiteError, free_port, site_env, wait_for


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(*cmd: str, env: dict[str, str]) -> str:
    shown = " ".join(["sitectl" if c == SITECTL else c for c in cmd])
    print(f"$ {shown}", flush=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: command failed ({result.returncode})")
    return result.stdout


def postgres_available() -> bool:
    if shutil.which("psql") is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def echo_server() -> int:
    """A tiny uppercase-echo service standing in for a legacy backend."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    port: int = srv.getsockname()[1]
    return port


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="vanrouter-demo-"))
    env = site_env(work)
    west, east = work / "west", work / "east"
    routers: list[Site] = []
    try:
        say("1. Create two sites (a CA and certificates each; no root needed)")
        run(SITECTL, "init", "west", "--site-dir", str(west), "--host", "127.0.0.1", env=env)
        run(SITECTL, "init", "east", "--site-dir", str(east), env=env)

        say("2. Start both routers (`sitectl run`, logs in the demo folder)")
        for site in (west, east):
            print(f"$ sitectl --site-dir {site} run &", flush=True)
            router = Site(work, site.name, env, runner="sitectl", start_timeout=20)
            routers.append(router)
            try:
                router.start()
            except SiteError as exc:
                raise SystemExit(f"demo: router for {site.name} did not start: {exc}") from exc

        say("3. West issues a one-time token; east redeems it and links")
        token = work / "west.token"
        run(SITECTL, "--site-dir", str(west), "token", "issue", "--expires", "15m",
            "--uses", "1", "-o", str(token), env=env)
        run(SITECTL, "--site-dir", str(east), "link", "create", str(token), env=env)

        use_pg = postgres_available()
        port = 5432 if use_pg else echo_server()
        what = "this machine's PostgreSQL" if use_pg else "a built-in echo service"
        say(f"4. West exposes {what} as routing key 'db'")
        run(SITECTL, "--site-dir", str(west), "connector", "create", "db",
            f"127.0.0.1:{port}", env=env)

        listen = free_port()
        say(f"5. East opens a local listener for 'db' on port {listen}")
        run(SITECTL, "--site-dir", str(east), "listener", "create", "db", str(listen), env=env)
        try:
            wait_for(lambda: "reachable: west" in run_quiet(east, env), 15, "key db reachable",
                     step=0.1)
        except SiteError as exc:
            raise SystemExit("demo: key db never became reachable") from exc

        say("6. A client on east reaches west's service through the mTLS link")
        if use_pg:
            run("psql", "-h", "127.0.0.1", "-p", str(listen), "-U", "postgres", "-d", "test",
                "-c", "select 'hello from west' as greeting, version()", env=env)
        else:
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as conn:
                conn.sendall(b"hello from east")
                print(f"sent 'hello from east', got back {conn.recv(100)!r}")

        say("7. Status as east sees it")
        run(SITECTL, "--site-dir", str(east), "status", env=env)
        say("Done: stopping routers and removing the demo sites")
        return 0
    finally:
        for router in reversed(routers):
            router.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_quiet(site: Path, env: dict[str, str]) -> str:
    result = subprocess.run([SITECTL, "--site-dir", str(site), "status"], env=env,
                            capture_output=True, text=True)
    return result.stdout


if __name__ == "__main__":
    sys.exit(main())
