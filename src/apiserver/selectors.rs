//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`exists) and field selectors, with
//! kube-apiserver's syntax and the field labels it supports per kind.

use std::collections::BTreeMap;

use serde_json::Value;

use super::admission::names;
use super::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Op::Equals(x) => v == Some(x),
            Op::NotEquals(x) => v != Some(x),
            Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
            Op::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
            Op::Exists => v.is_some(),
            Op::NotExists => v.is_none(),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn bad(what: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {what}: {detail}"))
}

fn key(k: &str) -> Result<String, ApiError> {
    let k = k.trim();
    match names::qualified_name(k) {
        Some(e) => Err(bad(&format!("key {k:?}"), e)),
        None => Ok(k.to_string()),
    }
}

fn value(v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    match names::label_value(v) {
        Some(e) => Err(bad(&format!("value {v:?}"), e)),
        None => Ok(v.to_string()),
    }
}

/// `key in (a, b)` / `key notin (a)`: the operator word must stand alone before the list.
fn set_op(term: &str) -> Option<(&str, bool, &str)> {
    let open = term.find('(')?;
    let head = term[..open].trim_end();
    let (k, word) = head.rsplit_once(char::is_whitespace)?;
    let notin = match word {
        "in" => false,
        "notin" => true,
        _ => return None,
    };
    Some((k, notin, &term[open..]))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for term in split_top(s) {
            let term = term.trim();
            if term.is_empty() {
                return Err(bad(s, "found empty requirement"));
            }
            let req = if let Some((k, notin, list)) = set_op(term) {
                let inner = list
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or_else(|| bad(term, "expected a parenthesised list of values"))?;
                let values = inner.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
                let op = if notin {
                    Op::NotIn(values)
                } else {
                    Op::In(values)
                };
                Requirement { key: key(k)?, op }
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement {
                    key: key(k)?,
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement {
                    key: key(k)?,
                    op: Op::NotEquals(value(v)?),
                }
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement {
                    key: key(k)?,
                    op: Op::Equals(value(v)?),
                }
            } else {
                Requirement {
                    key: key(term)?,
                    op: Op::Exists,
                }
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A selector written as an object (`matchLabels`, `matchExpressions`), as in a
    /// ClusterRole's aggregationRule. Unknown operators are an error.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for (k, val) in v
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let val = val.as_str().ok_or("a matchLabels value is not a string")?;
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::Equals(val.to_string()),
            });
        }
        for e in v
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .ok_or("an expression has no key")?;
            let values = super::admission::strings_at(e, "/values");
            let op = match e.get("operator").and_then(Value::as_str) {
                Some("In") => Op::In(values),
                Some("NotIn") => Op::NotIn(values),
                Some("Exists") => Op::Exists,
                Some("DoesNotExist") => Op::NotExists,
                other => return Err(format!("unknown operator {other:?}")),
            };
            reqs.push(Requirement {
                key: key.to_string(),
                op,
            });
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&labels_of(obj))
    }

    /// False only when no object serialized as `raw` (compact JSON, as stored) can match: an
    /// equality needs its `"key":"value"` pair in the text. Lets a list or a watch skip decoding
    /// objects that cannot match.
    pub fn may_match_raw(&self, raw: &[u8]) -> bool {
        self.0.iter().all(|r| match &r.op {
            Op::Equals(v) => contains_pair(raw, &r.key, v),
            Op::In(vs) if vs.len() == 1 => contains_pair(raw, &r.key, &vs[0]),
            _ => true,
        })
    }
}

