"""The router started exactly as `sitectl kube manifests`' Deployment says (its command,
args and environment, as the current user), over a site dir laid out as the projected
Secret and ConfigMap mount it (symlinks through ..data, read-only files and dirs): it
answers its probes, links to another site, carries a flow, issues a token another site
redeems, writes nothing in its site dir, and drains on SIGTERM within the grace period."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from router.site.directory import ENV_RUN_DIR
from tests.support.kube import make_writable, project_volume, snapshot
from tests.support.services import HashServer, transfer
from tests.support.sites import (
    BIN,
    Process,
    Site,
    free_port,
    site_env,
    start_sites,
    wait_for,
)

MB = 1024 * 1024
NS = "team-a"


def probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            status: int = r.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_router_runs_as_the_deployment_says(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    east, west, north = (Site(tmp_path, n, env).init() for n in ("east", "west", "north"))
    server = HashServer()
    pod: Process | None = None
    root = tmp_path / "p"  # short: the control socket's path must fit in sun_path
    try:
        start_sites(east, north)
        east.sitectl("connector", "create", "db", f"127.0.0.1:{server.port}")
        # West links to east and listens for db before it moves into the "cluster".
        token = tmp_path / "east.token"
        east.sitectl("token", "issue", "-o", str(token))
        west.sitectl("link", "create", str(token))
        listen = free_port()
        west.sitectl("listener", "create", "db", str(listen))
        doc = json.loads(west.sitectl("kube", "manifests", "--namespace", NS, "--advertise",
                                      f"127.0.0.1:{west.link_port}").stdout)

        objects = {(o["kind"], o["metadata"]["name"]): o for o in doc["items"]}
        deployment = next(o for o in doc["items"] if o["kind"] == "Deployment")
        spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts: dict[str, Path] = {}
        for mount in container["volumeMounts"]:
            local = root / mount["name"]
            if "projected" in volumes[mount["name"]]:
                project_volume(volumes[mount["name"]]["projected"], objects, local)
            else:
                assert "emptyDir" in volumes[mount["name"]]
                local.mkdir(parents=True, mode=0o700)
            mounts[mount["mountPath"]] = local

        def local_path(value: str) -> str:
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(local) + value[len(mount_path):]
            return value

        # The container's environment, with each mount at its local place; PATH finds
        # `sitectl` as the image's does.
        pod_env = {e["name"]: local_path(e["value"]) for e in container["env"]}
        pod_env |= {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "home")}
        site_dir = mounts["/etc/vanrouter/site"]
        before = snapshot(site_dir)
        pod = Process("pod", [*container["command"], *container["args"]],
                      tmp_path / "pod.log", pod_env, cwd=tmp_path)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        wait_for(lambda: probe(ports["admin"], "/readyz") == 200 or not pod.alive(),
                 what="readiness probe")
        assert pod.alive(), pod.log.read_text()
        assert probe(ports["admin"], "/healthz") == 200

        def sitectl(*args: str) -> str:  # as `kubectl exec ... sitectl ARGS` would
            done = subprocess.run([str(BIN / "sitectl"), *args], env=pod_env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        def link_up() -> bool:
            status = json.loads(sitectl("status", "--json"))
            return any(lk["name"] == "east" and lk["state"] == "up" for lk in status["links"])

        wait_for(link_up, what="west's link to east up")
        wait_for(lambda: json.loads(sitectl("status", "--json"))["keys"].get("db", {})
                 .get("reachable"), what="db reachable from west")
        sent = transfer(listen, 1, 2 * MB, MB)
        assert server.results[1].received_hash == sent.sent_hash
        assert sent.received_hash == server.results[1].sent_hash

        # A token issued in the pod (its grant goes to the data dir), redeemed by north.
        pod_token = tmp_path / "west.token"
        sitectl("token", "issue", "-o", str(pod_token))
        north.sitectl("link", "create", str(pod_token))
        wait_for(lambda: north.link_up("west"), what="north's link to west up")
        assert (Path(pod_env["SITECTL_DATA_DIR"]) / "grants.json").exists()
        assert (Path(pod_env[ENV_RUN_DIR]) / "router.pid").exists()
        assert snapshot(site_dir) == before  # nothing written where the mounts are

        # SIGTERM: the router drains and exits 0 before the kubelet would SIGKILL it.
        assert pod.stop(grace=spec["terminationGracePeriodSeconds"]) == 0, \
            pod.log.read_text()
        log = pod.log.read_text()
        assert "Traceback" not in log
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any("received SIGTERM" in line["message"] for line in lines), log
    finally:
        if pod is not None:
            pod.stop()
        for site in (east, west, north):
            site.stop()
        server.close()
        if root.exists():
            make_writable(root)

