//! Authentication: who a request comes from. A request proves one identity, tried in this order:
//! a client certificate signed by our CA (the user is its CN, the groups its O values — how nodes
//! are identified, `system:node:NAME` in `system:nodes`), or a bearer token: the admin token
//! (`admin` in `system:masters`), a ServiceAccount token we signed ([`tokens`]), or a bootstrap
//! token (`[a-z0-9]{6}.[a-z0-9]{16}`) held in a Secret in `kube-system`, as kubeadm makes them.
//! Nothing else is trusted: a request with none of these is 401.
//!
//! The admin may act as another user with the `Impersonate-User` / `Impersonate-Group` headers;
//! anyone else needs the `impersonate` verb on users, groups or serviceaccounts.

pub mod tokens;

use std::collections::BTreeMap;

use serde_json::{json, Value};

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const NODES: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user with `groups` and `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> User {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        User {
            name: name.into(),
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    pub fn admin() -> User {
        User::new("admin", &[MASTERS])
    }

    /// The ServiceAccount `ns/name` (with uid `uid`) as a user.
    pub fn service_account(ns: &str, name: &str, uid: &str) -> User {
        let mut u = User::new(
            format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"),
            &[SERVICE_ACCOUNTS, &format!("{SERVICE_ACCOUNTS}:{ns}")],
        );
        u.uid = uid.to_string();
        u
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// Members of `system:masters` are allowed everything, as in kube-apiserver.
    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// The node name, for a node's identity (`system:node:NAME` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        self.name
            .strip_prefix(NODE_PREFIX)
            .filter(|n| !n.is_empty() && self.in_group(NODES))
    }

    /// The ServiceAccount (namespace, name) this user is, if it is one.
    pub fn service_account_of(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
            .split_once(':')
    }

    /// `userInfo` as SelfSubjectReview and SubjectAccessReview spell it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// The user of a verified client certificate: its subject's CN, and its O values as groups.
pub fn from_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    if cn.is_empty() {
        return None;
    }
    let groups: Vec<&str> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    Some(User::new(cn, &groups))
}

/// Whether `token` has the shape of a bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`; its id.
pub fn bootstrap_token_id(token: &str) -> Option<&str> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some(id)
}

/// Impersonation asked for by a request's headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Impersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

impl Impersonation {
    pub fn from_headers(h: &http::HeaderMap) -> Result<Option<Impersonation>, String> {
        let text = |v: &http::HeaderValue| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| "an Impersonate header is not text".to_string())
        };
        let user = h.get("impersonate-user").map(text).transpose()?;
        let groups = h
            .get_all("impersonate-group")
            .iter()
            .map(text)
            .collect::<Result<Vec<_>, _>>()?;
        let uid = h.get("impersonate-uid").map(text).transpose()?;
        if user.is_none() && groups.is_empty() && uid.is_none() {
            return Ok(None);
        }
        if user.as_deref().is_none_or(str::is_empty) {
            return Err("Impersonate-Group and Impersonate-Uid need Impersonate-User".into());
        }
        Ok(Some(Impersonation { user, groups, uid }))
    }

    /// The user to act as.
    pub fn user(&self) -> User {
        let name = self.user.clone().unwrap_or_default();
        let groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        let mut u = match name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|r| r.split_once(':'))
        {
            // A ServiceAccount gets its groups, as kube-apiserver adds them.
            Some((ns, sa)) if groups.is_empty() => User::service_account(ns, sa, ""),
            _ => User::new(name.clone(), &groups),
        };
        if let Some(uid) = &self.uid {
            u.uid = uid.clone();
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        let n = User::new("system:node:n1", &[NODES]);
        assert_eq!(n.node_name(), Some("n1"));
        assert!(n.in_group(AUTHENTICATED));
        assert_eq!(User::new("system:node:n1", &[]).node_name(), None);
        let sa = User::service_account("ns", "app", "u1");
        assert_eq!(sa.service_account_of(), Some(("ns", "app")));
        assert_eq!(
            sa.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        assert!(User::admin().is_master());
    }

    #[test]
    fn bootstrap_token_shape() {
        assert_eq!(
            bootstrap_token_id("abcdef.0123456789abcdef"),
            Some("abcdef")
        );
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdeg.",
            "",
        ] {
            assert_eq!(bootstrap_token_id(bad), None, "{bad}");
        }
    }
}
