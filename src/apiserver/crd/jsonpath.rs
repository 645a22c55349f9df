//! The JSONPath of `additionalPrinterColumns`, as kubectl reads it: fields (`.a.b`,
//! `['a.b']`), indices (`[0]`), wildcards (`[*]`) and equality filters
//! (`[?(@.type=="Ready")]`).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// Items whose value at the path equals the literal.
    Filter(Vec<String>, Value),
}

#[derive(Clone, Debug, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

fn field_name(s: &str) -> usize {
    s.find(['.', '[']).unwrap_or(s.len())
}

impl JsonPath {
    /// Parses `.spec.x[0]`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let inner = text.trim();
        let inner = inner
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(inner);
        let mut rest = inner.strip_prefix('$').unwrap_or(inner);
        if !rest.starts_with(['.', '[']) {
            return Err(format!("{text:?} must be a JSONPath starting with '.'"));
        }
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = field_name(r);
                if end == 0 {
                    return Err(format!("{text:?} has an empty field name"));
                }
                steps.push(Step::Field(r[..end].to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r
                    .find(']')
                    .ok_or_else(|| format!("{text:?} has an unclosed '['"))?;
                let (body, after) = (&r[..end], &r[end + 1..]);
                steps.push(Self::bracket(body).ok_or_else(|| {
                    format!("{text:?}: unsupported JSONPath expression [{body}]")
                })?);
                rest = after;
            } else {
                return Err(format!("{text:?}: unexpected {rest:?}"));
            }
        }
        Ok(JsonPath { steps })
    }

    fn bracket(body: &str) -> Option<Step> {
        let body = body.trim();
        if body == "*" {
            return Some(Step::All);
        }
        if let Ok(n) = body.parse::<usize>() {
            return Some(Step::Index(n));
        }
        if let Some(q) = body
            .strip_prefix('\'')
            .and_then(|b| b.strip_suffix('\''))
            .or_else(|| body.strip_prefix('"').and_then(|b| b.strip_suffix('"')))
        {
            return Some(Step::Field(q.to_string()));
        }
        let cond = body.strip_prefix("?(")?.strip_suffix(')')?;
        let (lhs, rhs) = cond.split_once("==")?;
        let path: Vec<String> = lhs
            .trim()
            .strip_prefix("@.")?
            .split('.')
            .map(str::to_string)
            .collect();
        let rhs = rhs.trim();
        let lit = if let Some(s) = rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            Value::String(s.to_string())
        } else {
            serde_json::from_str(rhs).ok()?
        };
        Some(Step::Filter(path, lit))
    }

    /// Every value the path selects in `v`.
    pub fn find<'a>(&self, v: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![v];
        for step in &self.steps {
            let mut next = Vec::new();
            for c in cur {
                match step {
                    Step::Field(f) => next.extend(c.get(f)),
                    Step::Index(n) => next.extend(c.get(*n)),
                    Step::All => match c {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter(path, lit) => {
                        if let Value::Array(a) = c {
                            next.extend(a.iter().filter(|i| {
                                path.iter().try_fold(*i, |x, f| x.get(f)) == Some(lit)
                            }));
                        }
                    }
                }
            }
            cur = next;
        }
        cur
    }

    /// The cell kubectl prints: nothing found is null, one scalar is itself, several values
    /// are joined with commas, arrays and objects are JSON.
    pub fn cell(&self, v: &Value) -> Value {
        let found = self.find(v);
        let text = |x: &Value| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match found.as_slice() {
            [] => Value::Null,
            [one @ (Value::String(_) | Value::Number(_) | Value::Bool(_))] => (*one).clone(),
            many => Value::String(many.iter().map(|x| text(x)).collect::<Vec<_>>().join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_like_kubectl() {
        let obj = json!({
            "spec": {"hostnames": ["a.io", "b.io"], "class": "x", "n": 3},
            "status": {"conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}],
                       "addresses": [{"value": "10.0.0.1"}, {"value": "10.0.0.2"}]}
        });
        let cell = |p: &str| JsonPath::parse(p).unwrap().cell(&obj);
        assert_eq!(cell(".spec.class"), json!("x"));
        assert_eq!(cell(".spec.n"), json!(3));
        assert_eq!(cell(".spec.hostnames"), json!("[\"a.io\",\"b.io\"]"));
        assert_eq!(
            cell(".status.addresses[*].value"),
            json!("10.0.0.1,10.0.0.2")
        );
        assert_eq!(
            cell(".status.conditions[?(@.type==\"Programmed\")].status"),
            json!("False")
        );
        assert_eq!(cell(".status.conditions[0].type"), json!("Accepted"));
        assert_eq!(cell(".spec['class']"), json!("x"));
        assert_eq!(cell(".spec.missing"), Value::Null);
        for bad in ["spec", ".spec[", ".a..b", ".a[?(@.x>1)]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
