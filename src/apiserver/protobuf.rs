//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded to the
//! same JSON the rest of the server takes.
//!
//! kubectl's generators (`kubectl create namespace|service|configmap|secret ...`) send built-in
//! kinds as protobuf and do not fall back to JSON. The wire schema of the kinds we serve —
//! field tags, wire kinds and JSON names — is data (`protobuf_schema.json`, made by
//! `scripts/gen-protobuf-schema.py` from the k8s-pb and k8s-openapi crates); one generic decoder
//! walks it. Every read is bounds-checked and nesting is limited: a hostile body is an error,
//! never a panic.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::time::{rfc3339, rfc3339_micros};

const MAGIC: &[u8] = b"k8s\0";
const MAX_DEPTH: usize = 64;
/// Go's zero `time.Time` as protobuf seconds: the field is set but means "no time".
const GO_ZERO_TIME: i64 = -62_135_596_800;

#[derive(Deserialize)]
struct SchemaFile {
    roots: Vec<String>,
    messages: HashMap<String, Vec<FieldSpec>>,
}

/// `[tag, jsonName, kind, repeated, target?]`
#[derive(Deserialize)]
struct FieldSpec(u32, String, String, bool, #[serde(default)] Option<String>);

struct Schema {
    roots: Vec<String>,
    messages: HashMap<String, HashMap<u32, FieldSpec>>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let file: SchemaFile = serde_json::from_str(include_str!("protobuf_schema.json"))
            .expect("the embedded protobuf schema is valid");
        let messages = file
            .messages
            .into_iter()
            .map(|(name, fields)| (name, fields.into_iter().map(|f| (f.0, f)).collect()))
            .collect();
        Schema {
            roots: file.roots,
            messages,
        }
    })
}

fn bad(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf: {what}"))
}

/// A bounds-checked protobuf wire reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| bad("length past the end of the message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ApiError> {
        let n = usize::try_from(self.varint()?).map_err(|_| bad("length too large"))?;
        self.take(n)
    }

    /// (field number, wire type)
    fn key(&mut self) -> Result<(u32, u8), ApiError> {
        let k = self.varint()?;
        let tag = u32::try_from(k >> 3).map_err(|_| bad("field number too large"))?;
        Ok((tag, (k & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> Result<(), ApiError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            w => Err(bad(format!("unsupported wire type {w}"))),
        }
    }
}

fn utf8(b: &[u8]) -> Result<Value, ApiError> {
    std::str::from_utf8(b)
        .map(|s| Value::String(s.to_string()))
        .map_err(|_| bad("string is not UTF-8"))
}

fn expect_wire(got: u8, want: u8, field: &str) -> Result<(), ApiError> {
    if got == want {
        Ok(())
    } else {
        Err(bad(format!(
            "field {field}: wire type {got}, expected {want}"
        )))
    }
}

/// The fields of a small message as (tag -> last value read): for the special messages.
fn scalar_fields(b: &[u8]) -> Result<HashMap<u32, Result<u64, &[u8]>>, ApiError> {
    let mut r = Reader::new(b);
    let mut out = HashMap::new();
    while !r.done() {
        let (tag, wire) = r.key()?;
        match wire {
            0 => {
                out.insert(tag, Ok(r.varint()?));
            }
            2 => {
                out.insert(tag, Err(r.bytes()?));
            }
            w => r.skip(w)?,
        }
    }
    Ok(out)
}

fn int_of(f: &HashMap<u32, Result<u64, &[u8]>>, tag: u32) -> i64 {
    f.get(&tag)
        .and_then(|v| v.as_ref().ok())
        .map_or(0, |v| *v as i64)
}

fn bytes_of<'a>(f: &HashMap<u32, Result<u64, &'a [u8]>>, tag: u32) -> &'a [u8] {
    f.get(&tag)
        .and_then(|v| v.as_ref().err().copied())
        .unwrap_or(&[])
}

