//! Bad input gets a Status error with the right code and reason, and changes nothing.

use http::Request;
use kube::Client;

use crate::support::{bin, Server};

async fn send(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<String, (u16, String, String)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body)
        .unwrap();
    client.request_text(req).await.map_err(|e| match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("not an API error: {other}"),
    })
}

const SVCS: &str = "/api/v1/namespaces/default/services";

async fn revision(client: &Client) -> String {
    let list: serde_json::Value = serde_json::from_str(
        &send(client, "GET", SVCS, "application/json", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let s = Server::start(&[]);
    let c = s.client().await;
    let ok_svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"taken"},"spec":{"clusterIP":"10.96.0.77","type":"NodePort","ports":[{"port":80,"nodePort":30777}]}}"#;
    send(&c, "POST", SVCS, "application/json", ok_svc.into())
        .await
        .unwrap();
    let before = revision(&c).await;
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "a".repeat(4 << 20)
    );
    let cases: Vec<(&str, &str, String, u16, &str, &str)> = vec![
        ("malformed JSON", "application/json", "{\"apiVersion\":".into(), 400, "BadRequest", "error decoding JSON"),
        ("malformed YAML", "application/yaml", "kind: [unclosed".into(), 400, "BadRequest", "YAML"),
        ("not an object", "application/json", "[1,2]".into(), 400, "BadRequest", "object"),
        ("wrong kind", "application/json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#.into(), 400, "BadRequest", "kind"),
        ("wrong apiVersion", "application/json", r#"{"apiVersion":"v2","kind":"Service","metadata":{"name":"x"}}"#.into(), 400, "BadRequest", "API version"),
        ("wrong field type", "application/json", r#"{"metadata":{"name":"x"},"spec":{"ports":"80"}}"#.into(), 400, "BadRequest", "cannot be handled"),
        ("invalid name", "application/json", r#"{"metadata":{"name":"No_Good"},"spec":{"ports":[{"port":80}]}}"#.into(), 422, "Invalid", "DNS-1035"),
        ("impossible port", "application/json", r#"{"metadata":{"name":"p"},"spec":{"ports":[{"port":70000}]}}"#.into(), 422, "Invalid", "between 1 and 65535"),
        ("invalid IP", "application/json", r#"{"metadata":{"name":"ip"},"spec":{"clusterIP":"10.96.0.300","ports":[{"port":80}]}}"#.into(), 422, "Invalid", "valid IP"),
        ("duplicate ClusterIP", "application/json", r#"{"metadata":{"name":"dup"},"spec":{"clusterIP":"10.96.0.77","ports":[{"port":80}]}}"#.into(), 422, "Invalid", "already allocated"),
        ("duplicate NodePort", "application/json", r#"{"metadata":{"name":"dupnp"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30777}]}}"#.into(), 422, "Invalid", "already allocated"),
        ("duplicate ports", "application/json", r#"{"metadata":{"name":"dp"},"spec":{"ports":[{"name":"a","port":80},{"name":"b","port":80}]}}"#.into(), 422, "Invalid", "Duplicate value"),
        ("already exists", "application/json", ok_svc.replace("10.96.0.77", "10.96.0.78").replace("30777", "30778"), 409, "AlreadyExists", "already exists"),
        ("protobuf garbage", "application/vnd.kubernetes.protobuf", "k8s\0\u{12}\u{7f}".into(), 400, "BadRequest", "protobuf"),
        ("protobuf without magic", "application/vnd.kubernetes.protobuf", "{}".into(), 400, "BadRequest", "magic"),
        ("CBOR", "application/cbor", "\u{a0}".into(), 415, "UnsupportedMediaType", "unknown format"),
    ];
    for (what, ct, body, code, reason, text) in cases {
        let (got_code, got_reason, msg) = send(&c, "POST", SVCS, ct, body.into_bytes())
            .await
            .expect_err(what);
        assert_eq!(
            (got_code, got_reason.as_str()),
            (code, reason),
            "{what}: {msg}"
        );
        assert!(msg.contains(text), "{what}: {msg:?} lacks {text:?}");
    }
    let strict = r#"{"metadata":{"name":"strict"},"spec":{"bogus":1,"ports":[{"port":80}]}}"#;
    let (code, _, msg) = send(
        &c,
        "POST",
        &format!("{SVCS}?fieldValidation=Strict"),
        "application/json",
        strict.into(),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 400);
    assert!(msg.contains("unknown field \"spec.bogus\""), "{msg}");
    let (code, reason, _) = send(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        big.into_bytes(),
    )
    .await
    .unwrap_err();
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"));
    let refused = [
        (
            "GET",
            "/api/v1/namespaces/default/widgets".to_string(),
            "application/json",
            &b""[..],
            404,
        ),
        (
            "GET",
            format!("{SVCS}?labelSelector=a%20in%20b"),
            "application/json",
            &b""[..],
            400,
        ),
        (
            "PATCH",
            format!("{SVCS}/taken"),
            "application/merge-patch+json",
            &b"not json"[..],
            400,
        ),
        (
            "PATCH",
            format!("{SVCS}/taken"),
            "text/plain",
            &b"{}"[..],
            415,
        ),
    ];
    for (method, path, ct, body, want) in refused {
        let (code, _, msg) = send(&c, method, &path, ct, body.to_vec())
            .await
            .unwrap_err();
        assert_eq!(code, want, "{method} {path}: {msg}");
    }
    assert_eq!(
        revision(&c).await,
        before,
        "a refused request changed the store"
    );
}

#[test]
fn bad_flags_exit_with_one_line() {
    for args in [
        vec![
            "server",
            "--data-dir",
            "/tmp/x",
            "--service-cidr",
            "10.96.0.0/99",
        ],
        vec![
            "server",
            "--data-dir",
            "/tmp/x",
            "--node-port-range",
            "40000-30000",
        ],
        vec![
            "server",
            "--data-dir",
            "/tmp/x",
            "--listen",
            "not-an-address",
        ],
    ] {
        let out = std::process::Command::new(bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with("error:"), "{args:?}: {err}");
    }
}
