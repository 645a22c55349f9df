//! The official Kubernetes Python client (pip `kubernetes`, installed by the test command into
//! `target/python`): server-side apply, garbage collection with each propagation policy, a
//! CustomResourceDefinition and its objects through the dynamic client, and a watch that
//! resumes across a server restart. The flows are in `tests/python/client.py`.

use std::process::Command;

use crate::support::{free_port, Server};

/// The Python with the client installed, if the test command set one up.
fn python() -> Option<String> {
    let p = std::env::var("SWITCHYARD_TEST_PYTHON").ok()?;
    std::path::Path::new(&p).exists().then_some(p)
}

/// Runs one step of the script; its output, asserting it succeeded.
fn step(py: &str, s: &Server, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let out = Command::new(py)
        .arg(script)
        .arg(s.kubeconfig())
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python client step {args:?} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_python_client_applies_collects_and_resumes_watches() {
    let Some(py) = python() else {
        crate::support::skip(
            "the Python client is not installed (scripts/test installs it into target/python)",
        );
        return;
    };
    let mut s = Server::start_at(free_port(), &[]);
    let out = step(&py, &s, &["apply"]);
    assert!(out.contains("ok: force takes the field"), "{out}");
    let out = step(&py, &s, &["gc"]);
    assert!(out.contains("ok: Orphan: the dependent stays"), "{out}");
    let out = step(&py, &s, &["crd"]);
    assert!(
        out.contains("ok: the CRD is deleted with its objects"),
        "{out}"
    );

    // A watch from a resourceVersion taken before a restart resumes after it.
    let rv = step(&py, &s, &["watch-start"]).trim().to_string();
    step(&py, &s, &["write", "before-restart"]);
    s.crash_and_restart(&[]);
    step(&py, &s, &["write", "after-restart"]);
    let out = step(&py, &s, &["watch-resume", &rv]);
    assert!(out.contains("resumes across the restart"), "{out}");
}
