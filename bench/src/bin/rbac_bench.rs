//! What RBAC costs: ConfigMap creates/s with 32 clients authenticated as a ServiceAccount
//! (a signed token, authorized by RBAC with `--bindings` RoleBindings present) against the same
//! clients with the admin token (`system:masters`, no RBAC check), in alternating rounds of one
//! server.
//!
//! Usage: rbac-bench --switchyard target/release/switchyard [--bindings 1000] [--creates 20000]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{api_creates, start_server, Target};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// RoleBindings present (spread over 100 namespaces; one binds the ServiceAccount).
    #[arg(long, default_value_t = 1000)]
    bindings: usize,
    /// Creates per round.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Rounds per identity (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const CONFIGMAPS: &str = "/api/v1/namespaces/bench/configmaps";

fn configmap(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"payload":"{}"}}}}"#,
        "x".repeat(200)
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (_server, admin) = start_server(&args.switchyard, &dir.path().join("switchyard")).await?;
    let mut c = admin.connect().await?;
    for ns in std::iter::once("bench".to_string()).chain((0..100).map(|i| format!("ns-{i}"))) {
        c.create(
            "/api/v1/namespaces",
            format!(r#"{{"metadata":{{"name":"{ns}"}}}}"#),
        )
        .await?;
    }
    c.create(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/roles",
        r#"{"metadata":{"name":"writer"},"rules":[{"apiGroups":[""],"resources":["configmaps"],"verbs":["create","get","list"]}]}"#.into(),
    )
    .await?;
    // The bindings: every namespace has some, for other users and groups.
    for i in 0..args.bindings.saturating_sub(1) {
        let ns = format!("ns-{}", i % 100);
        c.create(
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
            format!(r#"{{"metadata":{{"name":"b-{i}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"}},"subjects":[{{"kind":"User","name":"user-{i}"}},{{"kind":"Group","name":"group-{i}"}}]}}"#),
        )
        .await?;
    }
    c.create(
        "/api/v1/namespaces/bench/serviceaccounts",
        r#"{"metadata":{"name":"writer"}}"#.into(),
    )
    .await?;
    c.create(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings",
        r#"{"metadata":{"name":"writer"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"writer"},"subjects":[{"kind":"ServiceAccount","name":"writer","namespace":"bench"}]}"#.into(),
    )
    .await?;
    let (status, body) = c
        .request(
            "POST",
            "/api/v1/namespaces/bench/serviceaccounts/writer/token",
            Bytes::from(r#"{"spec":{"expirationSeconds":7200}}"#),
        )
        .await?;
    anyhow::ensure!(status == 201, "TokenRequest: {status}");
    let token = serde_json::from_slice::<serde_json::Value>(&body)?["status"]["token"]
        .as_str()
        .context("no token")?
        .to_string();
    let sa = Target {
        token: Arc::new(token),
        ..admin.clone()
    };
    // The binding reaches the index.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sa.connect()
        .await?
        .create(CONFIGMAPS, configmap("probe"))
        .await?;

    println!(
        "# rbac-bench: {} creates per round, 32 clients, {} RoleBindings present",
        args.creates, args.bindings
    );
    println!(
        "{:<8} {:>16} {:>16} {:>8}",
        "round", "admin/s", "serviceaccount/s", "ratio"
    );
    let (mut admin_all, mut sa_all) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let name =
            move |who: &'static str| move |i: usize| configmap(&format!("{who}-{round}-{i}"));
        let a = api_creates(&admin, 32, args.creates, CONFIGMAPS, name("a")).await?;
        let s = api_creates(&sa, 32, args.creates, CONFIGMAPS, name("s")).await?;
        println!("{:<8} {:>16.0} {:>16.0} {:>8.3}", round + 1, a, s, s / a);
        admin_all.push(a);
        sa_all.push(s);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, s) = (median(&mut admin_all), median(&mut sa_all));
    println!(
        "median: admin {a:.0}/s, ServiceAccount under RBAC {s:.0}/s: {:.1}% of the admin's",
        s / a * 100.0
    );
    Ok(())
}
