//! Test support: a real `switchyard server` process driven by kubectl and kube-rs ([`server`]),
//! `switchyard up` on free ports ([`up`]), and clusters built from network namespaces
//! ([`netns`], with kubectl and pods in them: [`cluster`], and service traffic from those pods:
//! [`traffic`]), and a real kube-apiserver built from its Go modules ([`kube_apiserver`]).

pub mod cluster;
pub mod kube_apiserver;
pub mod netns;
pub mod server;
pub mod traffic;
pub mod up;

pub use server::*;

/// Skips the calling test (the caller returns) with `why`, printed; under `CI=true` no test may
/// skip, so this fails the test with the reason instead.
pub fn skip(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(!ci, "cannot run under CI: {why}");
    eprintln!("skipped: {why}");
}
pub use up::Up;

/// Runs `cmd` with `stdin` on its standard input; returns (success, stdout, stderr).
pub fn run_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET path` over HTTP/1.0 from 127.0.0.1:`port`: the whole response, head and body.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
