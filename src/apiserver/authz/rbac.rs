//! RBAC v1: rules, and the index that answers "may this user do this" from the stored Roles,
//! ClusterRoles and their bindings. The index is rebuilt whole when an RBAC object changes (rare)
//! and read without locks; a check looks up the bindings of the user and of each of its groups
//! (no allocation) and tests their rules.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::apiserver::admission::strings_at;
use crate::apiserver::selectors::{labels_of, LabelSelector};

use super::Attributes;

/// One PolicyRule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub urls: Vec<String>,
}

fn has(list: &[String], x: &str) -> bool {
    list.iter().any(|l| l == "*" || l == x)
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings_at(v, "/verbs"),
            groups: strings_at(v, "/apiGroups"),
            resources: strings_at(v, "/resources"),
            names: strings_at(v, "/resourceNames"),
            urls: strings_at(v, "/nonResourceURLs"),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({"verbs": self.verbs});
        for (k, list) in [
            ("apiGroups", &self.groups),
            ("resources", &self.resources),
            ("resourceNames", &self.names),
            ("nonResourceURLs", &self.urls),
        ] {
            if !list.is_empty() {
                v[k] = serde_json::json!(list);
            }
        }
        v
    }

    /// Whether this rule allows the request `a`.
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        if !has(&self.verbs, a.verb) {
            return false;
        }
        match a.path {
            Some(path) => self.urls.iter().any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            }),
            None => {
                has(&self.groups, a.group)
                    && self.resources.iter().any(|r| resource_matches(r, a))
                    && (self.names.is_empty()
                        || (!a.name.is_empty() && self.names.iter().any(|n| n == a.name)))
            }
        }
    }
}

/// `pods`, `pods/status`, `pods/*`, `*/scale` and `*` as RBAC matches them.
fn resource_matches(rule: &str, a: &Attributes<'_>) -> bool {
    if rule == "*" {
        return true;
    }
    if a.subresource.is_empty() {
        return rule == a.resource;
    }
    match rule.split_once('/') {
        Some((r, s)) => (r == a.resource || r == "*") && (s == a.subresource || s == "*"),
        None => false,
    }
}

/// Rules that apply in one namespace, or cluster-wide (`namespace: None`).
#[derive(Clone, Debug)]
struct Grant {
    namespace: Option<String>,
    rules: Arc<Vec<Rule>>,
}

