//! CustomResourceDefinitions through kubectl: the official Gateway API bundle (server-side
//! apply, its defaults, columns and a violation of each kind of rule it has), a CRD written
//! here that uses each schema feature (every verb, subresources, versions, columns, explain,
//! restarts, deletion), and bad CRDs refused with nothing stored.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{eventually, free_port, Server};

/// The Gateway API v1.6.1 standard CRDs: `SWITCHYARD_GATEWAY_API_CRDS` (the test command sets
/// it from the module `sigs.k8s.io/gateway-api@v1.6.1`), each CRD file of the directory.
pub(crate) fn gateway_api_crds() -> Option<Vec<PathBuf>> {
    let dir = std::env::var("SWITCHYARD_GATEWAY_API_CRDS").ok()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // The bundle's one ValidatingAdmissionPolicy is not a CRD (and not served here).
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml") && !p.to_string_lossy().contains("_vap_")
        })
        .collect();
    files.sort();
    (!files.is_empty()).then_some(files)
}

/// Applies `yaml`, expecting a refusal that says each of `wanted`.
fn refused(s: &Server, yaml: &str, wanted: &[&str]) {
    let (ok, out, err) = s.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(!ok, "accepted:\n{yaml}\n{out}");
    assert_all(&err, wanted);
}

fn assert_all(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
}

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: switchyard}
spec: {controllerName: switchyard.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web}
spec:
  gatewayClassName: switchyard
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store}
spec:
  parentRefs: [{name: web}]
  hostnames: [store.example.com]
  rules:
  - backendRefs: [{name: store, port: 8080}]
";

#[test]
fn the_gateway_api_bundle_installs_and_enforces_its_rules() {
    let Some(files) = gateway_api_crds() else {
        crate::support::skip("SWITCHYARD_GATEWAY_API_CRDS is not set (scripts/test sets it)");
        return;
    };
    let s = Server::start(&[]);
    let mut args = vec!["apply", "--server-side"];
    let names: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().to_string())
        .collect();
    for n in &names {
        args.extend(["-f", n.as_str()]);
    }
    let out = s.ok(&args);
    assert_eq!(
        out.matches("serverside-applied").count(),
        files.len(),
        "{out}"
    );
    s.ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd",
        "--all",
        "--timeout=30s",
    ]);
    // Applying again changes nothing.
    s.ok(&args);
    let out = s.ok(&[
        "api-resources",
        "--api-group=gateway.networking.k8s.io",
        "-o",
        "name",
    ]);
    assert_all(
        &out,
        &[
            "gateways.gateway.networking.k8s.io",
            "httproutes.gateway.networking.k8s.io",
            "referencegrants.gateway.networking.k8s.io",
        ],
    );

    s.ok_stdin(&["apply", "-f", "-"], GATEWAY);
    // The schema's defaults are applied.
    let route = s.json(&["get", "httproute", "store"]);
    assert_eq!(route["spec"]["parentRefs"][0]["kind"], "Gateway");
    assert_eq!(
        route["spec"]["parentRefs"][0]["group"],
        "gateway.networking.k8s.io"
    );
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["weight"], 1);
    assert_eq!(
        route["spec"]["rules"][0]["matches"][0]["path"]["type"],
        "PathPrefix"
    );
    // The printer columns.
    let out = s.ok(&["get", "gateways,httproutes,gatewayclasses"]);
    assert_all(
        &out,
        &[
            "CLASS",
            "ADDRESS",
            "PROGRAMMED",
            "HOSTNAMES",
            "[\"store.example.com\"]",
            "CONTROLLER",
            "switchyard.io/gateway-controller",
            "ACCEPTED",
        ],
    );
    // The same object through the older version, with that version's apiVersion.
    let v = s.ok(&[
        "get",
        "httproutes.v1beta1.gateway.networking.k8s.io",
        "store",
        "-o",
        "jsonpath={.apiVersion}",
    ]);
    assert_eq!(v, "gateway.networking.k8s.io/v1beta1");
    // kubectl explain reads the schema from /openapi/v3.
    let out = s.ok(&["explain", "httproute.spec.rules.matches.path"]);
    assert_all(&out, &["HTTPRoute", "type\t<string>", "PathPrefix"]);

    // A violation of each kind of rule the bundle has.
    refused(
        &s,
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad}
spec:
  hostnames: [\"a..b\"]
  rules:
  - timeouts: {request: 1s, backendRequest: 2s}
    matches: [{path: {type: Exact, value: /a/../b}, method: FETCH}]
    filters: [{type: RequestHeaderModifier}]
    backendRefs: [{name: s, port: \"80\"}, {port: 80, weight: 2000000}]
",
        &[
        // pattern
        "spec.hostnames[0]: Invalid value: \"a..b\": spec.hostnames[0] in body should match",
        // type
        "spec.rules[0].backendRefs[0].port: Invalid value: \"string\": spec.rules[0].backendRefs[0].port in body must be of type integer",
        // maximum
        "spec.rules[0].backendRefs[1].weight: Invalid value: 2000000: spec.rules[0].backendRefs[1].weight in body should be less than or equal to 1000000",
        // required
        "spec.rules[0].backendRefs[1].name: Required value",
        // enum
        "spec.rules[0].matches[0].method: Unsupported value: \"FETCH\"",
        // CEL: string functions, has(), durations
        "spec.rules[0].matches[0].path: Invalid value: \"object\": must not contain '/../' when type one of ['Exact', 'PathPrefix']",
        "filter.requestHeaderModifier must be specified for RequestHeaderModifier filter.type",
        "spec.rules[0].timeouts: Invalid value: \"object\": backendRequest timeout cannot be longer than request timeout",
    ]);
    refused(
        &s,
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bad}
spec:
  gatewayClassName: switchyard
  addresses: [{type: IPAddress, value: 300.1.1.1}]
  listeners:
  - {name: a, port: 80, protocol: HTTP}
  - {name: a, port: 81, protocol: HTTP}
  - {name: b, port: 70000, protocol: HTTP}
  - {name: c, port: 80, protocol: HTTP}
",
        &[
        // x-kubernetes-list-type map: unique keys
        "spec.listeners[1]: Duplicate value: {\"name\":\"a\"}",
        "spec.listeners[2].port: Invalid value: 70000",
        // CEL over the whole list (all, exists_one)
        "Listener name must be unique within the Gateway",
        "Combination of port, protocol and hostname must be unique for each listener",
        // oneOf/anyOf with formats (ipv4, ipv6)
        "spec.addresses[0]: Invalid value: \"object\": spec.addresses[0] in body must validate one and only one schema (oneOf)",
    ]);
    // isIP, from the Kubernetes CEL library.
    refused(
        &s,
        "apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: bad}
spec:
  hostnames: [10.1.1.1]
  rules: [{backendRefs: [{name: s, port: 443}]}]
",
        &["spec.hostnames: Invalid value: \"array\": Hostnames cannot contain an IP"],
    );
    // Too many items (maxItems), too long (maxLength).
    let many: Vec<String> = (0..17).map(|i| format!("h{i}.example.com")).collect();
    refused(
        &s,
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bad}}
spec:
  hostnames: [{}]
  parentRefs: [{{name: {}}}]
",
            many.join(", "),
            "x".repeat(254)
        ),
        &[
            "spec.hostnames: Too many: 17: must have at most 16 items",
            "spec.parentRefs[0].name: Too long: may not be more than 253 bytes",
        ],
    );
    // A transition rule: the class's controller may not change.
    let (ok, _, err) = s.kubectl(&[
        "patch",
        "gatewayclass",
        "switchyard",
        "--type=merge",
        "-p",
        "{\"spec\":{\"controllerName\":\"other.io/x\"}}",
    ]);
    assert!(!ok);
    assert_all(
        &err,
        &["spec.controllerName: Invalid value: \"other.io/x\": Value is immutable"],
    );
    // Nothing refused was stored.
    assert!(s
        .ok(&["get", "httproutes,gateways,tlsroutes", "-o", "name"])
        .lines()
        .all(|l| !l.ends_with("/bad")));
}

