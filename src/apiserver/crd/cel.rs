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

use std::sync::Mutex;

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedEntryExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::Val;
use cel::parser::{Macro, MacroExprHelper, ParseError};
use cel::{Context, Env, ExecutionError, IdedExpr, Program, Value as Cel};
use regex::Regex;
use serde_json::Value;

use super::eval::Fast;
use super::schema::{Path, Schema, Ty};
use crate::apiserver::error::FieldError;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    let added = env
        .add_macro(Macro::receiver("matches", 1, precompile_pattern))
        .and_then(|_| cel::add_overload!(env, fn matches_compiled: (CelString, CelString) -> Result<CelBool>, name = MATCHES))
        .and_then(|_| env.add_extension(cel::extensions::strings))
        .and_then(|_| env.add_extension(cel::extensions::lists))
        .and_then(|_| cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP"))
        .and_then(|_| cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR"))
        .and_then(|_| cel::add_overload!(env, fn is_url: (CelString) -> CelBool, name = "isURL"));
    added.expect("the CEL environment's declarations do not clash");
    Arc::new(env)
});

/// What `x.matches('literal')` calls once compiled: the pattern was compiled with the rule.
pub(super) const MATCHES: &str = "_matches_compiled_";
/// Patterns compiled so far (by their text), shared by every rule that has them; bounded, as
/// CRDs may come and go.
static PATTERNS: LazyLock<Mutex<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);
const MAX_PATTERNS: usize = 10_000;

/// Compiles the literal pattern of `x.matches('...')` with the rule (refusing a bad one there,
/// not on every write) and turns the call into one that finds it compiled. A pattern that is
/// not a literal stays an ordinary `matches`, compiled when it runs.
fn precompile_pattern(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    let Some(Expr::Literal(LiteralValue::String(pattern))) = args.first().map(|a| &a.expr) else {
        return Ok(None);
    };
    let pattern = pattern.inner().to_string();
    let re = Regex::new(&pattern).map_err(|e| {
        helper.new_error(
            args[0].id,
            format!("invalid regular expression {pattern:?}: {e}"),
        )
    })?;
    let mut cache = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() < MAX_PATTERNS {
        cache.entry(pattern).or_insert_with(|| Arc::new(re));
    }
    drop(cache);
    let (Some(target), Some(pattern)) = (target.take(), args.pop()) else {
        return Ok(None);
    };
    Ok(Some(helper.next_expr(Expr::Call(CallExpr {
        func_name: MATCHES.to_string(),
        target: None,
        args: vec![target, pattern],
    }))))
}

fn matches_compiled(s: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let cached = PATTERNS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(pattern.inner())
        .cloned();
    let re = match cached {
        Some(re) => re,
        None => Arc::new(
            Regex::new(pattern.inner())
                .map_err(|e| ExecutionError::function_error("matches", e))?,
        ),
    };
    Ok(CelBool::from(re.is_match(s.inner())))
}

fn is_ip(s: &CelString<'_>) -> CelBool {
    CelBool::from(is_ip_str(s.inner()))
}

pub(super) fn is_ip_str(s: &str) -> bool {
    parse_ip(s).is_some()
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
    CelBool::from(is_cidr_str(s.inner()))
}

pub(super) fn is_cidr_str(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, bits)| {
        let max = match parse_ip(ip) {
            Some(std::net::IpAddr::V4(_)) => 32,
            Some(std::net::IpAddr::V6(_)) => 128,
            None => return false,
        };
        bits.parse::<u8>().is_ok_and(|b| b <= max) && (bits == "0" || !bits.starts_with('0'))
    })
}

fn is_url(s: &CelString<'_>) -> CelBool {
    CelBool::from(url_ok(s.inner()))
}

/// An absolute URL or an absolute path, as Go's `url.ParseRequestURI` accepts them.
pub(super) fn url_ok(s: &str) -> bool {
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
    /// The rule compiled for the fast path, when it uses only what that path runs.
    fast: Option<Fast>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({:?})", self.text)
    }
}

