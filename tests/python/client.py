"""Flows of the official Kubernetes Python client against a switchyard server.

Usage: client.py KUBECONFIG STEP [ARG]
  apply           server-side apply through the dynamic client: create, re-apply, a Service
                  with 53/UDP and 53/TCP, a conflict with another manager, force
  gc              delete with propagation policies (Background, Foreground, Orphan)
  watch-start     lists ConfigMaps labelled flow=watch and prints the list's resourceVersion
  watch-resume RV watches from RV (after a restart): every change made since is delivered,
                  with no 410 and nothing before RV
  write NAME      creates a ConfigMap labelled flow=watch
  crd             a CustomResourceDefinition made with the typed apiextensions client, then its
                  objects through the dynamic client: create, get, list by label, merge patch,
                  status, server-side apply, a schema violation, delete; then the CRD deleted

Prints one line per check; exits non-zero with the reason on the first that fails.
"""
import sys
import time

from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def wait_for(what, fn, limit=20.0):
    start = time.time()
    while time.time() - start < limit:
        if fn():
            print(f"ok: {what}", flush=True)
            return
        time.sleep(0.1)
    print(f"FAILED: {what} (not within {limit} s)", flush=True)
    sys.exit(1)


def gone(read):
    try:
        read()
        return False
    except ApiException as e:
        return e.status == 404


def step_apply(api_client):
    dyn = dynamic.DynamicClient(api_client)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "py-applied", "namespace": "default"}, "data": {"a": "1"}}
    made = cms.server_side_apply(body=body, field_manager="py", namespace="default")
    check(made.data.a == "1", "apply creates")
    body["data"]["b"] = "2"
    cms.server_side_apply(body=body, field_manager="py", namespace="default")
    got = cms.get(name="py-applied", namespace="default")
    check(got.data.b == "2", "re-apply changes")
    managers = [m.manager for m in got.metadata.managedFields]
    check(managers == ["py"], f"one manager owns it: {managers}")

    # The shape of every cluster DNS Service: the same port on UDP and TCP.
    svcs = dyn.resources.get(api_version="v1", kind="Service")
    dns = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "py-dns", "namespace": "default"},
           "spec": {"selector": {"k8s-app": "dns"}, "ports": [
               {"name": "dns", "port": 53, "protocol": "UDP"},
               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}
    svcs.server_side_apply(body=dns, field_manager="py", namespace="default")
    again = svcs.server_side_apply(body=dns, field_manager="py", namespace="default")
    check(sorted(p.protocol for p in again.spec.ports) == ["TCP", "UDP"],
          "a Service with 53/UDP and 53/TCP re-applies")

    # Another manager changing a field this one owns conflicts, unless forced.
    other = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "py-applied", "namespace": "default"}, "data": {"a": "9"}}
    try:
        cms.server_side_apply(body=other, field_manager="intruder", namespace="default")
        check(False, "a conflicting apply is refused")
    except ApiException as e:
        check(e.status == 409, f"a conflicting apply is refused with 409 (got {e.status})")
    cms.server_side_apply(body=other, field_manager="intruder", namespace="default",
                          force_conflicts=True)
    check(cms.get(name="py-applied", namespace="default").data.a == "9", "force takes the field")

    # Created by a plain create, then applied with the same values: co-owned, no conflict.
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="py-created"), data={"x": "1"}))
    same = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "py-created", "namespace": "default"}, "data": {"x": "1"}}
    cms.server_side_apply(body=same, field_manager="py", namespace="default")
    check(True, "apply after create with the same values co-owns")


def step_gc(api_client):
    core = client.CoreV1Api(api_client)

    def owner(name):
        return core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data={"o": "1"}))

    def dependent(name, own, finalizers=None):
        ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name=own.metadata.name,
                                      uid=own.metadata.uid, block_owner_deletion=True)
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, owner_references=[ref],
                                         finalizers=finalizers), data={"d": "1"}))

    def read(name):
        return lambda: core.read_namespaced_config_map(name, "default")

    o = owner("py-bg")
    dependent("py-bg-dep", o)
    core.delete_namespaced_config_map("py-bg", "default", propagation_policy="Background")
    wait_for("Background: the dependent follows its owner", lambda: gone(read("py-bg-dep")))

    o = owner("py-fg")
    dependent("py-fg-dep", o, finalizers=["example.com/hold"])
    core.delete_namespaced_config_map("py-fg", "default", propagation_policy="Foreground")
    held = core.read_namespaced_config_map("py-fg", "default")
    check("foregroundDeletion" in (held.metadata.finalizers or []),
          "Foreground: the owner waits with foregroundDeletion")
    wait_for("Foreground: the dependent is being deleted",
             lambda: read("py-fg-dep")().metadata.deletion_timestamp is not None)
    check(not gone(read("py-fg")), "Foreground: the owner is still there")
    core.patch_namespaced_config_map("py-fg-dep", "default", {"metadata": {"finalizers": None}})
    wait_for("Foreground: the owner goes after its dependent", lambda: gone(read("py-fg")))

    o = owner("py-orphan")
    dependent("py-orphan-dep", o)
    core.delete_namespaced_config_map("py-orphan", "default", propagation_policy="Orphan")
    wait_for("Orphan: the owner goes", lambda: gone(read("py-orphan")))
    refs = core.read_namespaced_config_map("py-orphan-dep", "default").metadata.owner_references
    check(not refs, f"Orphan: the dependent stays, unowned ({refs})")