/// The messages whose JSON form is not an object of their fields.
fn special(kind: &str, b: &[u8]) -> Result<Value, ApiError> {
    let f = scalar_fields(b)?;
    Ok(match kind {
        "time" | "microtime" => {
            let (secs, nanos) = (int_of(&f, 1), int_of(&f, 2) as i32);
            if secs == GO_ZERO_TIME || secs < 0 || !(0..1_000_000_000).contains(&nanos) {
                return Ok(Value::Null);
            }
            let t = UNIX_EPOCH + Duration::new(secs as u64, nanos as u32);
            Value::String(if kind == "microtime" {
                rfc3339_micros(t)
            } else {
                rfc3339(t)
            })
        }
        "intorstring" => {
            if int_of(&f, 1) == 1 {
                utf8(bytes_of(&f, 3))?
            } else {
                Value::from(int_of(&f, 2) as i32)
            }
        }
        "quantity" => utf8(bytes_of(&f, 1))?,
        "rawjson" => {
            let raw = bytes_of(&f, 1);
            if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(raw).map_err(|e| bad(format!("embedded JSON: {e}")))?
            }
        }
        other => return Err(bad(format!("no decoder for {other}"))),
    })
}

fn message_or_special(s: &Schema, target: &str, b: &[u8], depth: usize) -> Result<Value, ApiError> {
    if s.messages.contains_key(target) {
        decode_message(s, target, b, depth + 1).map(Value::Object)
    } else {
        special(target, b)
    }
}

fn map_entry(
    s: &Schema,
    spec: &FieldSpec,
    b: &[u8],
    depth: usize,
) -> Result<(String, Value), ApiError> {
    let mut r = Reader::new(b);
    let (mut key, mut value) = (String::new(), Value::Null);
    while !r.done() {
        let (tag, wire) = r.key()?;
        match (tag, wire) {
            (1, 2) => {
                key = std::str::from_utf8(r.bytes()?)
                    .map_err(|_| bad("map key is not UTF-8"))?
                    .to_string()
            }
            (2, 2) => {
                let raw = r.bytes()?;
                value = match (spec.2.as_str(), spec.4.as_deref()) {
                    ("map_string", _) => utf8(raw)?,
                    ("map_bytes", _) => {
                        Value::String(base64::engine::general_purpose::STANDARD.encode(raw))
                    }
                    ("map_message", Some(t)) => message_or_special(s, t, raw, depth)?,
                    (k, _) => return Err(bad(format!("unsupported map kind {k}"))),
                };
            }
            (_, w) => r.skip(w)?,
        }
    }
    if value.is_null() && spec.2 == "map_string" {
        value = Value::String(String::new());
    }
    Ok((key, value))
}

/// A Go zero value (empty string, 0) for a singular scalar: the JSON form would omit it.
fn is_go_zero(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.is_empty()) || v.as_i64() == Some(0)
}

fn decode_message(
    s: &Schema,
    name: &str,
    b: &[u8],
    depth: usize,
) -> Result<Map<String, Value>, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("nesting too deep"));
    }
    let fields = s
        .messages
        .get(name)
        .ok_or_else(|| bad(format!("no schema for {name}")))?;
    let mut out = Map::new();
    let mut r = Reader::new(b);
    while !r.done() {
        let (tag, wire) = r.key()?;
        let Some(spec) = fields.get(&tag) else {
            r.skip(wire)?;
            continue;
        };
        let json = spec.1.as_str();
        if spec.2.starts_with("map_") {
            expect_wire(wire, 2, json)?;
            let (k, v) = map_entry(s, spec, r.bytes()?, depth)?;
            let m = out.entry(json).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = m {
                m.insert(k, v);
            }
            continue;
        }
        if spec.2 == "inline" {
            // A Go struct embedded with `json:",inline"`: its fields join the parent's.
            expect_wire(wire, 2, json)?;
            let target = spec
                .4
                .as_deref()
                .ok_or_else(|| bad(format!("field {json} has no message type")))?;
            out.extend(decode_message(s, target, r.bytes()?, depth + 1)?);
            continue;
        }
        let mut values = Vec::new();
        match (spec.2.as_str(), wire) {
            ("string", 2) => values.push(utf8(r.bytes()?)?),
            ("bytes", 2) => values.push(Value::String(
                base64::engine::general_purpose::STANDARD.encode(r.bytes()?),
            )),
            ("message", 2) => {
                let target = spec
                    .4
                    .as_deref()
                    .ok_or_else(|| bad(format!("field {json} has no message type")))?;
                values.push(message_or_special(s, target, r.bytes()?, depth)?);
            }
            ("bool" | "int32" | "int64", 0) => values.push(scalar(&spec.2, r.varint()?)),
            // Packed repeated scalars.
            ("bool" | "int32" | "int64", 2) if spec.3 => {
                let mut packed = Reader::new(r.bytes()?);
                while !packed.done() {
                    values.push(scalar(&spec.2, packed.varint()?));
                }
            }
            (kind, w) => {
                return Err(bad(format!(
                    "field {json}: wire type {w} does not fit {kind}"
                )))
            }
        }
        if spec.3 {
            let list = out.entry(json).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(l) = list {
                l.extend(values);
            }
        } else if let Some(v) = values.pop() {
            if spec.2 != "message" && spec.2 != "bool" && is_go_zero(&v) {
                out.remove(json);
            } else {
                out.insert(json.to_string(), v);
            }
        }
    }
    Ok(out)
}