/// Whether `raw` holds `"key":"value"` as compact JSON writes it.
fn contains_pair(raw: &[u8], key: &str, value: &str) -> bool {
    let needle = format!("{}:{}", Value::from(key), Value::from(value));
    memchr::memmem::find(raw, needle.as_bytes()).is_some()
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The field labels kube-apiserver supports for a kind, beyond metadata.name and namespace.
fn field_labels(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        // kube-proxy lists Services with `spec.clusterIP!=None`.
        "Service" => &["spec.clusterIP", "spec.type"],
        // core/v1 Events (what `kubectl describe` selects by) and events.k8s.io/v1 Events.
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reportingController",
        ],
        _ => &[],
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(kind: &str, s: &str) -> Result<Self, ApiError> {
        let mut out = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(out));
        }
        for term in s.split(',') {
            let term = term.trim();
            let (field, eq, v) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {term:?}: expected an operator (=, ==, !=)"
                )));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !field_labels(kind).contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            out.push((field.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// False only when no object serialized as `raw` (compact JSON, as stored) can match: for
    /// an equality on a string field whose JSON key is its last segment, with a non-empty value
    /// (an absent field equals ""), the `"key":"value"` pair must be in the text. The case a
    /// kubelet's and kwok's lists and watches of their node's Pods depend on
    /// (`spec.nodeName=NODE`, which otherwise decodes every Pod of the cluster).
    pub fn may_match_raw(&self, raw: &[u8]) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let key = match field.as_str() {
                "metadata.name" | "metadata.namespace" => &field[9..],
                "spec.nodeName" => "nodeName",
                "status.phase" => "phase",
                _ => return true,
            };
            !*eq || want.is_empty() || contains_pair(raw, key, want)
        })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            // An Event's `source` field label is the reporting component.
            let ptr = match field.as_str() {
                "source" => "/source/component".to_string(),
                f => format!("/{}", f.replace('.', "/")),
            };
            let have = match obj.pointer(&ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(other) => other.to_string(),
                None if field == "spec.unschedulable" || field == "spec.hostNetwork" => {
                    "false".into()
                }
                None => String::new(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let t = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(t("app=web"));
        assert!(t("app==web,tier"));
        assert!(!t("app!=web"));
        assert!(t("app in (web, api)"));
        assert!(!t("app notin (web)"));
        assert!(t("env notin (prod)"));
        assert!(t("!env"));
        assert!(!t("!app"));
        assert!(t("tier in (front),app"));
        assert!(t(""));
        assert!(LabelSelector::parse("app=we b").is_err());
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        assert!(FieldSelector::parse("Pod", "spec.nodeName=n1")
            .unwrap()
            .matches_object(&pod));
        assert!(
            FieldSelector::parse("Pod", "metadata.name!=q,metadata.namespace=ns")
                .unwrap()
                .matches_object(&pod)
        );
        assert!(!FieldSelector::parse("Pod", "spec.nodeName=n2")
            .unwrap()
            .matches_object(&pod));
        assert!(FieldSelector::parse("Service", "spec.nodeName=n1").is_err());
    }

    /// The text prefilter never turns away an object the selector matches, whatever the
    /// selector; it turns away the ones whose text lacks an equality's pair.
    #[test]
    fn raw_prefilter_never_refuses_a_match() {
        let objects = [
            serde_json::json!({"metadata": {"name": "p-1", "namespace": "ns", "labels": {"app": "g-5", "x/y": "a\"b"}}, "spec": {"nodeName": "node-5"}, "status": {"phase": "Running"}}),
            serde_json::json!({"metadata": {"name": "p-2", "namespace": "ns", "labels": {"app": "g-50"}}, "spec": {"nodeName": "node-50"}}),
            serde_json::json!({"metadata": {"name": "p-3", "namespace": "ns"}, "spec": {}}),
        ];
        let fields = [
            "spec.nodeName=node-5",
            "spec.nodeName==node-50",
            "spec.nodeName=",
            "spec.nodeName!=node-5",
            "metadata.name=p-3,metadata.namespace=ns",
            "status.phase=Running",
            "status.phase=",
        ];
        let labels = [
            "app=g-5",
            "app in (g-50)",
            "app in (g-5,g-50)",
            "app!=g-5",
            "x/y=a\"b",
            "!app",
            "app",
        ];
        let mut refused = 0;
        for obj in &objects {
            let raw = serde_json::to_vec(obj).unwrap();
            for f in fields {
                let sel = FieldSelector::parse("Pod", f).unwrap();
                if sel.matches_object(obj) {
                    assert!(sel.may_match_raw(&raw), "{f} on {obj}");
                } else if !sel.may_match_raw(&raw) {
                    refused += 1;
                }
            }
            for l in labels {
                let Ok(sel) = LabelSelector::parse(l) else {
                    continue;
                };
                if sel.matches_object(obj) {
                    assert!(sel.may_match_raw(&raw), "{l} on {obj}");
                } else if !sel.may_match_raw(&raw) {
                    refused += 1;
                }
            }
        }
        // spec.nodeName=node-5 turns away node-50's and the unscheduled Pod, and so on.
        assert!(refused >= 10, "{refused}");
        let raw = serde_json::to_vec(&objects[1]).unwrap();
        assert!(!FieldSelector::parse("Pod", "spec.nodeName=node-5")
            .unwrap()
            .may_match_raw(&raw));
        assert!(!LabelSelector::parse("app=g-5").unwrap().may_match_raw(&raw));
    }
}
