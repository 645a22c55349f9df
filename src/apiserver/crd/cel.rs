//! CEL validation rules (`x-kubernetes-validations`): compiled once per CRD version with the
//! `cel` crate, evaluated with `self` (and `oldSelf` for transition rules) bound to the value at
//! the rule's place in the object.
//!
//! The environment is CEL's standard library, its strings and lists extensions, and the parts
//! of Kubernetes' own libraries that CRDs use most: `isIP`, `isCIDR`, `isURL`. Property names
//! that are CEL keywords or not identifiers are escaped as Kubernetes escapes them
//! (`namespace` is `__namespace__`, `x-y` is `x__dash__y`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::types::{CelBool, CelString};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value;

use super::schema::{Schema, Ty};
use crate::apiserver::error::FieldError;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    let added = env
        .add_extension(cel::extensions::strings)
        .and_then(|_| env.add_extension(cel::extensions::lists))
        .and_then(|_| cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP"))
        .and_then(|_| cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR"))
        .and_then(|_| cel::add_overload!(env, fn is_url: (CelString) -> CelBool, name = "isURL"));
    added.expect("the CEL environment's declarations do not clash");
    Arc::new(env)
});

fn is_ip(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_ip(s.inner()).is_some())
}

/// An address as Kubernetes' `isIP` takes it: no zone, no IPv4-mapped IPv6 form.
fn parse_ip(s: &str) -> Option<std::net::IpAddr> {
    let ip: std::net::IpAddr = s.parse().ok()?;
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && s.contains('.') => None,
        ip => Some(ip),
    }
}

fn is_cidr(s: &CelString<'_>) -> CelBool {
    let ok = s.inner().split_once('/').is_some_and(|(ip, bits)| {
        let max = match parse_ip(ip) {
            Some(std::net::IpAddr::V4(_)) => 32,
            Some(std::net::IpAddr::V6(_)) => 128,
            None => return false,
        };
        bits.parse::<u8>().is_ok_and(|b| b <= max) && (bits == "0" || !bits.starts_with('0'))
    });
    CelBool::from(ok)
}

fn is_url(s: &CelString<'_>) -> CelBool {
    CelBool::from(url_ok(s.inner()))
}

/// An absolute URL or an absolute path, as Go's `url.ParseRequestURI` accepts them.
fn url_ok(s: &str) -> bool {
    if s.starts_with('/') {
        return !s.contains(char::is_whitespace);
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok && !rest.is_empty() && !s.contains(char::is_whitespace)
}

/// Functions a rule may call besides operators: CEL's standard library, the extensions above
/// and Kubernetes' functions. A rule calling anything else is refused when the CRD is written.
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "dyn",
    "type",
    "duration",
    "timestamp",
    "getSeconds",
    "getMinutes",
    "getHours",
    "getMilliseconds",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getMonth",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "format",
    "reverse",
    "distinct",
    "flatten",
    "sort",
    "lists.range",
    "strings.quote",
    "isIP",
    "isCIDR",
    "isURL",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "orValue",
    "hasValue",
    "value",
    "or",
];

/// What a failed rule reports, as `reason` says (FieldValueInvalid when it says nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Invalid,
    Required,
    Forbidden,
    Duplicate,
}

/// One compiled rule.
pub struct Rule {
    text: String,
    program: Program,
    message: Option<String>,
    message_expression: Option<Program>,
    reason: Reason,
    /// Where the error points, below the rule's place (`.spec.x`, without the leading dot).
    field_path: Option<String>,
    /// Reads `oldSelf`: evaluated on updates only, when there is an old value.
    pub transition: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({:?})", self.text)
    }
}

fn compile_one(text: &str) -> Result<Program, String> {
    let program = ENV.compile(text).map_err(|e| {
        let first = e.to_string();
        format!("compilation failed: {}", first.lines().next().unwrap_or(""))
    })?;
    for f in program.references().functions() {
        let operator = f.starts_with('_') || f.starts_with('@') || f.starts_with('!');
        if !operator && !FUNCTIONS.contains(&f) {
            return Err(format!("compilation failed: undeclared reference to '{f}'"));
        }
    }
    Ok(program)
}

