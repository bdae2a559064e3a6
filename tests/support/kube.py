"""Kubernetes without a cluster, for `sitectl kube manifests`' tests.

`FakeApiServer`: just enough of an API server for `kubectl apply --dry-run=client`, which
still asks discovery (which kinds exist, and whether each is namespaced) and GETs each
object to see whether it exists (404: "created (dry run)"). Every path asked is recorded.

`project_volume`: a projected volume laid out as the kubelet writes it: the files in a
timestamped dir, `..data` a symlink to it, each top-level entry a symlink through
`..data`, every file at the volume's mode, and the dirs made read-only.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# (resource, kind, namespaced) of each group version kubectl may ask about; the
# cluster-scoped ones are here so that kubectl would map them, and a test could see it.
_RESOURCES = {
    "/api/v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
                ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True),
                ("persistentvolumeclaims", "PersistentVolumeClaim", True),
                ("pods", "Pod", True), ("namespaces", "Namespace", False),
                ("nodes", "Node", False), ("persistentvolumes", "PersistentVolume", False)],
    "/apis/apps/v1": [("deployments", "Deployment", True)],
    "/apis/rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False)],
    "/apis/apiextensions.k8s.io/v1": [
        ("customresourcedefinitions", "CustomResourceDefinition", False)],
}
NAMESPACED_KINDS = {kind for rs in _RESOURCES.values() for _, kind, ns in rs if ns}


def _discovery(path: str) -> dict[str, Any] | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        groups = []
        for gv in _RESOURCES:
            if gv.startswith("/apis/"):
                group, version = gv.removeprefix("/apis/").split("/")
                entry = {"groupVersion": f"{group}/{version}", "version": version}
                groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path in _RESOURCES:
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": path.removeprefix("/api/").removeprefix("/apis/"),
                "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns,
                               "kind": k, "verbs": ["create", "get", "list", "patch"]}
                              for n, k, ns in _RESOURCES[path]]}
    return None


class FakeApiServer:
    """Discovery on 127.0.0.1, 404 for every object; `paths` lists what was asked."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.paths.append(path)
                doc = _discovery(path)
                code = 200 if doc is not None else 404
                if doc is None:
                    doc = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": f"{path} not found"}
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def kubectl_apply_dry_run(kubectl: str, manifest: str, workdir: Path,
                          api: FakeApiServer) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(workdir), KUBECONFIG=str(api.kubeconfig(workdir)))
    return subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false",
                           "--cache-dir", str(workdir / "kube-cache"), "-f", "-"],
                          input=manifest, capture_output=True, text=True, env=env, timeout=120)


def project_volume(volume: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]],
                   target: Path) -> None:
    """Lay out `volume` (a projected volume of configMap and secret sources) in
    `target`, from `objects` by (kind, name)."""
    mode = volume.get("defaultMode", 0o644)
    stamp = target / "..2030_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for source in volume["sources"]:
        ((kind, ref),) = source.items()
        obj = objects["ConfigMap" if kind == "configMap" else "Secret", ref["name"]]
        for item in ref["items"]:
            value = obj["data"][item["key"]]
            data = base64.b64decode(value) if kind == "secret" else value.encode()
            path = stamp / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(item.get("mode", mode))
    (target / "..data").symlink_to(stamp.name)
    for top in sorted(p.name for p in stamp.iterdir()):
        (target / top).symlink_to(f"..data/{top}")
    for directory in [target, *(p for p in stamp.rglob("*") if p.is_dir()), stamp]:
        directory.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under `root`: its mode and bytes (or a symlink's target)."""
    seen: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            seen[str(path)] = (st.st_mode, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            seen[str(path)] = (st.st_mode, path.read_bytes())
        else:
            seen[str(path)] = (st.st_mode, "")
    return seen


def make_writable(root: Path) -> None:
    """Undo `project_volume`'s read-only dirs, so the test's tmp dir can be removed."""
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        directory.chmod(0o755)


class LocalPod:
    """The pod `sitectl kube manifests` describes, run here as the current user: its
    volumes laid out under `root` (projected ones read-only, emptyDirs as plain dirs),
    its container's command and environment with each mount at its local place, PATH
    finding `sitectl` as the image's does."""

    def __init__(self, manifests: dict[str, Any], root: Path, bin_dir: Path,
                 home: Path) -> None:
        objects = {(o["kind"], o["metadata"]["name"]): o for o in manifests["items"]}
        deployment = next(o for o in manifests["items"] if o["kind"] == "Deployment")
        self.spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        self.mounts: dict[str, Path] = {}
        for mount in self.container["volumeMounts"]:
            local = root / mount["name"]
            if "projected" in volumes[mount["name"]]:
                project_volume(volumes[mount["name"]]["projected"], objects, local)
            else:
                assert "emptyDir" in volumes[mount["name"]]
                local.mkdir(parents=True, mode=0o700)
            self.mounts[mount["mountPath"]] = local
        self.env = {e["name"]: self._local(e["value"]) for e in self.container["env"]}
        self.env |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}
        self.bin_dir = bin_dir
        self.ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.grace: float = self.spec["terminationGracePeriodSeconds"]

    def _local(self, value: str) -> str:
        for mount_path, local in self.mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(local) + value[len(mount_path):]
        return value

    @property
    def argv(self) -> list[str]:
        return [*self.container["command"], *self.container["args"]]

    def sitectl(self, *args: str) -> str:
        """As `kubectl exec ... sitectl ARGS` would run it; asserts it succeeds."""
        done = subprocess.run([str(self.bin_dir / "sitectl"), *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout
