//! Object lifecycles through real kubectl: Events (both APIs, `describe`, expiry), garbage
//! collection with each propagation policy (and across a restart), and a terminating namespace
//! that is written to.

use std::time::Duration;

use crate::support::{eventually, free_port, Server};

fn gone(s: &Server, args: &[&str]) -> Option<()> {
    let (ok, _, err) = s.kubectl(args);
    (!ok && err.contains("NotFound")).then_some(())
}

#[test]
fn events_are_served_described_and_expire() {
    let s = Server::start(&["--event-ttl", "4s"]);
    s.ok(&["create", "configmap", "subject", "--from-literal=a=b"]);
    let uid = s.jsonpath("configmap", "subject", "{.metadata.uid}");
    let core = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: subject.1, namespace: default}}\n\
         involvedObject: {{apiVersion: v1, kind: ConfigMap, name: subject, namespace: default, uid: {uid}}}\n\
         reason: Checked\nmessage: looked at it\ntype: Normal\nsource: {{component: tester}}\ncount: 2\n\
         firstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:01:00Z\"\n"
    );
    s.ok_stdin(&["apply", "-f", "-"], &core);
    let v1 = format!(
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: subject.2, namespace: default}}\n\
         eventTime: \"2026-01-01T00:02:00.000000Z\"\nreportingController: example.com/tester\nreportingInstance: t1\n\
         action: Probe\nreason: Unhealthy\nnote: probe failed\ntype: Warning\n\
         regarding: {{apiVersion: v1, kind: ConfigMap, name: subject, namespace: default, uid: {uid}}}\n"
    );
    s.ok_stdin(&["apply", "-f", "-"], &v1);

    // kubectl's table, over both APIs: the events.k8s.io/v1 one is served as core/v1 too.
    let table = eventually(Duration::from_secs(10), || {
        let out = s.ok(&["get", "events"]);
        out.contains("Unhealthy").then_some(out)
    });
    assert!(
        table.contains("LAST SEEN") && table.contains("OBJECT"),
        "{table}"
    );
    assert!(
        table.contains("configmap/subject") && table.contains("looked at it"),
        "{table}"
    );
    assert!(
        table.contains("probe failed") && table.contains("Warning"),
        "{table}"
    );
    let v1_list = s.ok(&["get", "events.v1.events.k8s.io", "-o", "name"]);
    assert!(v1_list.contains("subject.2"), "{v1_list}");
    // describe selects events by the object they are about.
    let described = s.ok(&["describe", "configmap", "subject"]);
    assert!(
        described.contains("Checked") && described.contains("Unhealthy"),
        "{described}"
    );
    let selected = s.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=Checked,involvedObject.kind=ConfigMap,source=tester",
        "-o",
        "name",
    ]);
    assert_eq!(selected.trim(), "event/subject.1");
    let (ok, _, err) = s.kubectl(&["get", "events", "--field-selector", "spec.bogus=1"]);
    assert!(!ok && err.contains("field label not supported"), "{err}");

    // An event about an object in another namespace, or a new-style one without its reporter,
    // is refused.
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Event\nmetadata: {name: bad-1, namespace: default}\ninvolvedObject: {kind: Pod, name: p, namespace: other}\n",
    );
    assert!(
        !ok && err.contains("does not match event.namespace"),
        "{err}"
    );
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: bad-2, namespace: default}\neventTime: \"2026-01-01T00:02:00.000000Z\"\n",
    );
    assert!(
        !ok && err.contains("reportingController: Required value"),
        "{err}"
    );

    // Both disappear once their TTL after the last write has passed.
    eventually(Duration::from_secs(30), || {
        let out = s.ok(&["get", "events", "-o", "name"]);
        let v1 = s.ok(&["get", "events.v1.events.k8s.io", "-o", "name"]);
        (out.trim().is_empty() && v1.trim().is_empty()).then_some(())
    });
}

const OWNER: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner}\ndata: {a: b}\n";

/// A ConfigMap owned by `owner` (uid `uid`), blocking its owner's deletion, with `finalizers`.
fn dependent(name: &str, uid: &str, finalizers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  finalizers: [{finalizers}]\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}, blockOwnerDeletion: true}}\ndata: {{a: b}}\n"
    )
}

#[test]
fn garbage_collection_with_each_propagation_policy() {
    let mut s = Server::start_at(free_port(), &[]);
    // Background: the owner goes at once, its dependents after it.
    s.ok_stdin(&["apply", "-f", "-"], OWNER);
    let uid = s.jsonpath("configmap", "owner", "{.metadata.uid}");
    s.ok_stdin(&["apply", "-f", "-"], &dependent("bg-1", &uid, ""));
    s.ok_stdin(&["apply", "-f", "-"], &dependent("bg-2", &uid, ""));
    s.ok(&["delete", "configmap", "owner"]);
    eventually(Duration::from_secs(20), || {
        gone(&s, &["get", "configmap", "bg-1"])?;
        gone(&s, &["get", "configmap", "bg-2"])
    });

    // Orphan: the dependents stay, no longer owned.
    s.ok_stdin(&["apply", "-f", "-"], OWNER);
    let uid = s.jsonpath("configmap", "owner", "{.metadata.uid}");
    s.ok_stdin(&["apply", "-f", "-"], &dependent("orphan-1", &uid, ""));
    s.ok(&["delete", "configmap", "owner", "--cascade=orphan"]);
    eventually(Duration::from_secs(20), || {
        gone(&s, &["get", "configmap", "owner"])
    });
    assert_eq!(
        s.jsonpath("configmap", "orphan-1", "{.metadata.ownerReferences}"),
        ""
    );

    // Foreground: the owner waits, across a restart, for a dependent that blocks it.
    s.ok_stdin(&["apply", "-f", "-"], OWNER);
    let uid = s.jsonpath("configmap", "owner", "{.metadata.uid}");
    s.ok_stdin(
        &["apply", "-f", "-"],
        &dependent("fg-1", &uid, "example.com/hold"),
    );
    s.ok_stdin(&["apply", "-f", "-"], &dependent("fg-2", &uid, ""));
    s.ok(&[
        "delete",
        "configmap",
        "owner",
        "--cascade=foreground",
        "--wait=false",
    ]);
    assert_eq!(
        s.jsonpath("configmap", "owner", "{.metadata.finalizers}"),
        r#"["foregroundDeletion"]"#
    );
    eventually(Duration::from_secs(20), || {
        gone(&s, &["get", "configmap", "fg-2"])
    });
    s.crash_and_restart(&[]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !s.jsonpath("configmap", "fg-1", "{.metadata.deletionTimestamp}")
            .is_empty(),
        "the blocking dependent is being deleted"
    );
    assert!(
        s.kubectl(&["get", "configmap", "owner"]).0,
        "the owner waits"
    );
    release_in(&s, "default", "fg-1");
    eventually(Duration::from_secs(20), || {
        gone(&s, &["get", "configmap", "fg-1"])?;
        gone(&s, &["get", "configmap", "owner"])
    });

    // An object whose owner never existed (or went while the collector was down) goes too.
    s.ok_stdin(
        &["apply", "-f", "-"],
        &dependent("dangling", "00000000-0000-0000-0000-000000000000", ""),
    );
    eventually(Duration::from_secs(20), || {
        gone(&s, &["get", "configmap", "dangling"])
    });
}

#[test]
fn a_terminating_namespace_written_to_stays_until_empty() {
    let s = Server::start(&[]);
    s.ok(&["create", "namespace", "busy"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: busy, finalizers: [example.com/hold]}\n",
    );
    s.ok(&["delete", "namespace", "busy", "--wait=false"]);
    // Writes to the namespace while it terminates (a label; a replace without its finalizers)
    // do not finalize it.
    s.ok(&["label", "namespace", "busy", "team=x"]);
    s.ok_stdin(
        &["replace", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: busy, labels: {team: z}}\nspec: {}\n",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        s.jsonpath("namespace", "busy", "{.status.phase}"),
        "Terminating"
    );
    assert_eq!(
        s.jsonpath("namespace", "busy", "{.spec.finalizers}"),
        r#"["kubernetes"]"#
    );
    release_in(&s, "busy", "held");
    eventually(Duration::from_secs(20), || {
        gone(&s, &["get", "namespace", "busy"])
    });
}

fn release_in(s: &Server, ns: &str, name: &str) {
    s.ok(&[
        "patch",
        "configmap",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}