fn scalar(kind: &str, v: u64) -> Value {
    match kind {
        "bool" => Value::Bool(v != 0),
        "int32" => Value::from(v as i32),
        _ => Value::from(v as i64),
    }
}

/// The schema's message for an apiVersion and kind.
fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let module = match api_version.split_once('/') {
        None => "api.core.v1".to_string(),
        Some((group, version)) => format!("api.{}.{version}", group.split('.').next()?),
    };
    let name = format!("{module}.{kind}");
    schema().roots.contains(&name).then_some(name)
}

/// Decodes a `k8s\0`-framed `runtime.Unknown` holding one object of a served kind.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s protobuf magic prefix"))?;
    let mut r = Reader::new(envelope);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !r.done() {
        let (tag, wire) = r.key()?;
        match (tag, wire) {
            (1, 2) => {
                let tm = scalar_fields(r.bytes()?)?;
                api_version = String::from_utf8_lossy(bytes_of(&tm, 1)).into_owned();
                kind = String::from_utf8_lossy(bytes_of(&tm, 2)).into_owned();
            }
            (2, 2) => raw = r.bytes()?,
            (3, 2) => {
                if !r.bytes()?.is_empty() {
                    return Err(ApiError::unsupported_media_type(
                        "application/vnd.kubernetes.protobuf with a content encoding",
                    ));
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    let name = message_name(&api_version, &kind)
        .ok_or_else(|| bad(format!("no protobuf schema for {api_version} {kind}")))?;
    let mut obj = decode_message(schema(), &name, raw, 0)?;
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(tag) << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn int(tag: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(tag) << 3, &mut out);
        varint(v, &mut out);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), field(1, &tm), field(2, raw)].concat()
    }

    #[test]
    fn decodes_a_service_like_kubectl_create_sends_it() {
        let labels = field(11, &[field(1, b"app"), field(2, b"web")].concat());
        let created = field(8, &[int(1, GO_ZERO_TIME as u64)].concat());
        let meta = field(1, &[field(1, b"web"), labels, created].concat());
        let target = field(4, &[int(1, 0), int(2, 8080)].concat());
        let port = field(
            1,
            &[
                field(1, b"80-8080"),
                field(2, b"TCP"),
                int(3, 80),
                target,
                int(5, 0),
            ]
            .concat(),
        );
        let spec = field(2, &[port, field(4, b"ClusterIP"), field(3, b"")].concat());
        let raw = [meta, spec, field(3, &[])].concat();
        let v = decode(&envelope("v1", "Service", &raw)).unwrap();
        assert_eq!(v["kind"], "Service");
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["metadata"]["labels"]["app"], "web");
        assert_eq!(v["metadata"]["creationTimestamp"], Value::Null);
        assert_eq!(
            v["spec"]["ports"][0],
            serde_json::json!({"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080})
        );
        assert_eq!(v["spec"]["type"], "ClusterIP");
        assert!(
            v["spec"].get("clusterIP").is_none(),
            "Go's empty string means unset"
        );
    }

    #[test]
    fn inline_structs_are_flattened() {
        // IngressSpec{rules: 3 [IngressRule{host: 1, ingressRuleValue: 2 {http: 1 {paths: 1
        // [{path: 1, pathType: 3}]}}}]}
        let path = field(1, &[field(1, b"/api"), field(3, b"Prefix")].concat());
        let rule = field(
            3,
            &[field(1, b"a.example.com"), field(2, &field(1, &path))].concat(),
        );
        let spec = field(2, &rule);
        let v = decode(&envelope(
            "networking.k8s.io/v1",
            "Ingress",
            &[field(1, &field(1, b"i")), spec].concat(),
        ))
        .unwrap();
        assert_eq!(
            v["spec"]["rules"][0],
            serde_json::json!({"host": "a.example.com", "http": {"paths": [{"path": "/api", "pathType": "Prefix"}]}})
        );
    }

    #[test]
    fn secret_bytes_become_base64() {
        let meta = field(1, &field(1, b"tls"));
        let data = field(
            2,
            &[field(1, b"tls.key"), field(2, b"\x00\x01secret")].concat(),
        );
        let v = decode(&envelope(
            "v1",
            "Secret",
            &[meta, data, field(3, b"kubernetes.io/tls")].concat(),
        ))
        .unwrap();
        assert_eq!(
            v["data"]["tls.key"],
            base64::engine::general_purpose::STANDARD.encode(b"\x00\x01secret")
        );
        assert_eq!(v["type"], "kubernetes.io/tls");
    }

    #[test]
    fn decodes_an_event_as_client_go_recorders_send_it() {
        let meta = field(1, &[field(1, b"n1.1"), field(3, b"default")].concat());
        let when = field(2, &[int(1, 1_795_000_000), int(2, 123_000)].concat());
        let regarding = field(8, &[field(1, b"Node"), field(3, b"n1")].concat());
        let raw = [
            meta,
            when,
            field(4, b"kube-proxy"),
            field(5, b"kube-proxy-n1"),
            field(6, b"StartKubeProxy"),
            field(7, b"Starting"),
            regarding,
            field(11, b"Normal"),
        ]
        .concat();
        let v = decode(&envelope("events.k8s.io/v1", "Event", &raw)).unwrap();
        assert_eq!(v["eventTime"], "2026-11-18T11:06:40.000123Z");
        assert_eq!(
            v["regarding"],
            serde_json::json!({"kind": "Node", "name": "n1"})
        );
        assert_eq!(
            (&v["reportingController"], &v["reason"], &v["type"]),
            (&"kube-proxy".into(), &"Starting".into(), &"Normal".into())
        );
    }

    #[test]
    fn hostile_bodies_are_errors() {
        assert!(decode(b"nope").is_err());
        assert!(decode(&envelope("v1", "Widget", &[])).is_err());
        // A length that runs past the end.
        let mut bad_len = envelope("v1", "Service", &[]);
        bad_len.extend_from_slice(&[0x12, 0xff, 0xff, 0x03]);
        assert!(decode(&bad_len).is_err());
        // An endless varint.
        let mut endless = MAGIC.to_vec();
        endless.extend_from_slice(&[0x80; 20]);
        assert!(decode(&endless).is_err());
        // Fields the schema does not know are skipped, whatever their wire type.
        let unknown = [int(99, 7), field(98, b"zz"), field(1, &field(1, b"web"))].concat();
        assert_eq!(
            decode(&envelope("v1", "ConfigMap", &unknown)).unwrap()["metadata"]["name"],
            "web"
        );
        // Wrong wire type for a field.
        let meta = field(1, &int(1, 5));
        assert!(decode(&envelope("v1", "Service", &meta)).is_err());
        for n in 0..envelope("v1", "Service", &field(1, &field(1, b"web"))).len() {
            let cut = &envelope("v1", "Service", &field(1, &field(1, b"web")))[..n];
            let _ = decode(cut);
        }
    }
}
