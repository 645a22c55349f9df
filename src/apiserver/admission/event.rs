//! Events: kube-apiserver's validation of core/v1 Events and of events.k8s.io/v1 Events (the
//! latter stricter: who reports, what action, when).

use serde_json::Value;

use super::str_at;
use crate::apiserver::error::FieldError;

/// Longest reason and action kube-apiserver takes.
const REASON_MAX: usize = 128;
/// Longest note (message) of an events.k8s.io/v1 Event.
const NOTE_MAX: usize = 1024;
const TYPES: &[&str] = &["Normal", "Warning"];

/// The object an event is about must live in the event's namespace; an event about a
/// cluster-scoped object lives in "default" (or, for a new-style event, "kube-system"), as
/// client-go's recorders write them.
fn same_namespace(obj: &Value, object: &str, errs: &mut Vec<FieldError>) {
    let ns = str_at(obj, "/metadata/namespace").unwrap_or("");
    let theirs = obj
        .get(object)
        .and_then(|o| o.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let new_style = obj.get("eventTime").is_some_and(|t| !t.is_null());
    let ok = if theirs.is_empty() {
        ns.is_empty() || ns == "default" || (new_style && ns == "kube-system")
    } else {
        theirs == ns
    };
    if !ok {
        errs.push(FieldError::invalid(
            format!("{object}.namespace"),
            theirs,
            "does not match event.namespace",
        ));
    }
}

fn bounded(obj: &Value, field: &str, max: usize, errs: &mut Vec<FieldError>) {
    if let Some(v) = obj.get(field).and_then(Value::as_str) {
        if v.len() > max {
            errs.push(FieldError::invalid(
                field,
                v,
                format!("can have at most {max} characters"),
            ));
        }
    }
}

fn required(obj: &Value, field: &str, errs: &mut Vec<FieldError>) {
    if obj
        .get(field)
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errs.push(FieldError::required(field, ""));
    }
}

fn known_type(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        if !t.is_empty() && !TYPES.contains(&t) {
            errs.push(FieldError::not_supported("type", t, TYPES));
        }
    }
}

/// A core/v1 Event, as the older recorders write it.
pub fn validate_core(obj: &Value, errs: &mut Vec<FieldError>) {
    same_namespace(obj, "involvedObject", errs);
    bounded(obj, "reason", REASON_MAX, errs);
    bounded(obj, "action", REASON_MAX, errs);
    known_type(obj, errs);
    // An event that says when it happened with microsecond precision is a new-style event, and
    // must say who reported it.
    if obj.get("eventTime").is_some_and(|t| !t.is_null()) {
        required(obj, "reportingComponent", errs);
        required(obj, "reportingInstance", errs);
    }
}

/// An events.k8s.io/v1 Event.
pub fn validate_v1(obj: &Value, errs: &mut Vec<FieldError>) {
    same_namespace(obj, "regarding", errs);
    if obj.get("eventTime").is_none_or(Value::is_null) {
        errs.push(FieldError::required("eventTime", ""));
    }
    for f in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        required(obj, f, errs);
    }
    bounded(obj, "reason", REASON_MAX, errs);
    bounded(obj, "action", REASON_MAX, errs);
    bounded(obj, "note", NOTE_MAX, errs);
    known_type(obj, errs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn core_events_live_with_their_object() {
        let mut errs = Vec::new();
        let ok = json!({"metadata": {"namespace": "ns"}, "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p"}, "type": "Normal"});
        validate_core(&ok, &mut errs);
        let node = json!({"metadata": {"namespace": "default"}, "involvedObject": {"kind": "Node", "name": "n1"}});
        validate_core(&node, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let elsewhere = json!({"metadata": {"namespace": "other"}, "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p"}, "type": "Bad"});
        validate_core(&elsewhere, &mut errs);
        assert_eq!(fields(&errs), ["involvedObject.namespace", "type"]);
    }

    #[test]
    fn v1_events_say_who_when_and_what() {
        let mut errs = Vec::new();
        let ok = json!({"metadata": {"namespace": "ns"}, "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "switchyard.io/node", "reportingInstance": "n1", "action": "Sync",
            "reason": "Programmed", "regarding": {"kind": "Service", "namespace": "ns", "name": "s"}});
        validate_v1(&ok, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut bare = json!({"metadata": {"namespace": "ns"}, "note": "x".repeat(2000)});
        validate_v1(&bare, &mut errs);
        assert_eq!(
            fields(&errs),
            [
                "regarding.namespace",
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
                "note"
            ]
        );
        errs.clear();
        bare["eventTime"] = json!("2026-01-01T00:00:00.000000Z");
        bare["note"] = json!("short");
        bare["metadata"]["namespace"] = json!("kube-system");
        validate_v1(&bare, &mut errs);
        assert!(!fields(&errs).contains(&"eventTime"));
        assert!(!fields(&errs).contains(&"regarding.namespace"));
    }
}