impl Rule {
    /// Compiles one entry of `x-kubernetes-validations`; the error says what is wrong with
    /// which of its fields (`rule`, `messageExpression`, `reason`, `fieldPath`).
    pub fn compile(v: &Value) -> Result<Rule, (&'static str, String)> {
        let text = v
            .get("rule")
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
            .ok_or(("rule", "rule is not specified".to_string()))?;
        let program = compile_one(text).map_err(|e| ("rule", e))?;
        let transition = program.references().has_variable("oldSelf");
        let message_expression = match v.get("messageExpression").and_then(Value::as_str) {
            Some(m) if !m.trim().is_empty() => {
                Some(compile_one(m).map_err(|e| ("messageExpression", e))?)
            }
            _ => None,
        };
        let reason = match v.get("reason").and_then(Value::as_str) {
            None | Some("FieldValueInvalid") => Reason::Invalid,
            Some("FieldValueRequired") => Reason::Required,
            Some("FieldValueForbidden") => Reason::Forbidden,
            Some("FieldValueDuplicate") => Reason::Duplicate,
            Some(other) => {
                return Err((
                    "reason",
                    format!("Unsupported value: \"{other}\": supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\""),
                ))
            }
        };
        let field_path = match v.get("fieldPath").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => {
                let ok = p.starts_with('.')
                    && p[1..]
                        .split('.')
                        .all(|s| !s.is_empty() && !s.contains(char::is_whitespace));
                if !ok {
                    return Err((
                        "fieldPath",
                        format!("Invalid value: \"{p}\": must be a valid path of the form .a.b"),
                    ));
                }
                Some(p[1..].to_string())
            }
            _ => None,
        };
        Ok(Rule {
            text: text.to_string(),
            program,
            message: v
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            message_expression,
            reason,
            field_path,
            transition,
        })
    }

    /// Runs the rule on `value` (converted for `schema`) at `path`; a failure or an evaluation
    /// error becomes a field error.
    pub fn check(&self, value: &Cel, old: Option<&Cel>, path: &str, errs: &mut Vec<FieldError>) {
        if self.transition && old.is_none() {
            return;
        }
        let mut cx = Context::with_env(ENV.clone());
        cx.add_variable_from_value("self", value.clone());
        if let Some(o) = old {
            cx.add_variable_from_value("oldSelf", o.clone());
        }
        let field = match &self.field_path {
            Some(p) if path.is_empty() => p.clone(),
            Some(p) => format!("{path}.{p}"),
            None => path.to_string(),
        };
        let message = match self.program.execute(&cx) {
            Ok(Cel::Bool(true)) => return,
            Ok(Cel::Bool(false)) => self.message(&cx),
            Ok(other) => format!("rule {:?} evaluated to {other:?}, not a boolean", self.text),
            Err(e) => format!("rule {:?} failed to evaluate: {e}", self.text),
        };
        errs.push(match self.reason {
            Reason::Invalid => FieldError::invalid(field, type_name(value), message),
            Reason::Required => FieldError::required(field, message),
            Reason::Forbidden => FieldError::forbidden(field, message),
            Reason::Duplicate => FieldError::duplicate(field, type_name(value)),
        });
    }

    fn message(&self, cx: &Context) -> String {
        if let Some(m) = &self.message_expression {
            if let Ok(Cel::String(s)) = m.execute(cx) {
                if !s.trim().is_empty() {
                    return s.to_string();
                }
            }
        }
        match &self.message {
            Some(m) => m.clone(),
            None => format!("failed rule: {}", self.text),
        }
    }
}

/// How kube-apiserver shows the value a rule failed on: scalars as themselves, others by type.
fn type_name(v: &Cel) -> Value {
    match v {
        Cel::String(s) => Value::String(s.to_string()),
        Cel::Int(i) => Value::from(*i),
        Cel::Float(f) => Value::from(*f),
        Cel::Bool(b) => Value::Bool(*b),
        Cel::List(_) => Value::String("array".into()),
        Cel::Map(_) => Value::String("object".into()),
        _ => Value::String("value".into()),
    }
}

