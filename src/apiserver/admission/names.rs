//! The name and label formats of Kubernetes' validation package; each returns the problem, if any,
//! in kube-apiserver's words.

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(too_long(63));
    }
    (!is_label(s)).then(|| LABEL_MSG.to_string())
}

pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some(too_long(253));
    }
    (!s.split('.').all(is_label)).then(|| SUBDOMAIN_MSG.to_string())
}

pub fn dns1035_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(too_long(63));
    }
    (!is_label(s) || !s.as_bytes()[0].is_ascii_lowercase()).then(|| DNS1035_MSG.to_string())
}

fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name`.
pub fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if let Some(e) = dns1123_subdomain(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    if name.len() > 63 {
        return Some(format!("name part {}", too_long(63)));
    }
    (!is_qualified_part(name)).then(|| QUALIFIED_MSG.to_string())
}

pub fn label_value(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(too_long(63));
    }
    (!s.is_empty() && !is_qualified_part(s)).then(|| LABEL_VALUE_MSG.to_string())
}

/// An IANA service name, as a named port must be.
pub fn iana_svc_name(s: &str) -> Option<String> {
    if s.len() > 15 {
        return Some(too_long(15));
    }
    let b = s.as_bytes();
    if b.is_empty()
        || !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Some(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if s.contains("--") {
        return Some("must not contain consecutive hyphens".into());
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)".into());
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Some("must not begin or end with a hyphen".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(dns1123_label("web-1").is_none());
        assert!(dns1123_label("Web").is_some());
        assert!(dns1123_label("-a").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(dns1035_label("1abc").is_some());
        assert!(dns1035_label("abc-1").is_none());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("a..b").is_some());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("/name").is_some());
        assert!(qualified_name("a/b/c").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("v1.2_x").is_none());
        assert!(label_value("-x").is_some());
        assert!(iana_svc_name("http").is_none());
        assert!(iana_svc_name("80").is_some());
        assert!(iana_svc_name("a--b").is_some());
    }
}