/// The longest rule or message expression, in bytes.
const MAX_TEXT: usize = 16 * 1024;
/// The stack of the thread that parses a rule: enough for [`MAX_TEXT`] bytes of nesting.
const COMPILE_STACK: usize = 512 << 20;
/// How deeply a rule's expression may nest.
const MAX_DEPTH: usize = 64;

fn depth(e: &IdedExpr) -> usize {
    let max = |it: &mut dyn Iterator<Item = &IdedExpr>| it.map(depth).max().unwrap_or(0);
    1 + match &e.expr {
        Expr::Comprehension(c) => max(&mut [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()),
        Expr::Call(c) => max(&mut c.target.as_deref().into_iter().chain(c.args.iter())),
        Expr::Select(s) => depth(&s.operand),
        Expr::List(l) => max(&mut l.elements.iter()),
        Expr::Map(m) => max(&mut m.entries.iter().flat_map(entry)),
        Expr::Struct(s) => max(&mut s.entries.iter().flat_map(entry)),
        _ => 0,
    }
}

fn compile_one(text: &str) -> Result<Program, String> {
    let program = ENV.compile(text).map_err(|e| {
        let first = e.to_string();
        format!("compilation failed: {}", first.lines().next().unwrap_or(""))
    })?;
    if depth(program.expression()) > MAX_DEPTH {
        return Err(format!(
            "compilation failed: the expression nests more than {MAX_DEPTH} levels deep"
        ));
    }
    for f in program.references().functions() {
        let operator = f.starts_with(['_', '@', '!', '-']);
        if !operator && !FUNCTIONS.contains(&f) {
            return Err(format!("compilation failed: undeclared reference to '{f}'"));
        }
    }
    Ok(program)
}

/// The most items a request could put in a list or map nothing bounds.
const UNBOUNDED: f64 = (crate::apiserver::http::MAX_BODY / 2) as f64;

/// The most items a comprehension over a value of `schema` visits: its maxItems or
/// maxProperties (or its properties, for an object), unbounded when nothing says.
fn items_of(schema: Option<&Schema>) -> f64 {
    let Some(s) = schema else { return UNBOUNDED };
    match s.ty {
        Ty::Array => s.max_items.map_or(UNBOUNDED, |m| m as f64),
        Ty::Object if s.additional.is_some() => s.max_properties.map_or(UNBOUNDED, |m| m as f64),
        Ty::Object if !s.preserve_unknown => s.properties.len().max(1) as f64,
        _ => UNBOUNDED,
    }
}

/// The schema of the value `e` reads, when it is a path from `self`, `oldSelf` or a
/// comprehension variable: what bounds a comprehension over it.
fn schema_of<'s>(e: &IdedExpr, vars: &[(&str, Option<&'s Schema>)]) -> Option<&'s Schema> {
    match &e.expr {
        Expr::Ident(name) => vars.iter().rev().find(|(n, _)| n == name)?.1,
        Expr::Select(sel) if !sel.test => {
            let s = schema_of(&sel.operand, vars)?;
            let key = super::eval::unescape(&sel.field);
            s.properties.get(&key).or(s.additional.as_deref())
        }
        Expr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 => {
            let s = schema_of(&c.args[0], vars)?;
            s.items.as_deref().or(s.additional.as_deref())
        }
        _ => None,
    }
}

/// An estimate of the items a rule visits: a comprehension costs the items of what it
/// iterates times what its body costs; everything else adds up.
fn cost<'s>(e: &'s IdedExpr, vars: &mut Vec<(&'s str, Option<&'s Schema>)>) -> f64 {
    match &e.expr {
        Expr::Comprehension(c) => {
            let range = schema_of(&c.iter_range, vars);
            let n = items_of(range);
            let item = range.and_then(|r| match r.ty {
                Ty::Array => r.items.as_deref(),
                _ => None,
            });
            let outer = cost(&c.iter_range, vars) + cost(&c.accu_init, vars);
            vars.push((c.iter_var.as_str(), item));
            let body = cost(&c.loop_cond, vars) + cost(&c.loop_step, vars);
            vars.pop();
            outer + n * body.max(1.0) + cost(&c.result, vars)
        }
        Expr::Call(c) => {
            1.0 + c
                .target
                .as_deref()
                .into_iter()
                .chain(c.args.iter())
                .map(|x| cost(x, vars))
                .sum::<f64>()
        }
        Expr::Select(sel) => 1.0 + cost(&sel.operand, vars),
        Expr::List(l) => 1.0 + l.elements.iter().map(|x| cost(x, vars)).sum::<f64>(),
        Expr::Map(m) => {
            1.0 + m
                .entries
                .iter()
                .flat_map(entry)
                .map(|x| cost(x, vars))
                .sum::<f64>()
        }
        _ => 1.0,
    }
}

fn entry(e: &IdedEntryExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        EntryExpr::StructField(f) => vec![&f.value],
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
    }
}

/// The most a rule may cost, in items visited: kube-apiserver's per-rule estimate limit.
const COST_LIMIT: f64 = 10_000_000.0;

impl Rule {
    /// Refuses a rule at a node of `schema` whose comprehensions could visit more than
    /// [`COST_LIMIT`] items, as kube-apiserver refuses rules by their estimated cost (from the
    /// schema's maxItems and maxProperties).
    pub fn check_cost(&self, schema: &Schema) -> Result<(), String> {
        let e = self.program.expression();
        let mut vars = vec![("self", Some(schema)), ("oldSelf", Some(schema))];
        let estimate = cost(e, &mut vars);
        if estimate > COST_LIMIT {
            return Err(format!(
                "estimated rule cost exceeds budget by factor of {:.0} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
                (estimate / COST_LIMIT).ceil()
            ));
        }
        Ok(())
    }

