"""Issue 16: the Python `kubernetes` client from PyPI (nobody here wrote it) lists, watches and patches
revisor's Services and Rollouts, with the kubeconfig `revisor kubeconfig` printed.

Run by tests/kube_clients.rs: python_kubernetes.py KUBECONFIG. Prints "ok" at the end; any failed
check raises.
"""

import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
api = client.CustomObjectsApi()
SERVING = ("serving.knative.dev", "v1")
ROLLOUTS = ("revisor.dev", "v1alpha1")

# List: the service the test applied, and the list's resourceVersion to watch from.
services = api.list_namespaced_custom_object(*SERVING, "default", "services")
names = [s["metadata"]["name"] for s in services["items"]]
assert names == ["hello"], names
version = services["metadata"]["resourceVersion"]

# A merge patch (what this client sends by default), then a watch from the list's version
# that sees it.
api.patch_namespaced_custom_object(*SERVING, "default", "services", "hello", {"metadata": {"labels": {"from": "python"}}})
w = watch.Watch()
seen = []
for event in w.stream(
    api.list_namespaced_custom_object, *SERVING, "default", "services", resource_version=version, timeout_seconds=20
):
    labels = event["object"]["metadata"].get("labels") or {}
    seen.append((event["type"], labels.get("from")))
    if labels.get("from") == "python":
        w.stop()
assert seen and seen[-1] == ("MODIFIED", "python"), seen

# A JSON patch (this client sends merge patches unless told otherwise).
JSON_PATCH = "application/json-patch+json"
api.patch_namespaced_custom_object(
    *SERVING,
    "default",
    "services",
    "hello",
    [{"op": "add", "path": "/metadata/labels/json", "value": "patch"}],
    _content_type=JSON_PATCH,
)
got = api.get_namespaced_custom_object(*SERVING, "default", "services", "hello")
assert got["metadata"]["labels"] == {"from": "python", "json": "patch"}, got["metadata"]

# Rollouts: create, list by label, watch by label, patch.
rollout = {
    "apiVersion": "revisor.dev/v1alpha1",
    "kind": "Rollout",
    "metadata": {"name": "hello", "labels": {"team": "ml"}},
    "spec": {"serviceRef": {"name": "hello"}, "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {}}]}}},
}
api.create_namespaced_custom_object(*ROLLOUTS, "default", "rollouts", rollout)
listed = api.list_namespaced_custom_object(*ROLLOUTS, "default", "rollouts", label_selector="team in (ml,data)")
assert [r["metadata"]["name"] for r in listed["items"]] == ["hello"], listed
none = api.list_namespaced_custom_object(*ROLLOUTS, "default", "rollouts", label_selector="team notin (ml)")
assert none["items"] == [], none
api.patch_namespaced_custom_object(*ROLLOUTS, "default", "rollouts", "hello", {"metadata": {"labels": {"stage": "b"}}})
for event in w.stream(
    api.list_namespaced_custom_object, *ROLLOUTS, "default", "rollouts", label_selector="stage=b", timeout_seconds=20
):
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "hello", event["type"]
    w.stop()

# A patch the server refuses comes back as the client's ApiException, with the server's Status.
try:
    api.patch_namespaced_custom_object(
        *SERVING,
        "default",
        "services",
        "hello",
        [{"op": "remove", "path": "/metadata/labels/nope"}],
        _content_type=JSON_PATCH,
    )
    raise AssertionError("a JSON patch removing a missing label was accepted")
except client.ApiException as e:
    assert e.status == 422 and "/metadata/labels/nope" in e.body, (e.status, e.body)

print("ok")
