"""`sitectl kube manifests`: what kubectl and the Kubernetes schemas accept, nothing
cluster-scoped, a pod that runs as non-root with a read-only root filesystem, and bad
names refused. (The router run as the Deployment says: tests/e2e/test_e2e_kube.py.)"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from router.site.config import parse_config
from router.site.directory import Site as SiteDir
from router.site.linkfiles import LinkSpec
from sitectl import kube
from tests.support.kube import NAMESPACED_KINDS, FakeApiServer, kubectl_apply_dry_run
from tests.support.sites import ROOT, Site, site_env

K8S_VERSION = "1.35.0"  # a recent release kubernetes-validate ships schemas for
NS = "team-a"


@pytest.fixture(scope="module")
def west(tmp_path_factory: pytest.TempPathFactory) -> Site:
    tmp = tmp_path_factory.mktemp("kube")
    site = Site(tmp, "west", site_env(tmp)).init()
    # A link, so that its files travel in the Secret too (no peer needed to write one).
    peer = Site(tmp, "east", site_env(tmp)).init()
    ca = SiteDir(peer.dir).ca()
    pair = ca.issue("west")
    SiteDir(site.dir).save_link(LinkSpec(name="east", peer_site="east",
                                         endpoints=(("127.0.0.1", peer.link_port),), cost=1),
                                ca_pem=ca.cert_pem, cert_pem=pair.cert_pem,
                                key_pem=pair.key_pem)
    return site


def manifests(site: Site, *args: str) -> dict[str, Any]:
    out = site.sitectl("kube", "manifests", "--namespace", NS, *args).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


PERSISTENT = ("--data-size", "100Mi", "--storage-class", "standard")


@pytest.fixture(scope="module", params=[(), PERSISTENT], ids=["emptydir", "persistent"])
def doc(west: Site, request: pytest.FixtureRequest) -> dict[str, Any]:
    return manifests(west, *request.param)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = [o for o in doc["items"] if o["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_only_namespaced_kinds_all_in_the_namespace(doc: dict[str, Any]) -> None:
    kinds = [o["kind"] for o in doc["items"]]
    claims = [v for v in pod_spec(doc)["volumes"] if "persistentVolumeClaim" in v]
    assert sorted(kinds) == sorted(k for k in kube.KINDS
                                   if k != "PersistentVolumeClaim" or claims)
    assert set(kinds) <= NAMESPACED_KINDS
    assert not {"Namespace", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                "CustomResourceDefinition"} & set(kinds)
    assert all(o["metadata"]["namespace"] == NS for o in doc["items"])
    (account,) = [o for o in doc["items"] if o["kind"] == "ServiceAccount"]
    assert account["automountServiceAccountToken"] is False


def test_schemas_accept_them_offline(doc: dict[str, Any]) -> None:
    from kubernetes_validate import utils as kv

    for obj in doc["items"]:
        kv.validate(obj, K8S_VERSION, strict=True)
    # And the check is not vacuous: a wrong type or an unknown field is caught.
    bad = copy.deepcopy(pod_spec(doc))
    bad["securityContext"]["runAsNonRoot"] = "yes"
    deployment = next(o for o in doc["items"] if o["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"] = bad
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["hostNetworking"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_kubectl_apply_dry_run_accepts_them(doc: dict[str, Any], tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    api = FakeApiServer()
    try:
        result = kubectl_apply_dry_run(kubectl, json.dumps(doc), tmp_path, api)
    finally:
        api.close()
    assert result.returncode == 0, result.stderr
    for kind in ("serviceaccount", "secret", "configmap", "deployment.apps", "service"):
        assert f"{kind}/vanrouter-west created (dry run)" in result.stdout, result.stdout
    # Every object kubectl looked up lives under the namespace.
    objects = [p for p in api.paths if p.count("/") > 3]
    assert objects and all(f"/namespaces/{NS}/" in p or p == f"/api/v1/namespaces/{NS}"
                           for p in objects), objects


def test_pod_is_non_root_read_only_unprivileged(doc: dict[str, Any]) -> None:
    spec = pod_spec(doc)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # Writable: only the runtime dir (an emptyDir) and the data dir (an emptyDir or the
    # site's own claim); the site is read-only.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["site"]["readOnly"] is True and "projected" in volumes["site"]
    writable = {n for n, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"run", "data"}
    assert "emptyDir" in volumes["run"]
    assert "emptyDir" in volumes["data"] or volumes["data"]["persistentVolumeClaim"] == {
        "claimName": "vanrouter-west"}


def test_pod_config_and_drain(doc: dict[str, Any], west: Site) -> None:
    (config_map,) = [o for o in doc["items"] if o["kind"] == "ConfigMap"]
    pod_cfg = parse_config(Path("site.toml"), config_map["data"]["site.toml"])
    own = SiteDir(west.dir).config()
    assert pod_cfg.admin_bind == "0.0.0.0" and pod_cfg.bind == "0.0.0.0"
    assert pod_cfg.host == f"vanrouter-west.{NS}.svc"
    assert (pod_cfg.link_port, pod_cfg.admin_port) == (own.link_port, own.admin_port)
    spec = pod_spec(doc)
    assert spec["terminationGracePeriodSeconds"] > own.limits.drain_timeout_s + 2
    (service,) = [o for o in doc["items"] if o["kind"] == "Service"]
    assert [p["port"] for p in service["spec"]["ports"]] == [own.link_port]
    (secret,) = [o for o in doc["items"] if o["kind"] == "Secret"]
    assert {"ca.key", "router.key", "identity.key", "links.east.toml", "links.east.key",
            "links.east.crt", "links.east-ca.crt"} <= set(secret["data"])


def test_deployment_runs_the_containerfile_entrypoint(doc: dict[str, Any]) -> None:
    text = (ROOT / "Containerfile").read_text()

    def instruction(name: str) -> list[str]:
        (line,) = re.findall(rf"^{name} (\[.*\])$", text, re.MULTILINE)
        value: list[str] = json.loads(line)
        return value

    (container,) = pod_spec(doc)["containers"]
    assert container["command"] == instruction("ENTRYPOINT")
    assert container["args"] == instruction("CMD")
    assert re.search(r"^FROM python:3\.\d+", text, re.MULTILINE)
    user = re.findall(r"^USER (\d+)", text, re.MULTILINE)
    assert user == [str(pod_spec(doc)["securityContext"]["runAsUser"])]
    for env in container["env"]:
        if env["name"].startswith("SITECTL_"):
            assert f"{env['name']}={env['value']}" in text


def test_options(west: Site) -> None:
    doc = manifests(west, "--image", "registry.example/team/vanrouter:1.2",
                    "--service-type", "LoadBalancer", "--advertise", "203.0.113.9:443")
    (container,) = pod_spec(doc)["containers"]
    assert container["image"] == "registry.example/team/vanrouter:1.2"
    (service,) = [o for o in doc["items"] if o["kind"] == "Service"]
    assert service["spec"]["type"] == "LoadBalancer"
    (config_map,) = [o for o in doc["items"] if o["kind"] == "ConfigMap"]
    pod_cfg = parse_config(Path("site.toml"), config_map["data"]["site.toml"])
    assert pod_cfg.advertise == ("203.0.113.9:443",)


@pytest.mark.parametrize(("args", "says"), [
    (("--namespace", "Team_A"), "namespace 'Team_A' is not a DNS-1123 label"),
    (("--namespace", "a" * 64), "is not a DNS-1123 label of at most 63"),
    (("--namespace=-team",), "is not a DNS-1123 label"),
    (("--namespace", NS, "--image", "x y"), "is not an image reference"),
    (("--namespace", NS, "--image", "x\ny"), "is not an image reference"),
    (("--namespace", NS, "--advertise", "nope"), "--advertise:"),
    (("--namespace", NS, "--data-size", "100"), "--data-size '100' is not a size"),
    (("--namespace", NS, "--data-size", "0Gi"), "is not a size such as 100Mi"),
    (("--namespace", NS, "--data-size", "1Gi", "--storage-class", "Fast SSD"),
     "is not a storage class name"),
    (("--namespace", NS, "--storage-class", "fast"), "--storage-class needs --data-size"),
])
def test_bad_arguments_exit_2(west: Site, args: tuple[str, ...], says: str) -> None:
    result = west.sitectl("kube", "manifests", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not result.stdout


def test_the_data_dir_on_a_claim(west: Site) -> None:
    doc = manifests(west, *PERSISTENT)
    (claim,) = [o for o in doc["items"] if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Mi"
    assert claim["spec"]["storageClassName"] == "standard"
    spec = pod_spec(doc)
    (data,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "vanrouter-west"}}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "data"]
    (env,) = [e for e in spec["containers"][0]["env"] if e["name"] == "SITECTL_DATA_DIR"]
    assert env["value"] == mount["mountPath"]


def test_site_name_must_be_a_dns_label(tmp_path: Path) -> None:
    site = Site(tmp_path, "West_1", site_env(tmp_path)).init()
    result = site.sitectl("kube", "manifests", "--namespace", NS, check=False)
    assert result.returncode == 2
    assert "site name 'West_1' is not a DNS-1123 label of at most 53" in result.stderr
