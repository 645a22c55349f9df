//! A fast path for CEL rules: the `cel` crate's parsed (and macro-expanded) expression compiled
//! into a tree evaluated directly on the object's JSON, borrowing it — no conversion of the
//! object, variables in slots, no allocation for field access, comparisons and most functions.
//!
//! It covers what CRD rules use most (field access and `has`, comprehensions, logic with CEL's
//! error-absorbing `&&`/`||`, comparisons, arithmetic with overflow checks, strings, `size`,
//! `in`, indexing, durations, `matches`, `isIP`/`isCIDR`/`isURL`). A rule using anything else is
//! not compiled here ([`Fast::compile`] answers `None`) and runs on the `cel` crate's
//! interpreter, which stays the reference: the tests run both on the same rules and values.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use cel::common::ast::{CallExpr, ComprehensionExpr, Expr, LiteralValue};
use cel::IdedExpr;
use regex::Regex;
use serde_json::Value;

/// A value while a rule runs: scalars, the object's own lists and maps (borrowed), and lists
/// the rule builds.
#[derive(Clone, Debug)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
    /// A list or map of the object.
    Json(&'a Value),
    List(Rc<Vec<V<'a>>>),
    /// Nanoseconds.
    Duration(i128),
    /// A comprehension's accumulator that holds an error (CEL's `&&` and `||` may still
    /// absorb it); reading it is that error.
    Error(Rc<str>),
}

type R<'a> = Result<V<'a>, String>;

impl<'a> V<'a> {
    fn of(v: &'a Value) -> V<'a> {
        match v {
            Value::Null => V::Null,
            Value::Bool(b) => V::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => V::Int(i),
                (None, Some(u)) => V::UInt(u),
                _ => V::Double(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => V::Str(Cow::Borrowed(s)),
            other => V::Json(other),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            V::Null => "null_type",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::UInt(_) => "uint",
            V::Double(_) => "double",
            V::Str(_) => "string",
            V::Json(Value::Object(_)) => "map",
            V::Json(_) | V::List(_) => "list",
            V::Duration(_) => "google.protobuf.Duration",
            V::Error(_) => "error",
        }
    }

    fn bool(&self) -> Result<bool, String> {
        match self {
            V::Bool(b) => Ok(*b),
            other => Err(format!(
                "no such overload: expected bool, got {}",
                other.type_name()
            )),
        }
    }

    /// The items of a list (or the keys of a map, for comprehensions and `in`).
    fn items(&self) -> Result<Vec<V<'a>>, String> {
        match self {
            V::Json(Value::Array(a)) => Ok(a.iter().map(V::of).collect()),
            V::Json(Value::Object(m)) => Ok(m
                .keys()
                .map(|k| V::Str(Cow::Borrowed(k.as_str())))
                .collect()),
            V::List(l) => Ok(l.as_ref().clone()),
            other => Err(format!("cannot iterate over {}", other.type_name())),
        }
    }

    fn str(&self) -> Result<&str, String> {
        match self {
            V::Str(s) => Ok(s),
            other => Err(format!(
                "no such overload: expected string, got {}",
                other.type_name()
            )),
        }
    }

    fn int(&self) -> Result<i64, String> {
        match self {
            V::Int(i) => Ok(*i),
            other => Err(format!(
                "no such overload: expected int, got {}",
                other.type_name()
            )),
        }
    }
}

/// A property name as written in a rule, unescaped back to the object's key.
pub(super) fn unescape(name: &str) -> String {
    if let Some(inner) = name.strip_prefix("__").and_then(|n| n.strip_suffix("__")) {
        if super::cel::RESERVED.contains(&inner) {
            return inner.to_string();
        }
    }
    name.replace("__underscores__", "\u{0}")
        .replace("__dot__", ".")
        .replace("__dash__", "-")
        .replace("__slash__", "/")
        .replace('\u{0}', "__")
}

/// Numbers compare across int, uint and double, as CEL's heterogeneous comparisons do.
fn num(v: &V) -> Option<f64> {
    match v {
        V::Int(i) => Some(*i as f64),
        V::UInt(u) => Some(*u as f64),
        V::Double(d) => Some(*d),
        _ => None,
    }
}

fn eq(a: &V<'_>, b: &V<'_>) -> Result<bool, String> {
    Ok(match (a, b) {
        (V::Null, V::Null) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Duration(x), V::Duration(y)) => x == y,
        (V::Int(x), V::Int(y)) => x == y,
        (x, y) if num(x).is_some() && num(y).is_some() => num(x) == num(y),
        (V::Json(Value::Object(x)), V::Json(Value::Object(y))) => {
            x.len() == y.len()
                && x.iter().all(|(k, xv)| {
                    y.get(k)
                        .is_some_and(|yv| eq(&V::of(xv), &V::of(yv)).unwrap_or(false))
                })
        }
        (x, y) if is_list(x) && is_list(y) => {
            let (xs, ys) = (x.items()?, y.items()?);
            xs.len() == ys.len() && xs.iter().zip(&ys).all(|(p, q)| eq(p, q).unwrap_or(false))
        }
        _ => false,
    })
}

fn is_list(v: &V) -> bool {
    matches!(v, V::List(_) | V::Json(Value::Array(_)))
}

fn compare(a: &V, b: &V) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (V::Str(x), V::Str(y)) => Ok(x.cmp(y)),
        (V::Duration(x), V::Duration(y)) => Ok(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Ok(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Ok(x.cmp(y)),
        (x, y) => match (num(x), num(y)) {
            (Some(p), Some(q)) => p
                .partial_cmp(&q)
                .ok_or_else(|| "NaN is not ordered".to_string()),
            _ => Err(format!(
                "no such overload: {} < {}",
                x.type_name(),
                y.type_name()
            )),
        },
    }
}

/// Go's time.ParseDuration, in nanoseconds.
fn parse_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut any = false;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (unit, scale) = [
            ("ns", 1e0),
            ("us", 1e3),
            ("µs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 6e10),
            ("h", 3.6e12),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())?;
        rest = &rest[unit.len()..];
        total += n * scale;
        any = true;
    }
    any.then_some(if neg { -total } else { total } as i128)
}