const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A property name as a rule reads it.
pub fn escape(name: &str) -> String {
    if RESERVED.contains(&name) {
        return format!("__{name}__");
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("__") {
            out.push_str("__underscores__");
            rest = &rest[2..];
            continue;
        }
        match c {
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A JSON value as a CEL value, typed by its schema: integers of `number` fields are doubles,
/// properties escaped, maps (`additionalProperties`) and unknown fields kept as they are.
pub fn to_cel(v: &Value, schema: Option<&Schema>) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (schema.map(|s| s.ty), n.as_i64()) {
            (Some(Ty::Number), _) | (_, None) => Cel::Float(n.as_f64().unwrap_or(0.0)),
            (_, Some(i)) => Cel::Int(i),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let item = schema.and_then(|s| s.items.as_deref());
            Cel::List(Arc::new(items.iter().map(|i| to_cel(i, item)).collect()))
        }
        Value::Object(m) => {
            let mut out: HashMap<Key, Cel> = HashMap::with_capacity(m.len());
            for (k, val) in m {
                let (key, sub) = match schema {
                    Some(s) if !s.properties.is_empty() => {
                        (escape(k), s.properties.get(k.as_str()))
                    }
                    Some(s) => (k.clone(), s.additional.as_deref()),
                    None => (k.clone(), None),
                };
                out.insert(Key::String(Arc::new(key)), to_cel(val, sub));
            }
            Cel::Map(Map { map: Arc::new(out) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        Rule::compile(&v).unwrap()
    }

    fn run(r: &Rule, v: Value, old: Option<Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let old = old.map(|o| to_cel(&o, None));
        r.check(&to_cel(&v, None), old.as_ref(), "spec", &mut errs);
        errs
    }

    #[test]
    fn rules_pass_fail_and_say_why() {
        let r = rule(json!({"rule": "self.all(h, !isIP(h))", "message": "no IPs"}));
        assert!(run(&r, json!(["a.example.com"]), None).is_empty());
        let errs = run(&r, json!(["a.example.com", "10.0.0.1"]), None);
        assert_eq!(
            errs[0].to_string(),
            "spec: Invalid value: \"array\": no IPs"
        );
        let r = rule(json!({
            "rule": "self.x.split('/')[0].size() < 4 && self.x.substring(1) != 'bc'",
            "messageExpression": "'x is ' + self.x", "reason": "FieldValueForbidden",
            "fieldPath": ".x"
        }));
        assert!(run(&r, json!({"x": "ab/c"}), None).is_empty());
        let errs = run(&r, json!({"x": "abc"}), None);
        assert_eq!(errs[0].to_string(), "spec.x: Forbidden: x is abc");
        // Durations compare as durations, keywords are escaped.
        let r = rule(
            json!({"rule": "duration(self.a) <= duration(self.b) && self.__namespace__ == 'n'"}),
        );
        // Without a schema nothing says `namespace` is a property: it is not escaped.
        assert_eq!(
            run(&r, json!({"a": "1s", "b": "1m", "namespace": "n"}), None).len(),
            1
        );
        let mut obj = Schema::any();
        obj.properties.insert("namespace".into(), Schema::any());
        let mut errs = Vec::new();
        r.check(
            &to_cel(&json!({"a": "1s", "b": "1m", "namespace": "n"}), Some(&obj)),
            None,
            "",
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        r.check(
            &to_cel(&json!({"a": "2m", "b": "1m", "namespace": "n"}), Some(&obj)),
            None,
            "",
            &mut errs,
        );
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn transition_rules_need_an_old_value() {
        let r = rule(json!({"rule": "self == oldSelf", "message": "Value is immutable"}));
        assert!(r.transition);
        assert!(run(&r, json!("a"), None).is_empty());
        assert!(run(&r, json!("a"), Some(json!("a"))).is_empty());
        assert_eq!(
            run(&r, json!("b"), Some(json!("a")))[0].to_string(),
            "spec: Invalid value: \"b\": Value is immutable"
        );
    }

    #[test]
    fn bad_rules_are_refused_at_compile_time() {
        for (v, field) in [
            (json!({"rule": "self.x ==", "message": "m"}), "rule"),
            (json!({"rule": "self.bogus()"}), "rule"),
            (json!({"rule": ""}), "rule"),
            (json!({"rule": "true", "reason": "Nope"}), "reason"),
            (json!({"rule": "true", "fieldPath": "x"}), "fieldPath"),
            (
                json!({"rule": "true", "messageExpression": "nope("}),
                "messageExpression",
            ),
        ] {
            let err = Rule::compile(&v).unwrap_err();
            assert_eq!(err.0, field, "{v}: {err:?}");
        }
        assert!(Rule::compile(&json!({"rule": "self.bogus()"}))
            .unwrap_err()
            .1
            .contains("undeclared reference to 'bogus'"));
    }

    #[test]
    fn kubernetes_functions() {
        for (ip, ok) in [
            ("10.0.0.1", true),
            ("::1", true),
            ("::ffff:1.2.3.4", false),
            ("a", false),
        ] {
            assert_eq!(parse_ip(ip).is_some(), ok, "{ip}");
        }
        let r = rule(
            json!({"rule": "isCIDR(self[0]) && !isCIDR(self[1]) && isURL(self[2]) && !isURL(self[3])"}),
        );
        assert!(run(
            &r,
            json!(["10.0.0.0/8", "10.0.0.0/33", "https://x.io/a", "not a url"]),
            None
        )
        .is_empty());
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("namespace"), "__namespace__");
        assert_eq!(escape("a-b.c/d"), "a__dash__b__dot__c__slash__d");
        assert_eq!(escape("__x"), "__underscores__x");
        assert_eq!(escape("plain"), "plain");
    }
}