/// A CRD with each schema feature: two versions, status and scale subresources, printer
/// columns, a map list with two keys, defaults, int-or-string, preserve-unknown-fields, an
/// embedded resource, nullable, formats, bounds, CEL with messageExpression, reason, fieldPath
/// and a transition rule.
const WIDGETS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Size, type: string, jsonPath: .spec.size, priority: 1}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema: &schema
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - rule: self.replicas <= self.maxReplicas
              messageExpression: "'replicas ' + string(self.replicas) + ' exceeds ' + string(self.maxReplicas)"
              fieldPath: .replicas
            - rule: "!has(oldSelf.size) || self.size == oldSelf.size || self.replicas == 0"
              message: size changes only at zero replicas
              reason: FieldValueForbidden
            properties:
              replicas: {type: integer, format: int32, minimum: 0, default: 1}
              maxReplicas: {type: integer, default: 10}
              size: {type: string, enum: [small, large]}
              owner: {type: string, format: email, maxLength: 20, pattern: '^[a-z@.]+$'}
              port: {x-kubernetes-int-or-string: true}
              note: {type: string, nullable: true}
              labels: {type: object, maxProperties: 2, additionalProperties: {type: string}}
              ports:
                type: array
                maxItems: 4
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [port, protocol]
                items:
                  type: object
                  required: [port]
                  properties:
                    port: {type: integer}
                    protocol: {type: string, default: TCP}
                    name: {type: string}
              tags: {type: array, x-kubernetes-list-type: set, items: {type: string}}
              template: {type: object, x-kubernetes-embedded-resource: true, x-kubernetes-preserve-unknown-fields: true}
              free: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              replicas: {type: integer}
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  required: [type]
                  properties: {type: {type: string}, status: {type: string}}
  - name: v1beta1
    served: true
    storage: false
    subresources: {status: {}}
    schema: *schema
"#;

#[test]
fn a_custom_kind_serves_every_verb_and_schema_feature() {
    let mut s = Server::start_at(free_port(), &[]);
    let out = s.ok_stdin(&["apply", "-f", "-"], WIDGETS);
    assert!(out.contains("created"), "{out}");
    s.ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/widgets.example.com",
    ]);
    let crd = s.json(&["get", "crd", "widgets.example.com"]);
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        crd["metadata"]["finalizers"][0],
        "customresourcecleanup.apiextensions.k8s.io"
    );

    // Create: pruning (with a warning), defaults, int-or-string, embedded resource, free fields.
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "--validate=warn", "-f", "-"],
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, labels: {tier: a}}
spec:
  size: small
  port: http
  unknownField: 1
  ports: [{port: 53, protocol: UDP}]
  template: {apiVersion: v1, kind: ConfigMap, metadata: {name: t}, data: {k: v}}
  free: {any: {thing: [1, 2]}}
",
    );
    assert!(ok, "{err}");
    assert!(err.contains("unknown field \"spec.unknownField\""), "{err}");
    let w = s.json(&["get", "widget", "w1"]);
    assert!(w["spec"].get("unknownField").is_none());
    assert_eq!(w["spec"]["replicas"], 1);
    assert_eq!(w["spec"]["maxReplicas"], 10);
    assert_eq!(w["spec"]["port"], "http");
    assert_eq!(w["spec"]["free"]["any"]["thing"][1], 2);
    assert_eq!(w["spec"]["template"]["data"]["k"], "v");
    assert_eq!(w["metadata"]["generation"], 1);
    // fieldValidation=Strict refuses the unknown field instead.
    let (ok, _, err) = s.kubectl_stdin(
        &["create", "--validate=strict", "-f", "-"],
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w-strict}
spec: {size: small, bogus: true}
",
    );
    assert!(!ok);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{err}"
    );

    // Every schema rule, refused with kube-apiserver's field errors.
    refused(
        &s,
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w-bad}
spec:
  size: medium
  replicas: 3000000000
  owner: NOT-AN-EMAIL-AND-FAR-TOO-LONG
  port: 1.5
  labels: {a: x, b: y, c: z}
  ports: [{port: 1}, {port: 1, protocol: TCP}, {protocol: UDP}]
  tags: [a, a]
  template: {metadata: {name: t}}
",
        &[
        "spec.size: Unsupported value: \"medium\": supported values: \"small\", \"large\"",
        "spec.replicas: Invalid value: 3000000000: spec.replicas in body must be of type int32",
        "spec.owner: Too long: may not be more than 20 bytes",
        "spec.owner: Invalid value: \"NOT-AN-EMAIL-AND-FAR-TOO-LONG\": spec.owner in body should match '^[a-z@.]+$'",
        "spec.owner: Invalid value: \"NOT-AN-EMAIL-AND-FAR-TOO-LONG\": spec.owner in body must be of type email",
        "spec.port: Invalid value: \"number\": spec.port in body must be of type integer,string",
        "spec.labels: Too many: 3: must have at most 2 items",
        "spec.ports[1]: Duplicate value: {\"port\":1,\"protocol\":\"TCP\"}",
        "spec.ports[2].port: Required value",
        "spec.tags[1]: Duplicate value: \"a\"",
        "spec.template.apiVersion: Required value",
        "spec.template.kind: Required value",
    ]);
    // CEL: messageExpression and fieldPath; a transition rule with a reason.
    refused(
        &s,
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w-cel}
spec: {size: small, replicas: 11}
",
        &["spec.replicas: Invalid value: \"object\": replicas 11 exceeds 10"],
    );
    let (ok, _, err) = s.kubectl(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        "{\"spec\":{\"size\":\"large\"}}",
    ]);
    assert!(!ok);
    assert_all(
        &err,
        &["spec: Forbidden: size changes only at zero replicas"],
    );
    s.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        "{\"spec\":{\"size\":\"large\",\"replicas\":0}}",
    ]);
    // A nullable field keeps its null; a null non-nullable field is dropped.
    s.ok(&["patch", "widget", "w1", "--type=json", "-p", "[{\"op\":\"add\",\"path\":\"/spec/note\",\"value\":null},{\"op\":\"add\",\"path\":\"/spec/owner\",\"value\":null}]"]);
    let w = s.json(&["get", "widget", "w1"]);
    assert!(
        w["spec"]["note"].is_null() && w["spec"].as_object().unwrap().contains_key("note"),
        "{w}"
    );
    assert!(!w["spec"].as_object().unwrap().contains_key("owner"), "{w}");
    // A strategic merge patch is not for custom kinds.
    let (ok, _, err) = s.kubectl(&["patch", "widget", "w1", "-p", "{\"spec\":{\"replicas\":1}}"]);
    assert!(!ok);
    assert!(
        err.contains("application/strategic-merge-patch+json is not supported"),
        "{err}"
    );

    // Server-side apply merges the map list by both of its keys, and two managers co-own it.
    s.ok_stdin(
        &["apply", "--server-side", "--field-manager=b", "-f", "-"],
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {ports: [{port: 53, protocol: TCP, name: dns-tcp}]}
",
    );
    let ports = s.json(&["get", "widget", "w1"])["spec"]["ports"].clone();
    assert_eq!(ports.as_array().unwrap().len(), 2, "{ports}");
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=c", "-f", "-"],
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {ports: [{port: 53, protocol: TCP, name: other}]}
",
    );
    assert!(!ok);
    assert!(
        err.contains(
            "conflict with \"b\" using example.com/v1: .spec.ports[port=53,protocol=\"TCP\"].name"
        ),
        "{err}"
    );
    assert!(
        !err.contains(".spec.ports[port=53,protocol=\"TCP\"]\n"),
        "{err}"
    );

    // status: its own subresource; the main resource ignores it.
    s.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        "{\"status\":{\"replicas\":2,\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}",
    ]);
    s.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        "{\"status\":{\"replicas\":7}}",
    ]);
    assert_eq!(s.jsonpath("widget", "w1", "{.status.replicas}"), "2");
    // scale
    s.ok(&["scale", "widget", "w1", "--replicas=3"]);
    assert_eq!(s.jsonpath("widget", "w1", "{.spec.replicas}"), "3");
    let scale: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/widgets/w1/scale",
    ]))
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["replicas"], 2);
    let (ok, _, err) = s.kubectl(&["scale", "widget", "w1", "--replicas=11"]);
    assert!(!ok && err.contains("exceeds"), "{err}");

    // Columns, short names, categories, wide.
    assert!(s.ok(&["get", "crds"]).contains("CREATED AT"));
    let list: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/example.com/v1/widgets"])).unwrap();
    assert_eq!(list["kind"], "WidgetList");
    let out = s.ok(&["get", "wd", "-o", "wide"]);
    assert_all(
        &out,
        &[
            "NAME", "REPLICAS", "SIZE", "READY", "AGE", "w1", "3", "large", "True",
        ],
    );
    assert!(s.ok(&["get", "all"]).contains("widget.example.com/w1"));
    // Selectors, another version, list and watch through kube-rs, explain.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1beta1