/// One compiled node.
#[derive(Debug)]
enum Node {
    Lit(Lit),
    Slot(usize),
    Select(Box<Node>, String, String),
    Has(Box<Node>, String, String),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    NotStrictlyFalse(Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    Comp(Box<Comp>),
    List(Vec<Node>),
    Matches(Box<Node>, Arc<Regex>),
}

#[derive(Debug)]
enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

#[derive(Debug)]
struct Comp {
    range: Node,
    iter: usize,
    accu: usize,
    init: Node,
    cond: Node,
    step: Node,
    result: Node,
}

#[derive(Clone, Copy, Debug)]
enum Func {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Neg,
    Index,
    In,
    Size,
    Contains,
    StartsWith,
    EndsWith,
    Split,
    Substring,
    LowerAscii,
    UpperAscii,
    Trim,
    IsIp,
    IsCidr,
    IsUrl,
    Duration,
    Int,
    String,
}

/// A rule compiled for the fast path.
#[derive(Debug)]
pub struct Fast {
    root: Node,
    slots: usize,
}

struct Compiler<'p> {
    names: Vec<String>,
    patterns: &'p dyn Fn(&str) -> Option<Arc<Regex>>,
}

impl Compiler<'_> {
    fn node(&mut self, e: &IdedExpr) -> Option<Node> {
        Some(match &e.expr {
            Expr::Literal(l) => Node::Lit(match l {
                LiteralValue::Null => Lit::Null,
                LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
                LiteralValue::Int(i) => Lit::Int(*i.inner()),
                LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
                LiteralValue::Double(d) => Lit::Double(*d.inner()),
                LiteralValue::String(s) => Lit::Str(s.inner().to_string()),
                LiteralValue::Bytes(_) => return None,
            }),
            Expr::Ident(name) => {
                let i = self.names.iter().rposition(|n| n == name)?;
                Node::Slot(i)
            }
            Expr::Select(s) => {
                let operand = Box::new(self.node(&s.operand)?);
                let (raw, key) = (s.field.clone(), unescape(&s.field));
                if s.test {
                    Node::Has(operand, key, raw)
                } else {
                    Node::Select(operand, key, raw)
                }
            }
            Expr::List(l) if l.optional_indices.is_empty() => Node::List(
                l.elements
                    .iter()
                    .map(|x| self.node(x))
                    .collect::<Option<_>>()?,
            ),
            Expr::Comprehension(c) => self.comprehension(c)?,
            Expr::Call(c) => self.call(c)?,
            _ => return None,
        })
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Option<Node> {
        if c.iter_var2.is_some() {
            return None;
        }
        let range = self.node(&c.iter_range)?;
        let init = self.node(&c.accu_init)?;
        let before = self.names.len();
        let accu = self.slot_new(&c.accu_var);
        let iter = self.slot_new(&c.iter_var);
        let cond = self.node(&c.loop_cond)?;
        let step = self.node(&c.loop_step)?;
        let result = self.node(&c.result)?;
        // The names go out of scope; their slots stay reserved.
        for n in &mut self.names[before..] {
            n.clear();
        }
        Some(Node::Comp(Box::new(Comp {
            range,
            iter,
            accu,
            init,
            cond,
            step,
            result,
        })))
    }

    fn slot_new(&mut self, name: &str) -> usize {
        self.names.push(name.to_string());
        self.names.len() - 1
    }

    fn call(&mut self, c: &CallExpr) -> Option<Node> {
        let mut args: Vec<Node> = Vec::new();
        if let Some(t) = &c.target {
            args.push(self.node(t)?);
        }
        for a in &c.args {
            args.push(self.node(a)?);
        }
        let two = |mut args: Vec<Node>| -> Option<(Box<Node>, Box<Node>)> {
            let b = args.pop()?;
            let a = args.pop()?;
            args.is_empty().then(|| (Box::new(a), Box::new(b)))
        };
        let func = match (c.func_name.as_str(), args.len()) {
            ("_&&_", 2) => return two(args).map(|(a, b)| Node::And(a, b)),
            ("_||_", 2) => return two(args).map(|(a, b)| Node::Or(a, b)),
            ("!_", 1) => return args.pop().map(|a| Node::Not(Box::new(a))),
            ("@not_strictly_false", 1) => {
                return args.pop().map(|a| Node::NotStrictlyFalse(Box::new(a)))
            }
            ("_?_:_", 3) => {
                let e = args.pop()?;
                let t = args.pop()?;
                let cnd = args.pop()?;
                return Some(Node::Cond(Box::new(cnd), Box::new(t), Box::new(e)));
            }
            (super::cel::MATCHES, 2) | ("matches", 2) => {
                if let [_, Node::Lit(Lit::Str(p))] = args.as_slice() {
                    let re = (self.patterns)(p)?;
                    let s = args.into_iter().next()?;
                    return Some(Node::Matches(Box::new(s), re));
                }
                return None;
            }
            ("_==_", 2) => Func::Eq,
            ("_!=_", 2) => Func::Ne,
            ("_<_", 2) => Func::Lt,
            ("_<=_", 2) => Func::Le,
            ("_>_", 2) => Func::Gt,
            ("_>=_", 2) => Func::Ge,
            ("_+_", 2) => Func::Add,
            ("_-_", 2) => Func::Sub,
            ("_*_", 2) => Func::Mul,
            ("_/_", 2) => Func::Div,
            ("_%_", 2) => Func::Mod,
            ("-_", 1) => Func::Neg,
            ("_[_]", 2) => Func::Index,
            ("@in", 2) => Func::In,
            ("size", 1) => Func::Size,
            ("contains", 2) => Func::Contains,
            ("startsWith", 2) => Func::StartsWith,
            ("endsWith", 2) => Func::EndsWith,
            ("split", 2) => Func::Split,
            ("substring", 2 | 3) => Func::Substring,
            ("lowerAscii", 1) => Func::LowerAscii,
            ("upperAscii", 1) => Func::UpperAscii,
            ("trim", 1) => Func::Trim,
            ("isIP", 1) => Func::IsIp,
            ("isCIDR", 1) => Func::IsCidr,
            ("isURL", 1) => Func::IsUrl,
            ("duration", 1) => Func::Duration,
            ("int", 1) => Func::Int,
            ("string", 1) => Func::String,
            _ => return None,
        };
        Some(Node::Call(func, args))
    }
}

