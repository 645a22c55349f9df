#!/usr/bin/env python3
"""Generates src/apiserver/protobuf_schema.json: the Kubernetes protobuf wire schema of the kinds
the server serves (field tags and wire kinds from the k8s-pb crate's prost definitions, JSON field
names from the k8s-openapi crate), for the server's protobuf request decoder.

Usage: scripts/gen-protobuf-schema.py K8S_PB_SRC_DIR K8S_OPENAPI_VERSION_DIR > src/apiserver/protobuf_schema.json
  e.g. ~/.cargo/registry/src/*/k8s-pb-0.9.0/src ~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/v1_33
"""
import json
import os
import re
import sys

ROOTS = [
    "api.core.v1.Namespace", "api.core.v1.Service", "api.core.v1.Pod", "api.core.v1.Node",
    "api.core.v1.Secret", "api.core.v1.ConfigMap", "api.discovery.v1.EndpointSlice",
    "api.networking.v1.Ingress", "api.networking.v1.IngressClass", "api.coordination.v1.Lease",
    "api.core.v1.ServiceAccount", "api.rbac.v1.Role", "api.rbac.v1.ClusterRole",
    "api.rbac.v1.RoleBinding", "api.rbac.v1.ClusterRoleBinding",
    "api.authentication.v1.TokenRequest", "api.authentication.v1.SelfSubjectReview",
    "api.authorization.v1.SelfSubjectAccessReview", "api.authorization.v1.SubjectAccessReview",
    "api.core.v1.Event", "api.events.v1.Event",
]
# Messages the decoder renders itself (their JSON form is not an object of their fields).
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "microtime",
    "apimachinery.pkg.util.intstr.IntOrString": "intorstring",
    "apimachinery.pkg.api.resource.Quantity": "quantity",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "rawjson",
    "apimachinery.pkg.runtime.RawExtension": "rawjson",
}

ATTR_RE = re.compile(r'#\[prost\((.*?)\)\]')
PUB_RE = re.compile(r'\s*(?:#\[[^\]]*\]\s*)*pub (?:r#)?(\w+):')


def fields_of(body):
    """(tag, field, attribute) for each prost field; the Rust type follows the attribute."""
    out = []
    for a in ATTR_RE.finditer(body):
        attr = a.group(1)
        if "tag" not in attr:
            continue
        p = PUB_RE.match(body, a.end())
        if not p:
            continue
        depth, i = 0, p.end()
        while i < len(body) and not (body[i] == "," and depth == 0):
            depth += {"<": 1, ">": -1}.get(body[i], 0)
            i += 1
        rtype = "".join(body[p.end():i].split()).replace(",>", ">")
        tag = int(re.search(r'tag\s*=\s*"(\d+)"', attr).group(1))
        out.append((tag, p.group(1), attr, rtype))
    return out


def module_of(path, root):
    rel = os.path.relpath(os.path.dirname(path), root)
    return rel.replace(os.sep, ".")


def resolve(module, rust_type):
    """The absolute message name of a prost field's Rust type, relative to `module`."""
    inner = rust_type
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<"):
        if inner.startswith(wrapper):
            inner = inner[len(wrapper):-1]
    if "BTreeMap<" in inner:
        inner = inner.split(",", 1)[1].strip().rstrip(">").strip()
    parts = inner.split("::")
    base = module.split(".")
    while parts and parts[0] == "super":
        base = base[:-1]
        parts = parts[1:]
    return ".".join(base + parts)


def parse_pb(root):
    messages = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "mod.rs":
                continue
            path = os.path.join(dirpath, f)
            module = module_of(path, root)
            text = open(path).read()
            for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
                name, body = m.group(1), m.group(2) + "\n"
                fields = []
                for tag, field, attr, rtype in fields_of(body):
                    if attr.startswith("btree_map") or attr.startswith("map"):
                        value_kind = attr.split('"')[1].split(",")[1].strip()
                        target = resolve(module, rtype) if value_kind == "message" else None
                        fields.append((tag, field, "map_" + value_kind, False, target))
                        continue
                    kind = attr.split(",")[0].split("=")[0].strip()
                    target = resolve(module, rtype) if kind == "message" else None
                    fields.append((tag, field, kind, "repeated" in attr, target))
                messages[f"{module}.{name}"] = fields
    return messages


def parse_openapi(root):
    names = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs") or f == "mod.rs":
                continue
            text = open(os.path.join(dirpath, f)).read()
            s = re.search(r"pub struct (\w+)", text)
            if not s:
                continue
            module = os.path.relpath(dirpath, root).replace(os.sep, ".")
            mapping = dict((squash(snake), js) for js, snake in re.findall(r'"([^"]+)" => Field::Key_(\w+),', text))
            names[f"{module}.{s.group(1)}".lower()] = mapping
    return names


def squash(snake):
    """The key both crates' snake_case names agree on: k8s-pb writes pod_cid_rs and r#type where
    k8s-openapi writes pod_cidrs and type_."""
    return snake.replace("_", "").lower()


def camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def main():
    pb = parse_pb(sys.argv[1])
    openapi = parse_openapi(sys.argv[2])
    out, todo = {}, list(ROOTS)
    # An embedded (inline) message has no k8s-openapi struct: its JSON names are its parent's.
    names_from = {}
    while todo:
        msg = todo.pop()
        if msg in out or msg in SPECIAL:
            continue
        if msg not in pb:
            sys.exit(f"message {msg} not found in the k8s-pb sources")
        json_names = openapi.get(names_from.get(msg, msg).lower(), {})
        fields = []
        for tag, field, kind, repeated, target in sorted(pb[msg]):
            json_name = json_names.get(squash(field))
            # Go structs embedded with `json:",inline"` are a message on the wire and flat in
            # JSON: the parent's JSON has the embedded message's fields and not the field itself.
            embedded = {squash(f[1]) for f in pb.get(target or "", [])}
            if json_name is None and kind == "message" and embedded & set(json_names):
                kind = "inline"
                names_from[target] = names_from.get(msg, msg)
            entry = [tag, json_name or camel(field), kind, repeated]
            if target:
                entry.append(SPECIAL.get(target, target))
                if target not in SPECIAL:
                    todo.append(target)
            fields.append(entry)
        out[msg] = fields
    json.dump({"roots": ROOTS, "messages": dict(sorted(out.items()))}, sys.stdout, indent=0, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