kind: Widget
metadata: {name: w2, labels: {tier: b}}
spec: {size: small}
",
    );
    // kubectl's client-side apply patches custom kinds with a merge patch (the OpenAPI document
    // offers no strategic merge for them): a change is applied, then nothing is left to apply.
    let w2 = "apiVersion: example.com/v1beta1
kind: Widget
metadata: {name: w2, labels: {tier: b}}
spec: {size: small, maxReplicas: 5}
";
    assert!(s.ok_stdin(&["apply", "-f", "-"], w2).contains("configured"));
    assert!(s.ok_stdin(&["apply", "-f", "-"], w2).contains("unchanged"));
    assert_eq!(s.jsonpath("widget", "w2", "{.spec.maxReplicas}"), "5");
    assert_eq!(
        s.ok(&["get", "widgets", "-l", "tier=b", "-o", "name"])
            .trim(),
        "widget.example.com/w2"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "widgets",
            "--field-selector",
            "metadata.name=w1",
            "-o",
            "name"
        ])
        .trim(),
        "widget.example.com/w1"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "widgets.v1.example.com",
            "w2",
            "-o",
            "jsonpath={.apiVersion}"
        ]),
        "example.com/v1"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "widgets.v1beta1.example.com",
            "w1",
            "-o",
            "jsonpath={.apiVersion}"
        ]),
        "example.com/v1beta1"
    );
    assert!(s.ok(&["explain", "widget.spec.ports"]).contains("protocol"));

    // The kinds survive a restart.
    s.crash_and_restart(&[]);
    assert_eq!(s.ok(&["get", "widgets", "-o", "name"]).lines().count(), 2);

    // Namespace deletion takes custom objects along; CRD deletion takes the rest.
    s.ok(&["create", "namespace", "other"]);
    s.ok_stdin(
        &["apply", "-n", "other", "-f", "-"],
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w3}
spec: {size: small}
",
    );
    s.ok(&["delete", "namespace", "other", "--timeout=60s"]);
    assert!(s
        .ok(&["get", "widgets", "-A", "-o", "name"])
        .lines()
        .all(|l| !l.ends_with("/w3")));
    s.ok(&["delete", "widgets", "--all"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w4}
spec: {size: small}
",
    );
    // A CRD being deleted says so while its objects go (a finalizer of the object's own holds
    // it here).
    s.ok(&[
        "patch",
        "widget",
        "w4",
        "--type=merge",
        "-p",
        "{\"metadata\":{\"finalizers\":[\"example.com/hold\"]}}",
    ]);
    s.ok(&["delete", "crd", "widgets.example.com", "--wait=false"]);
    eventually(Duration::from_secs(20), || {
        let out = s.ok(&[
            "get",
            "crd",
            "widgets.example.com",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Terminating\")].status}",
        ]);
        (out == "True").then_some(())
    });
    // New objects are refused meanwhile.
    refused(
        &s,
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w5}
spec: {size: small}
",
        &["terminating"],
    );
    s.ok(&[
        "patch",
        "widget",
        "w4",
        "--type=merge",
        "-p",
        "{\"metadata\":{\"finalizers\":null}}",
    ]);
    s.ok(&[
        "wait",
        "--for=delete",
        "crd/widgets.example.com",
        "--timeout=60s",
    ]);
    let (ok, _, err) = s.kubectl(&["get", "widgets"]);
    assert!(!ok, "{err}");
    let (ok, _, _) = s.kubectl(&["get", "--raw", "/apis/example.com/v1/widgets"]);
    assert!(!ok, "the kind is still served");
    // Made again, the kind starts empty.
    s.ok_stdin(&["apply", "-f", "-"], WIDGETS);
    eventually(Duration::from_secs(20), || {
        let (ok, out, _) = s.kubectl(&["get", "widgets", "-o", "name"]);
        (ok && out.trim().is_empty()).then_some(())
    });
}