impl Fast {
    /// Compiles `e` for the fast path, or `None` when it uses something only the `cel` crate
    /// runs. `patterns` finds the compiled regular expression of a literal pattern.
    pub fn compile(e: &IdedExpr, patterns: &dyn Fn(&str) -> Option<Arc<Regex>>) -> Option<Fast> {
        let mut c = Compiler {
            names: vec!["self".to_string(), "oldSelf".to_string()],
            patterns,
        };
        let root = c.node(e)?;
        Some(Fast {
            root,
            slots: c.names.len(),
        })
    }

    /// Runs the rule: `Ok(true)` when it holds, `Ok(false)` when it fails, an error when it
    /// cannot be evaluated or is not a boolean.
    pub fn run<'a>(&'a self, me: &'a Value, old: Option<&'a Value>) -> Result<bool, String> {
        let mut slots: Vec<V> = vec![V::Null; self.slots];
        slots[0] = V::of(me);
        if let Some(o) = old {
            slots[1] = V::of(o);
        }
        match eval(&self.root, &mut slots)? {
            V::Bool(b) => Ok(b),
            other => Err(format!("evaluated to {}, not a boolean", other.type_name())),
        }
    }
}

fn field<'a>(v: &V<'a>, key: &str, raw: &str) -> Option<Option<V<'a>>> {
    match v {
        V::Json(Value::Object(m)) => Some(m.get(key).or_else(|| m.get(raw)).map(V::of)),
        _ => None,
    }
}