/// Every RBAC object, indexed by subject.
#[derive(Default)]
pub struct Index {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

/// The RBAC objects the index is built from.
#[derive(Default)]
pub struct Objects {
    pub roles: Vec<Value>,
    pub cluster_roles: Vec<Value>,
    pub role_bindings: Vec<Value>,
    pub cluster_role_bindings: Vec<Value>,
}

fn meta<'a>(o: &'a Value, k: &str) -> &'a str {
    o.pointer(&format!("/metadata/{k}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn rules_of(o: &Value) -> Vec<Rule> {
    o.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// A ClusterRole's rules with its aggregation applied: the union of the rules of every
/// ClusterRole its `aggregationRule` selects (what the aggregation controller writes back).
pub fn aggregated(role: &Value, all: &[Value]) -> Option<Vec<Rule>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    let selectors: Vec<LabelSelector> = selectors
        .iter()
        .filter_map(|s| LabelSelector::from_json(s).ok())
        .collect();
    let mut out: Vec<Rule> = Vec::new();
    for other in all {
        if meta(other, "name") == meta(role, "name") {
            continue;
        }
        let labels = labels_of(other);
        if selectors.iter().any(|s| s.matches(&labels)) {
            for r in rules_of(other) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    Some(out)
}

impl Index {
    pub fn build(o: &Objects) -> Index {
        let cluster: HashMap<&str, Arc<Vec<Rule>>> = o
            .cluster_roles
            .iter()
            .map(|r| {
                let rules = aggregated(r, &o.cluster_roles).unwrap_or_else(|| rules_of(r));
                (meta(r, "name"), Arc::new(rules))
            })
            .collect();
        let roles: HashMap<(&str, &str), Arc<Vec<Rule>>> = o
            .roles
            .iter()
            .map(|r| {
                (
                    (meta(r, "namespace"), meta(r, "name")),
                    Arc::new(rules_of(r)),
                )
            })
            .collect();
        let mut index = Index::default();
        let bindings = o
            .role_bindings
            .iter()
            .map(|b| (b, Some(meta(b, "namespace"))))
            .chain(o.cluster_role_bindings.iter().map(|b| (b, None)));
        for (b, ns) in bindings {
            let kind = b
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let role = b
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let rules = match (kind, ns) {
                ("ClusterRole", _) => cluster.get(role).cloned(),
                ("Role", Some(ns)) => roles.get(&(ns, role)).cloned(),
                _ => None,
            };
            let Some(rules) = rules else { continue };
            let grant = Grant {
                namespace: ns.map(str::to_string),
                rules,
            };
            for s in b
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = s.get("name").and_then(Value::as_str).unwrap_or("");
                match s.get("kind").and_then(Value::as_str) {
                    Some("User") => index
                        .users
                        .entry(name.into())
                        .or_default()
                        .push(grant.clone()),
                    Some("Group") => index
                        .groups
                        .entry(name.into())
                        .or_default()
                        .push(grant.clone()),
                    Some("ServiceAccount") => {
                        let sa_ns = s
                            .get("namespace")
                            .and_then(Value::as_str)
                            .or(ns)
                            .unwrap_or("");
                        let user = format!("system:serviceaccount:{sa_ns}:{name}");
                        index.users.entry(user).or_default().push(grant.clone());
                    }
                    _ => {}
                }
            }
        }
        index
    }

    /// The grants of `a`'s user and groups that apply in `a`'s namespace.
    fn grants<'a>(&'a self, a: &'a Attributes<'_>) -> impl Iterator<Item = &'a Grant> + 'a {
        let user = self.users.get(&a.user.name).into_iter().flatten();
        let groups = a
            .user
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .flatten();
        user.chain(groups).filter(move |g| match &g.namespace {
            None => true,
            Some(ns) => a.path.is_none() && a.namespace == Some(ns.as_str()),
        })
    }

    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        self.grants(a).any(|g| g.rules.iter().any(|r| r.allows(a)))
    }

    /// Whether the rules `a`'s user holds in `a`'s namespace cover every permission in `rules`:
    /// nobody grants what they do not hold.
    pub fn covers(&self, a: &Attributes<'_>, rules: &[Rule]) -> Result<(), String> {
        for rule in rules {
            for verb in &rule.verbs {
                if !rule.urls.is_empty() {
                    for url in &rule.urls {
                        let probe = Attributes {
                            verb,
                            path: Some(url),
                            ..*a
                        };
                        if !self.allows_literally(&probe) {
                            return Err(format!("{verb} on {url}"));
                        }
                    }
                    continue;
                }
                let names: Vec<&str> = if rule.names.is_empty() {
                    vec![""]
                } else {
                    rule.names.iter().map(String::as_str).collect()
                };
                for group in &rule.groups {
                    for resource in &rule.resources {
                        let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
                        for name in &names {
                            let probe = Attributes {
                                verb,
                                group,
                                resource: res,
                                subresource: sub,
                                name,
                                path: None,
                                ..*a
                            };
                            if !self.allows_literally(&probe) {
                                return Err(format!(
                                    "{verb} on {resource} in API group {group:?}{}",
                                    if name.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" named {name}")
                                    }
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Like `allows`, but a `*` asked for is covered only by a `*` held, and a request for no
    /// particular name only by a rule without resourceNames.
    fn allows_literally(&self, a: &Attributes<'_>) -> bool {
        self.grants(a)
            .any(|g| g.rules.iter().any(|r| r.covers_literally(a)))
    }
}

/// Whether the held values `held` cover the asked value `x` (`*` only by `*`).
fn covers(held: &[String], x: &str) -> bool {
    held.iter().any(|h| h == "*" || h == x)
}

/// Whether the held URL pattern `h` covers the asked pattern `u` (`/a/*` covers `/a/b` and
/// `/a/b/*`).
fn url_covers(h: &str, u: &str) -> bool {
    h == "*" || h == u || h.strip_suffix('*').is_some_and(|p| u.starts_with(p))
}

impl Rule {
    fn covers_literally(&self, a: &Attributes<'_>) -> bool {
        if !covers(&self.verbs, a.verb) {
            return false;
        }
        if let Some(u) = a.path {
            return self.urls.iter().any(|h| url_covers(h, u));
        }
        let asked = if a.subresource.is_empty() {
            a.resource.to_string()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let resource = self.resources.iter().any(|h| {
            h == "*"
                || *h == asked
                || (a.resource != "*"
                    && a.subresource != "*"
                    && !a.subresource.is_empty()
                    && resource_matches(h, a))
        });
        covers(&self.groups, a.group)
            && resource
            && (self.names.is_empty()
                || (!a.name.is_empty() && self.names.iter().any(|n| n == a.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::auth::User;
    use serde_json::json;

    fn attrs<'a>(
        user: &'a User,
        verb: &'a str,
        ns: Option<&'a str>,
        res: &'a str,
        sub: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            user,
            verb,
            namespace: ns,
            group: "",
            resource: res,
            subresource: sub,
            name,
            path: None,
        }
    }

    #[test]
    fn bindings_rules_and_coverage() {
        let o = Objects {
            roles: vec![
                json!({"metadata": {"name": "r", "namespace": "a"}, "rules": [
                    {"apiGroups": [""], "resources": ["services", "pods/*"], "verbs": ["get", "list"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["*"]},
                ]}),
            ],
            cluster_roles: vec![
                json!({"metadata": {"name": "urls"}, "rules": [{"nonResourceURLs": ["/healthz", "/api/*"], "verbs": ["get"]}]}),
                json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}}),
                json!({"metadata": {"name": "part", "labels": {"x": "y"}}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
            ],
            role_bindings: vec![
                json!({"metadata": {"name": "b", "namespace": "a"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "sa"}]}),
                json!({"metadata": {"name": "c", "namespace": "b"}, "roleRef": {"kind": "ClusterRole", "name": "agg"}, "subjects": [{"kind": "Group", "name": "g"}]}),
            ],
            cluster_role_bindings: vec![
                json!({"metadata": {"name": "d"}, "roleRef": {"kind": "ClusterRole", "name": "urls"}, "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
            ],
        };
        let idx = Index::build(&o);
        let u = User::new("u", &[]);
        assert!(idx.allows(&attrs(&u, "list", Some("a"), "services", "", "")));
        assert!(!idx.allows(&attrs(&u, "list", Some("b"), "services", "", "")));
        assert!(!idx.allows(&attrs(&u, "delete", Some("a"), "services", "", "x")));
        assert!(idx.allows(&attrs(&u, "get", Some("a"), "pods", "log", "p")));
        assert!(!idx.allows(&attrs(&u, "get", Some("a"), "pods", "", "p")));
        assert!(idx.allows(&attrs(&u, "delete", Some("a"), "configmaps", "", "one")));
        assert!(!idx.allows(&attrs(&u, "delete", Some("a"), "configmaps", "", "two")));
        assert!(!idx.allows(&attrs(&u, "list", Some("a"), "configmaps", "", "")));
        let sa = User::service_account("a", "sa", "");
        assert!(idx.allows(&attrs(&sa, "get", Some("a"), "services", "", "x")));
        // Aggregated through labels; bound in one namespace only.
        let g = User::new("v", &["g"]);
        assert!(idx.allows(&attrs(&g, "get", Some("b"), "secrets", "", "s")));
        assert!(!idx.allows(&attrs(&g, "get", Some("a"), "secrets", "", "s")));
        // Non-resource URLs, for everyone authenticated.
        let path = |p: &'static str| Attributes {
            path: Some(p),
            ..attrs(&g, "get", None, "", "", "")
        };
        assert!(idx.allows(&path("/api/v1")));
        assert!(idx.allows(&path("/healthz")));
        assert!(!idx.allows(&path("/metrics")));
        // Coverage: what u holds in a, and not more.
        let a = attrs(&u, "", Some("a"), "", "", "");
        let rule = |v: serde_json::Value| vec![Rule::from_json(&v)];
        assert!(idx
            .covers(
                &a,
                &rule(json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}))
            )
            .is_ok());
        assert!(idx
            .covers(
                &a,
                &rule(json!({"apiGroups": [""], "resources": ["services"], "verbs": ["*"]}))
            )
            .is_err());
        assert!(idx
            .covers(
                &a,
                &rule(json!({"apiGroups": ["*"], "resources": ["services"], "verbs": ["get"]}))
            )
            .is_err());
        assert!(idx.covers(&a, &rule(json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["update"]}))).is_ok());
        assert!(idx
            .covers(
                &a,
                &rule(json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"]}))
            )
            .is_err());
        assert!(idx
            .covers(
                &a,
                &rule(json!({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}))
            )
            .is_ok());
        let b = attrs(&u, "", Some("b"), "", "", "");
        assert!(idx
            .covers(
                &b,
                &rule(json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}))
            )
            .is_err());
    }
}