def step_watch_start(api_client):
    core = client.CoreV1Api(api_client)
    lst = core.list_namespaced_config_map("default", label_selector="flow=watch")
    print(lst.metadata.resource_version, flush=True)


def step_write(api_client, name):
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels={"flow": "watch"}), data={"k": "v"}))
    print(f"ok: wrote {name}", flush=True)


def step_watch_resume(api_client, rv):
    core = client.CoreV1Api(api_client)
    w = watch.Watch()
    seen = []
    try:
        for ev in w.stream(core.list_namespaced_config_map, "default",
                           label_selector="flow=watch", resource_version=rv,
                           timeout_seconds=5):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 2:
                w.stop()
    except ApiException as e:
        check(False, f"the watch resumes without an error (got {e.status})")
    check(seen == [("ADDED", "before-restart"), ("ADDED", "after-restart")],
          f"the watch from {rv} resumes across the restart: {seen}")


def step_crd(api_client):
    ext = client.ApiextensionsV1Api(api_client)
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "required": ["colour"],
                 "x-kubernetes-validations": [{"rule": "self.size <= 10", "message": "too big"}],
                 "properties": {"colour": {"type": "string", "enum": ["red", "blue"]},
                                "size": {"type": "integer", "default": 1}}},
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": schema}}]}})

    def established():
        crd = ext.read_custom_resource_definition("gadgets.example.com")
        return any(c.type == "Established" and c.status == "True"
                   for c in (crd.status.conditions or []))
    wait_for("the CRD is established", established)

    dyn = dynamic.DynamicClient(api_client)
    gadgets = dyn.resources.get(api_version="example.com/v1", kind="Gadget")
    made = gadgets.create(namespace="default", body={
        "apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": {"name": "g1", "labels": {"team": "a"}}, "spec": {"colour": "red"}})
    check(made.spec.size == 1, "the schema's default is applied")
    check(gadgets.get(name="g1", namespace="default").spec.colour == "red", "get")
    listed = gadgets.get(namespace="default", label_selector="team=a")
    check([i.metadata.name for i in listed.items] == ["g1"], "list by label")
    patched = gadgets.patch(name="g1", namespace="default", body={"spec": {"size": 5}},
                            content_type="application/merge-patch+json")
    check(patched.spec.size == 5 and patched.metadata.generation == 2, "merge patch bumps the generation")
    gadgets.status.patch(name="g1", namespace="default", body={"status": {"phase": "Ready"}},
                         content_type="application/merge-patch+json")
    got = gadgets.get(name="g1", namespace="default")
    check(got.status.phase == "Ready" and got.metadata.generation == 2, "status through its subresource")
    applied = gadgets.server_side_apply(namespace="default", field_manager="py", body={
        "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g2"},
        "spec": {"colour": "blue"}})
    check(applied.spec.colour == "blue", "server-side apply creates")
    try:
        gadgets.create(namespace="default", body={
            "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g3"},
            "spec": {"colour": "green", "size": 11}})
        check(False, "a schema violation is refused")
    except ApiException as e:
        check(e.status == 422 and "too big" in e.body and "green" in e.body,
              f"a schema violation is refused with 422: {e.status}")
    gadgets.delete(name="g1", namespace="default")
    wait_for("the object is deleted", lambda: gone(lambda: gadgets.get(name="g1", namespace="default")))
    ext.delete_custom_resource_definition("gadgets.example.com")
    wait_for("the CRD is deleted with its objects",
             lambda: gone(lambda: ext.read_custom_resource_definition("gadgets.example.com")))


def main():
    kubeconfig, step = sys.argv[1], sys.argv[2]
    api_client = config.new_client_from_config(config_file=kubeconfig)
    if step == "apply":
        step_apply(api_client)
    elif step == "gc":
        step_gc(api_client)
    elif step == "watch-start":
        step_watch_start(api_client)
    elif step == "write":
        step_write(api_client, sys.argv[3])
    elif step == "crd":
        step_crd(api_client)
    elif step == "watch-resume":
        step_watch_resume(api_client, sys.argv[3])
    else:
        sys.exit(f"unknown step {step}")


if __name__ == "__main__":
    main()