#[test]
fn bad_crds_are_refused_and_nothing_is_stored() {
    let s = Server::start(&[]);
    let crd = |name: &str, group: &str, kind: &str, schema: &str| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {name}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: {plural}, kind: {kind}}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {schema}
",
            plural = name.split('.').next().unwrap()
        )
    };
    let ok_schema =
        "{type: object, properties: {spec: {type: object, properties: {a: {type: string}}}}}";
    s.ok_stdin(
        &["apply", "-f", "-"],
        &crd("things.example.com", "example.com", "Thing", ok_schema),
    );
    for (yaml, wanted, name) in [
        // Not structural: a field without a type.
        (crd("nt.example.com", "example.com", "Nt", "{type: object, properties: {spec: {properties: {a: {type: string}}}}}"),
         "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields", "nt.example.com"),
        (crd("nr.example.com", "example.com", "Nr", "{type: object, properties: {spec: {$ref: '#/x'}}}"),
         "spec.versions[0].schema.openAPIV3Schema.properties[spec].$ref: Forbidden", "nr.example.com"),
        // Invalid CEL, and a function that does not exist.
        (crd("cel.example.com", "example.com", "Cel", "{type: object, x-kubernetes-validations: [{rule: 'self.spec.a =='}], properties: {spec: {type: object}}}"),
         "spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].rule: Invalid value: \"self.spec.a ==\": compilation failed", "cel.example.com"),
        (crd("fn.example.com", "example.com", "Fn", "{type: object, x-kubernetes-validations: [{rule: 'self.nope()'}]}"),
         "undeclared reference to 'nope'", "fn.example.com"),
        // A rule that could visit every pair of items of a list nothing bounds.
        (crd("costly.example.com", "example.com", "Costly", "{type: object, properties: {l: {type: array, items: {type: string}, x-kubernetes-validations: [{rule: 'self.all(a, self.exists(b, a == b))'}]}}}"),
         "estimated rule cost exceeds budget", "costly.example.com"),
        // A default that does not fit its schema.
        (crd("df.example.com", "example.com", "Df", "{type: object, properties: {count: {type: integer, default: x}}}"),
         "spec.versions[0].schema.openAPIV3Schema.properties[count].default", "df.example.com"),
        // Name conflicts: a kind another CRD of the group has, a built-in kind's plural.
        (crd("others.example.com", "example.com", "Thing", ok_schema),
         "spec.names.kind: Invalid value: \"Thing\": is already in use by things.example.com", "others.example.com"),
        (crd("ingresses.networking.k8s.io", "networking.k8s.io", "Ingress", ok_schema).replace("metadata: {name: ingresses.networking.k8s.io}", "metadata: {name: ingresses.networking.k8s.io, annotations: {api-approved.kubernetes.io: unapproved}}"),
         "is already in use by ingresses.networking.k8s.io", "ingresses.networking.k8s.io"),
        // A protected group without its approval; a name that is not plural.group.
        (crd("foos.x.k8s.io", "x.k8s.io", "Foo", ok_schema),
         "metadata.annotations[api-approved.kubernetes.io]: Required value", "foos.x.k8s.io"),
        (crd("bars.example.com", "example.org", "Bar", ok_schema),
         "metadata.name: Invalid value: \"bars.example.com\": must be spec.names.plural+\".\"+spec.group", "bars.example.com"),
    ] {
        refused(&s, &yaml, &[wanted]);
        let (found, _, _) = s.kubectl(&["get", "crd", name]);
        assert!(!found, "{name} was stored");
    }
    // The accepted CRD still serves; none of the refused ones does.
    let out = s.ok(&["api-resources", "--api-group=example.com", "-o", "name"]);
    assert_eq!(out.trim(), "things.example.com");
}
