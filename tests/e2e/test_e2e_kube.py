"""The router started exactly as `sitectl kube manifests`' Deployment says (its command,
args and environment, as the current user), over a site dir laid out as the projected
Secret and ConfigMap mount it (symlinks through ..data, read-only files and dirs): it
answers its probes, links to another site, carries a flow, issues a token another site
redeems, writes nothing in its site dir, and drains on SIGTERM within the grace period."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import certs
from router.site.directory import ENV_RUN_DIR
from tests.support.kube import LocalPod, make_writable, snapshot
from tests.support.services import HashServer, transfer
from tests.support.sites import (
    BIN,
    Process,
    Site,
    free_port,
    short_lived,
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


def start_pod(pod: LocalPod, log: Path) -> Process:
    """The pod's router, once its readiness probe answers."""
    router = Process("pod", pod.argv, log, pod.env, cwd=log.parent)
    wait_for(lambda: probe(pod.ports["admin"], "/readyz") == 200 or not router.alive(),
             what="readiness probe")
    assert router.alive(), router.log.read_text()
    return router


def link_of(pod: LocalPod, name: str) -> dict[str, Any]:
    status = json.loads(pod.sitectl("status", "--json"))
    return next((lk for lk in status["links"] if lk["name"] == name), {"state": "absent"})


def test_router_runs_as_the_deployment_says(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    east, west, north = (Site(tmp_path, n, env).init() for n in ("east", "west", "north"))
    server = HashServer()
    router: Process | None = None
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
        manifests = json.loads(west.sitectl("kube", "manifests", "--namespace", NS,
                                            "--advertise", f"127.0.0.1:{west.link_port}").stdout)

        pod = LocalPod(manifests, root, BIN, tmp_path / "home")
        site_dir = pod.mounts["/etc/vanrouter/site"]
        before = snapshot(site_dir)
        router = start_pod(pod, tmp_path / "pod.log")
        assert probe(pod.ports["admin"], "/healthz") == 200
        sitectl = pod.sitectl

        wait_for(lambda: link_of(pod, "east")["state"] == "up", what="west's link to east up")
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
        assert (Path(pod.env["SITECTL_DATA_DIR"]) / "grants.json").exists()
        assert (Path(pod.env[ENV_RUN_DIR]) / "router.pid").exists()
        assert snapshot(site_dir) == before  # nothing written where the mounts are

        # SIGTERM: the router drains and exits 0 before the kubelet would SIGKILL it.
        assert router.stop(grace=pod.grace) == 0, router.log.read_text()
        log = router.log.read_text()
        assert "Traceback" not in log
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any("received SIGTERM" in line["message"] for line in lines), log
    finally:
        if router is not None:
            router.stop()
        for site in (east, west, north):
            site.stop()
        server.close()
        if root.exists():
            make_writable(root)



RENEWAL_LIFETIME_S = 15.0  # renewed 10 s after issue: outlasts the mounted one by 10 s


def test_certificates_renewed_in_the_pod_outlive_a_restart(tmp_path: Path) -> None:
    """The site dir is read-only, so the link and server certificates the pod renews go
    to its data dir; restarted after the mounted link certificate expired, the pod dials
    with the renewed one: no new token, and still nothing written in the site dir."""
    env = site_env(tmp_path)
    east = short_lived(Site(tmp_path, "east", env).init(), RENEWAL_LIFETIME_S)
    west = short_lived(Site(tmp_path, "west", env).init(), RENEWAL_LIFETIME_S)
    server = HashServer()
    router: Process | None = None
    root = tmp_path / "p"
    try:
        start_sites(east)
        east.sitectl("connector", "create", "db", f"127.0.0.1:{server.port}")
        token = tmp_path / "east.token"
        east.sitectl("token", "issue", "-o", str(token))
        west.sitectl("link", "create", str(token))
        listen = free_port()
        west.sitectl("listener", "create", "db", str(listen))
        manifests = json.loads(west.sitectl("kube", "manifests", "--namespace", NS).stdout)
        pod = LocalPod(manifests, root, BIN, tmp_path / "home")
        site_dir, data = pod.mounts["/etc/vanrouter/site"], Path(pod.env["SITECTL_DATA_DIR"])
        before = snapshot(site_dir)
        mounted_link = certs.leaf_info((site_dir / "links" / "east.crt").read_bytes())
        mounted_server = certs.leaf_info((site_dir / "router.crt").read_bytes())
        renewed_link = data / "renewed" / "links" / "east.json"
        renewed_server = data / "renewed" / "router.json"

        router = start_pod(pod, tmp_path / "pod.log")
        wait_for(lambda: link_of(pod, "east")["state"] == "up", what="west's link to east up")
        wait_for(lambda: renewed_link.exists() and renewed_server.exists(),
                 timeout=RENEWAL_LIFETIME_S + 15, what="both certificates renewed in the pod")
        assert router.stop(grace=pod.grace) == 0, router.log.read_text()
        assert stat.S_IMODE(renewed_link.stat().st_mode) == 0o600  # it holds the key

        # The pod stays down until the certificate mounted from the Secret has expired.
        expired_at = mounted_link.expires.timestamp()
        wait_for(lambda: time.time() > expired_at + 0.5, timeout=RENEWAL_LIFETIME_S + 5,
                 what="the mounted link certificate expired")
        router = start_pod(pod, tmp_path / "pod2.log")
        wait_for(lambda: link_of(pod, "east")["state"] == "up",
                 what="west's link to east up again, with the renewed certificate")
        wait_for(lambda: json.loads(pod.sitectl("status", "--json"))["keys"].get("db", {})
                 .get("reachable"), what="db reachable from west")
        sent = transfer(listen, 1, MB, MB)
        assert server.results[1].received_hash == sent.sent_hash
        assert sent.received_hash == server.results[1].sent_hash
        status = json.loads(pod.sitectl("status", "--json"))
        (lk,) = [lk for lk in status["links"] if lk["name"] == "east"]
        assert lk["cert_expires"] > expired_at and lk["cert_renewed"] is not None
        assert status["server_cert"]["expires"] < mounted_server.expires.timestamp()
        assert snapshot(site_dir) == before
        assert "Traceback" not in router.log.read_text()
    finally:
        if router is not None:
            router.stop()
        for site in (east, west):
            site.stop()
        server.close()
        if root.exists():
            make_writable(root)