    /// Compiles one entry of `x-kubernetes-validations`; the error says what is wrong with
    /// which of its fields (`rule`, `messageExpression`, `reason`, `fieldPath`).
    ///
    /// The parser recurses as deeply as the text nests, so it runs on a thread of its own with
    /// a stack sized for the longest text allowed; a rule that nests deeper than
    /// [`MAX_DEPTH`] is refused, so that evaluating it never recurses far.
    pub fn compile(v: &Value) -> Result<Rule, (&'static str, String)> {
        for field in ["rule", "messageExpression"] {
            let len = v.get(field).and_then(Value::as_str).map_or(0, str::len);
            if len > MAX_TEXT {
                return Err((
                    field,
                    format!("Too long: may not be more than {MAX_TEXT} bytes"),
                ));
            }
        }
        let v = v.clone();
        std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn(move || Rule::compile_here(&v))
            .map_err(|e| ("rule", format!("compilation failed: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(("rule", "compilation failed".to_string())))
    }

    fn compile_here(v: &Value) -> Result<Rule, (&'static str, String)> {
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
        let fast = Fast::compile(program.expression(), &|p| {
            PATTERNS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(p)
                .cloned()
        });
        Ok(Rule {
            text: text.to_string(),
            fast,
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

/// Runs the rules of one schema node on `value` (and its old value) at `path`: the values are
/// bound once for all of them, borrowing from the object. A rule that fails or cannot be
/// evaluated becomes a field error.
pub fn check_all(
    rules: &[Rule],
    schema: &Schema,
    value: &Value,
    old: Option<&Value>,
    path: &Path<'_>,
    errs: &mut Vec<FieldError>,
) {
    // The `cel` crate's context, built only for a rule the fast path does not run or for a
    // message expression.
    let mut slow: Option<Context> = None;
    for rule in rules {
        if rule.transition && old.is_none() {
            continue;
        }
        let outcome = match &rule.fast {
            Some(f) => f.run(value, old),
            None => match rule
                .program
                .execute(slow_context(&mut slow, schema, value, old))
            {
                Ok(Cel::Bool(b)) => Ok(b),
                Ok(other) => Err(format!("evaluated to {other:?}, not a boolean")),
                Err(e) => Err(e.to_string()),
            },
        };
        let message = match outcome {
            Ok(true) => continue,
            Ok(false) => rule.message(slow_context(&mut slow, schema, value, old)),
            Err(e) => format!("rule {:?} failed to evaluate: {e}", rule.text),
        };
        let field = match &rule.field_path {
            Some(p) => Path::Field(path, p).to_string(),
            None => path.to_string(),
        };
        errs.push(match rule.reason {
            Reason::Invalid => FieldError::invalid(field, shown(value), message),
            Reason::Required => FieldError::required(field, message),
            Reason::Forbidden => FieldError::forbidden(field, message),
            Reason::Duplicate => FieldError::duplicate(field, shown(value)),
        });
    }
}

/// The `cel` crate's context for the rules of one node, made when first needed.
fn slow_context<'c, 'v>(
    slow: &'c mut Option<Context<'v, 'v>>,
    schema: &Schema,
    value: &'v Value,
    old: Option<&'v Value>,
) -> &'c Context<'v, 'v> {
    slow.get_or_insert_with(|| {
        let mut cx = Context::with_env(ENV.clone());
        cx.add_variable_as_val("self", to_val(value, Some(schema)));
        if let Some(o) = old {
            cx.add_variable_as_val("oldSelf", to_val(o, Some(schema)));
        }
        cx
    })
}

/// How kube-apiserver shows the value a rule failed on: scalars as themselves, others by type.
pub fn shown(v: &Value) -> Value {
    match v {
        Value::Object(_) => "object".into(),
        Value::Array(_) => "array".into(),
        other => other.clone(),
    }
}

pub(super) const RESERVED: &[&str] = &[
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

/// A JSON value as a CEL value typed by its schema, borrowing its strings: integers of
/// `number` fields are doubles, properties escaped, maps (`additionalProperties`) and unknown
/// fields kept as they are.
pub fn to_val<'v>(v: &'v Value, schema: Option<&Schema>) -> Box<dyn Val + 'v> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (schema.map(|s| s.ty), n.as_i64()) {
            (Some(Ty::Number), _) | (_, None) => {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(0.0)))
            }
            (_, Some(i)) => Box::new(CelInt::from(i)),
        },
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(items) => {
            let item = schema.and_then(|s| s.items.as_deref());
            Box::new(CelList::from(
                items.iter().map(|i| to_val(i, item)).collect::<Vec<_>>(),
            ))
        }
        Value::Object(m) => {
            let mut out: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> =
                HashMap::with_capacity(m.len());
            for (k, val) in m {
                let (key, sub) = match schema {
                    Some(s) if !s.properties.is_empty() => {
                        let escaped = escape(k);
                        let key = if escaped == *k {
                            CelMapKey::from(k.as_str())
                        } else {
                            CelMapKey::from(escaped)
                        };
                        (key, s.properties.get(k.as_str()))
                    }
                    Some(s) => (CelMapKey::from(k.as_str()), s.additional.as_deref()),
                    None => (CelMapKey::from(k.as_str()), None),
                };
                out.insert(key, to_val(val, sub));
            }
            Box::new(CelMap::from(out))
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
        let plain = Schema::any();
        check_all(
            std::slice::from_ref(r),
            &plain,
            &v,
            old.as_ref(),
            &Path::Root("spec"),
            &mut errs,
        );
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
        assert!(run(&r, json!({"a": "1s", "b": "1m", "namespace": "n"}), None).is_empty());
        let mut obj = Schema::any();
        obj.properties.insert("namespace".into(), Schema::any());
        let rules = std::slice::from_ref(&r);
        let mut errs = Vec::new();
        check_all(
            rules,
            &obj,
            &json!({"a": "1s", "b": "1m", "namespace": "n"}),
            None,
            &Path::Root(""),
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        check_all(
            rules,
            &obj,
            &json!({"a": "2m", "b": "1m", "namespace": "n"}),
            None,
            &Path::Root(""),
            &mut errs,
        );
        assert_eq!(errs.len(), 1);
        // Patterns: compiled with the rule (a bad one refused there), or at run time.
        let r = rule(json!({"rule": "self.a.matches('^[0-9]+s$') && self.b.matches(self.p)"}));
        assert!(run(&r, json!({"a": "1s", "b": "xy", "p": "^x"}), None).is_empty());
        assert_eq!(
            run(&r, json!({"a": "1m", "b": "xy", "p": "^x"}), None).len(),
            1
        );
        assert!(Rule::compile(&json!({"rule": "self.a.matches('(')"})).is_err());
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
    fn nested_comprehensions_over_unbounded_lists_cost_too_much() {
        let list = |max: Option<u64>, item: Value| {
            let mut errs = Vec::new();
            let mut v = json!({"type": "array", "items": item});
            if let Some(m) = max {
                v["maxItems"] = json!(m);
            }
            let s = Schema::compile(
                &json!({"type": "object", "properties": {"l": v}}),
                "",
                &mut errs,
            );
            assert!(errs.is_empty(), "{errs:?}");
            s
        };
        let item = json!({"type": "object", "properties": {"name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}}}});
        let nested = rule(json!({"rule": "self.l.all(a, self.l.exists_one(b, a.name == b.name))"}));
        assert!(nested.check_cost(&list(Some(64), item.clone())).is_ok());
        let err = nested.check_cost(&list(None, item.clone())).unwrap_err();
        assert!(err.contains("estimated rule cost exceeds budget"), "{err}");
        // One pass over a bounded list is cheap; over a list as long as a request allows, a
        // body of a few steps is already too much (as kube-apiserver estimates it too).
        let one_pass = rule(json!({"rule": "self.l.all(a, a.name.startsWith('x'))"}));
        assert!(one_pass
            .check_cost(&list(Some(10_000), item.clone()))
            .is_ok());
        assert!(one_pass.check_cost(&list(None, item.clone())).is_err());
        // What an item holds bounds the inner loop, not the outer list's bound.
        let inner = rule(json!({"rule": "self.l.all(a, a.tags.all(t, t.size() < 3))"}));
        assert!(inner.check_cost(&list(Some(64), item.clone())).is_err());
        let mut bounded = item.clone();
        bounded["properties"]["tags"]["maxItems"] = json!(8);
        assert!(inner.check_cost(&list(Some(64), bounded)).is_ok());
    }

    /// The fast path and the `cel` crate's interpreter agree on the same rules and values:
    /// the same verdict, or both an error.
    #[test]
    fn the_fast_path_agrees_with_the_interpreter() {
        let value = json!({"a": "xy", "l": [1, 2, 3], "m": {"k": 1, "kk": 2}, "s": "a/b/c",
            "d": "90s", "n": 2, "str_n": "5", "ip": "10.0.0.1", "namespace": "ns",
            "objs": [{"name": "a", "port": 1}, {"name": "b", "port": 2}], "e": []});
        let old = json!({"a": "xy", "l": [1], "n": 1});
        let mut schema = Schema::any();
        for k in value.as_object().unwrap().keys() {
            schema.properties.insert(k.clone(), Schema::any());
        }
        for text in [
            "self.a == 'xy'",
            "self.a != 'xy'",
            "has(self.a) && self.a.startsWith('x')",
            "has(self.zz)",
            "self.l.all(i, i > 0)",
            "self.l.all(i, i > 1)",
            "self.l.exists(i, i == 2)",
            "self.l.exists_one(i, i >= 2)",
            "self.l.exists_one(i, i == 2)",
            "self.l.map(i, i * 2)[1] == 4",
            "self.l.filter(i, i > 1).size() == 2",
            "size(self.l) == 3 && self.l.size() == 3",
            "'k' in self.m",
            "'z' in self.m",
            "2 in self.l",
            "self.m.all(k, k.size() < 3)",
            "self.s.split('/')[0] == 'a'",
            "self.s.substring(2) == 'b/c'",
            "self.s.substring(1, 3) == '/b'",
            "self.s.matches('^a/')",
            "self.s.matches('^b')",
            "self.s.contains('/b/') && self.s.endsWith('c')",
            "duration(self.d) > duration('1m') && duration(self.d) < duration('2m')",
            "self.n + 1 > 2 ? true : false",
            "self.n - 3 < 0",
            "self.n * 3 == 6 && self.n % 2 == 0",
            "self.n / 0 == 1",
            "self.missing == 1",
            "self.l.all(i, i.x == 1)",
            "!has(self.z) || self.z == 1",
            "self.l[5] == 1",
            "self.l[0] == 1",
            "int(self.str_n) == 5",
            "string(self.n) == '2'",
            "isIP(self.ip) && !isCIDR(self.ip) && !isURL(self.ip)",
            "self.__namespace__ == 'ns'",
            "self.l.exists(i, i / 0 == 1 || i == 2)",
            "self.l.all(i, i == 1 || i / 0 == 0)",
            "self.objs.all(o, self.objs.exists_one(p, p.name == o.name))",
            "self.objs.exists(o, o.port == 2 && o.name == 'b')",
            "self.e.all(x, false)",
            "self.e.size() == 0",
            "self.m.k + self.m['kk'] == 3",
            "self.objs[1].name == 'b'",
            "[1, 2] == [1, 2] && self.l != [1]",
            "self.a.lowerAscii() == 'xy' && self.a.upperAscii() == 'XY'",
            "-self.n == -2",
            "self == oldSelf",
            "self.a == oldSelf.a && self.l != oldSelf.l",
            "oldSelf.n < self.n",
            "self.a + '-' + self.s == 'xy-a/b/c'",
            "self.objs.map(o, o.port).filter(p, p > 1) == [2]",
            "self.l",
            "self.n.startsWith('x')",
            "1 < 'a'",
        ] {
            let r = rule(json!({"rule": text}));
            let fast = r
                .fast
                .as_ref()
                .unwrap_or_else(|| panic!("{text} is not on the fast path"));
            let mut cx = Context::with_env(ENV.clone());
            cx.add_variable_as_val("self", to_val(&value, Some(&schema)));
            cx.add_variable_as_val("oldSelf", to_val(&old, Some(&schema)));
            let slow = match r.program.execute(&cx) {
                Ok(Cel::Bool(b)) => Ok(b),
                Ok(_) => Err(()),
                Err(_) => Err(()),
            };
            let quick = fast.run(&value, Some(&old)).map_err(|_| ());
            assert_eq!(quick, slow, "{text}");
        }
        // What the fast path leaves to the interpreter.
        for text in [
            "self.a.format([1])",
            "b'x' == b'x'",
            "self.?a.orValue('') == 'xy'",
        ] {
            assert!(
                Rule::compile(&json!({"rule": text})).is_ok_and(|r| r.fast.is_none()),
                "{text}"
            );
        }
    }

    #[test]
    fn deep_or_long_rules_are_refused_without_harm() {
        for text in [
            format!("{}true{}", "(".repeat(8000), ")".repeat(8000)),
            format!("{}1", "-(".repeat(5000)) + &")".repeat(5000) + " < 0",
            format!("{}true", "true ? ".repeat(2000) + &"true : ".repeat(0)),
            vec!["self.a"; 100].join(" + ") + " == 0",
        ] {
            let err = Rule::compile(&json!({"rule": text})).err();
            assert_eq!(err.map(|e| e.0), Some("rule"), "{}", &text[..40]);
        }
        let long = format!("{} || true", "false || ".repeat(2000));
        assert!(Rule::compile(&json!({"rule": long}))
            .unwrap_err()
            .1
            .contains("Too long"));
        // Nesting within the limit still compiles.
        assert!(Rule::compile(
            &json!({"rule": format!("{}true{}", "(".repeat(20), ")".repeat(20))})
        )
        .is_ok());
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("namespace"), "__namespace__");
        assert_eq!(escape("a-b.c/d"), "a__dash__b__dot__c__slash__d");
        assert_eq!(escape("__x"), "__underscores__x");
        assert_eq!(escape("plain"), "plain");
    }
}