fn eval<'a>(n: &'a Node, slots: &mut Vec<V<'a>>) -> R<'a> {
    match n {
        Node::Lit(l) => Ok(match l {
            Lit::Null => V::Null,
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::UInt(u) => V::UInt(*u),
            Lit::Double(d) => V::Double(*d),
            Lit::Str(s) => V::Str(Cow::Borrowed(s)),
        }),
        Node::Slot(i) => match &slots[*i] {
            V::Error(e) => Err(e.to_string()),
            v => Ok(v.clone()),
        },
        Node::Select(o, key, raw) => {
            let v = eval(o, slots)?;
            match field(&v, key, raw) {
                Some(Some(x)) => Ok(x),
                Some(None) => Err(format!("no such key: {raw}")),
                None => Err(format!(
                    "type '{}' does not support field selection",
                    v.type_name()
                )),
            }
        }
        Node::Has(o, key, raw) => {
            let v = eval(o, slots)?;
            match field(&v, key, raw) {
                Some(found) => Ok(V::Bool(found.is_some())),
                None => Err(format!("invalid type for has(): {}", v.type_name())),
            }
        }
        Node::And(a, b) => {
            let x = eval(a, slots).and_then(|v| v.bool());
            if x == Ok(false) {
                return Ok(V::Bool(false));
            }
            let y = eval(b, slots).and_then(|v| v.bool());
            match (x, y) {
                (_, Ok(false)) => Ok(V::Bool(false)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(V::Bool(true)),
            }
        }
        Node::Or(a, b) => {
            let x = eval(a, slots).and_then(|v| v.bool());
            if x == Ok(true) {
                return Ok(V::Bool(true));
            }
            let y = eval(b, slots).and_then(|v| v.bool());
            match (x, y) {
                (_, Ok(true)) => Ok(V::Bool(true)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(V::Bool(false)),
            }
        }
        Node::Not(a) => Ok(V::Bool(!eval(a, slots)?.bool()?)),
        Node::NotStrictlyFalse(a) => Ok(V::Bool(!matches!(eval(a, slots), Ok(V::Bool(false))))),
        Node::Cond(c, t, e) => {
            if eval(c, slots)?.bool()? {
                eval(t, slots)
            } else {
                eval(e, slots)
            }
        }
        Node::List(items) => {
            let vals = items
                .iter()
                .map(|i| eval(i, slots))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(V::List(Rc::new(vals)))
        }
        Node::Matches(s, re) => {
            let v = eval(s, slots)?;
            Ok(V::Bool(re.is_match(v.str()?)))
        }
        Node::Comp(c) => {
            let range = eval(&c.range, slots)?;
            let n = match &range {
                V::Json(Value::Array(a)) => a.len(),
                V::List(l) => l.len(),
                V::Json(Value::Object(m)) => m.len(),
                other => return Err(format!("cannot iterate over {}", other.type_name())),
            };
            let mut keys = match &range {
                V::Json(Value::Object(m)) => Some(m.keys()),
                _ => None,
            };
            let mut accu = eval(&c.init, slots)?;
            for i in 0..n {
                let item = match (&range, keys.as_mut()) {
                    (V::Json(Value::Array(a)), _) => V::of(&a[i]),
                    (V::List(l), _) => l[i].clone(),
                    (_, Some(k)) => V::Str(Cow::Borrowed(k.next().map_or("", String::as_str))),
                    _ => V::Null,
                };
                slots[c.accu] = accu;
                slots[c.iter] = item;
                if !eval(&c.cond, slots)?.bool()? {
                    accu = std::mem::replace(&mut slots[c.accu], V::Null);
                    break;
                }
                accu = eval(&c.step, slots).unwrap_or_else(|e| V::Error(e.into()));
            }
            slots[c.accu] = accu;
            eval(&c.result, slots)
        }
        Node::Call(f, args) => {
            // At most three arguments (the compiler takes no more): no allocation.
            let mut vals: [V<'a>; 3] = [V::Null, V::Null, V::Null];
            for (slot, a) in vals.iter_mut().zip(args) {
                *slot = eval(a, slots)?;
            }
            call(*f, &mut vals[..args.len()])
        }
    }
}

fn overflow(what: &str) -> String {
    format!("{what}: integer overflow")
}

fn call<'a>(f: Func, a: &mut [V<'a>]) -> R<'a> {
    let b = |x: bool| Ok(V::Bool(x));
    match f {
        Func::Eq => b(eq(&a[0], &a[1])?),
        Func::Ne => b(!eq(&a[0], &a[1])?),
        Func::Lt => b(compare(&a[0], &a[1])?.is_lt()),
        Func::Le => b(compare(&a[0], &a[1])?.is_le()),
        Func::Gt => b(compare(&a[0], &a[1])?.is_gt()),
        Func::Ge => b(compare(&a[0], &a[1])?.is_ge()),
        Func::Add => match (&a[0], &a[1]) {
            (V::Int(x), V::Int(y)) => x
                .checked_add(*y)
                .map(V::Int)
                .ok_or_else(|| overflow("addition")),
            (V::UInt(x), V::UInt(y)) => x
                .checked_add(*y)
                .map(V::UInt)
                .ok_or_else(|| overflow("addition")),
            (V::Double(x), V::Double(y)) => Ok(V::Double(x + y)),
            (V::Str(x), V::Str(y)) => Ok(V::Str(Cow::Owned(format!("{x}{y}")))),
            (V::Duration(x), V::Duration(y)) => Ok(V::Duration(x + y)),
            (x, y) if is_list(x) && is_list(y) => {
                let mut l = x.items()?;
                l.extend(y.items()?);
                Ok(V::List(Rc::new(l)))
            }
            (x, y) => Err(format!(
                "no such overload: {} + {}",
                x.type_name(),
                y.type_name()
            )),
        },
        Func::Sub => match (&a[0], &a[1]) {
            (V::Int(x), V::Int(y)) => x
                .checked_sub(*y)
                .map(V::Int)
                .ok_or_else(|| overflow("subtraction")),
            (V::UInt(x), V::UInt(y)) => x
                .checked_sub(*y)
                .map(V::UInt)
                .ok_or_else(|| overflow("subtraction")),
            (V::Double(x), V::Double(y)) => Ok(V::Double(x - y)),
            (V::Duration(x), V::Duration(y)) => Ok(V::Duration(x - y)),
            (x, y) => Err(format!(
                "no such overload: {} - {}",
                x.type_name(),
                y.type_name()
            )),
        },
        Func::Mul => match (&a[0], &a[1]) {
            (V::Int(x), V::Int(y)) => x
                .checked_mul(*y)
                .map(V::Int)
                .ok_or_else(|| overflow("multiplication")),
            (V::UInt(x), V::UInt(y)) => x
                .checked_mul(*y)
                .map(V::UInt)
                .ok_or_else(|| overflow("multiplication")),
            (V::Double(x), V::Double(y)) => Ok(V::Double(x * y)),
            (x, y) => Err(format!(
                "no such overload: {} * {}",
                x.type_name(),
                y.type_name()
            )),
        },
        Func::Div | Func::Mod => match (&a[0], &a[1]) {
            (V::Int(_), V::Int(0)) | (V::UInt(_), V::UInt(0)) => Err("division by zero".into()),
            (V::Int(x), V::Int(y)) => match f {
                Func::Div => x.checked_div(*y),
                _ => x.checked_rem(*y),
            }
            .map(V::Int)
            .ok_or_else(|| overflow("division")),
            (V::UInt(x), V::UInt(y)) => {
                Ok(V::UInt(if matches!(f, Func::Div) { x / y } else { x % y }))
            }
            (V::Double(x), V::Double(y)) if matches!(f, Func::Div) => Ok(V::Double(x / y)),
            (x, y) => Err(format!(
                "no such overload: {} / {}",
                x.type_name(),
                y.type_name()
            )),
        },
        Func::Neg => match &a[0] {
            V::Int(x) => x
                .checked_neg()
                .map(V::Int)
                .ok_or_else(|| overflow("negation")),
            V::Double(x) => Ok(V::Double(-x)),
            V::Duration(x) => Ok(V::Duration(-x)),
            x => Err(format!("no such overload: -{}", x.type_name())),
        },
        Func::Index => match (&a[0], &a[1]) {
            (V::Json(Value::Object(m)), V::Str(k)) => m
                .get(k.as_ref())
                .map(V::of)
                .ok_or_else(|| format!("no such key: {k}")),
            (l, i) if is_list(l) => {
                let i = match i {
                    V::Int(i) => *i,
                    V::UInt(u) => i64::try_from(*u).unwrap_or(i64::MAX),
                    V::Double(d) if d.fract() == 0.0 => *d as i64,
                    other => return Err(format!("no such overload: list[{}]", other.type_name())),
                };
                let items = match l {
                    V::Json(Value::Array(x)) => {
                        return usize::try_from(i)
                            .ok()
                            .and_then(|i| x.get(i))
                            .map(V::of)
                            .ok_or_else(|| format!("index out of bounds: {i}"))
                    }
                    other => other.items()?,
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| items.into_iter().nth(i))
                    .ok_or_else(|| format!("index out of bounds: {i}"))
            }
            (x, y) => Err(format!(
                "no such overload: {}[{}]",
                x.type_name(),
                y.type_name()
            )),
        },
        Func::In => {
            let (x, c) = (&a[0], &a[1]);
            match c {
                V::Json(Value::Object(m)) => {
                    b(matches!(x, V::Str(k) if m.contains_key(k.as_ref())))
                }
                c => {
                    for i in c.items()? {
                        if eq(x, &i)? {
                            return b(true);
                        }
                    }
                    b(false)
                }
            }
        }
        Func::Size => Ok(V::Int(match &a[0] {
            V::Str(s) => s.chars().count() as i64,
            V::Json(Value::Array(x)) => x.len() as i64,
            V::Json(Value::Object(m)) => m.len() as i64,
            V::List(l) => l.len() as i64,
            other => return Err(format!("no such overload: size({})", other.type_name())),
        })),
        Func::Contains => b(a[0].str()?.contains(a[1].str()?)),
        Func::StartsWith => b(a[0].str()?.starts_with(a[1].str()?)),
        Func::EndsWith => b(a[0].str()?.ends_with(a[1].str()?)),
        Func::Split => {
            let (s, sep) = (a[0].str()?, a[1].str()?);
            let parts: Vec<V<'a>> = if sep.is_empty() {
                s.chars()
                    .map(|c| V::Str(Cow::Owned(c.to_string())))
                    .collect()
            } else {
                s.split(sep)
                    .map(|p| V::Str(Cow::Owned(p.to_string())))
                    .collect()
            };
            Ok(V::List(Rc::new(parts)))
        }
        Func::Substring => {
            let s = a[0].str()?;
            let n = s.chars().count() as i64;
            let start = a[1].int()?;
            let end = match a.get(2) {
                Some(e) => e.int()?,
                None => n,
            };
            if start < 0 || start > n || end < start || end > n {
                return Err(format!("substring: index out of range: {start}, {end}"));
            }
            Ok(V::Str(Cow::Owned(
                s.chars()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .collect(),
            )))
        }
        Func::LowerAscii => Ok(V::Str(Cow::Owned(a[0].str()?.to_ascii_lowercase()))),
        Func::UpperAscii => Ok(V::Str(Cow::Owned(a[0].str()?.to_ascii_uppercase()))),
        Func::Trim => Ok(V::Str(Cow::Owned(a[0].str()?.trim().to_string()))),
        Func::IsIp => b(super::cel::is_ip_str(a[0].str()?)),
        Func::IsCidr => b(super::cel::is_cidr_str(a[0].str()?)),
        Func::IsUrl => b(super::cel::url_ok(a[0].str()?)),
        Func::Duration => match std::mem::replace(&mut a[0], V::Null) {
            V::Str(s) => parse_duration(&s)
                .map(V::Duration)
                .ok_or_else(|| format!("invalid duration: {s:?}")),
            d @ V::Duration(_) => Ok(d),
            other => Err(format!("no such overload: duration({})", other.type_name())),
        },
        Func::Int => match &a[0] {
            V::Int(i) => Ok(V::Int(*i)),
            V::UInt(u) => i64::try_from(*u).map(V::Int).map_err(|_| overflow("int")),
            V::Double(d) if d.is_finite() && *d >= i64::MIN as f64 && *d < i64::MAX as f64 => {
                Ok(V::Int(d.trunc() as i64))
            }
            V::Str(s) => s
                .parse()
                .map(V::Int)
                .map_err(|_| format!("cannot convert {s:?} to int")),
            other => Err(format!("no such overload: int({})", other.type_name())),
        },
        Func::String => Ok(V::Str(Cow::Owned(match &a[0] {
            V::Str(s) => s.to_string(),
            V::Int(i) => i.to_string(),
            V::UInt(u) => u.to_string(),
            V::Double(d) => d.to_string(),
            V::Bool(x) => x.to_string(),
            other => return Err(format!("no such overload: string({})", other.type_name())),
        }))),
    }
}
