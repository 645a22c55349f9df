//! The Ingress annotations the router understands. They are values, never configuration text:
//! each is parsed into a typed setting, and an annotation outside this list is ignored.
//!
//! | annotation                          | value                              | default        |
//! |-------------------------------------|------------------------------------|----------------|
//! | `switchyard.io/connect-timeout`     | duration (`500ms`, `5s`, `1m`)     | `5s`           |
//! | `switchyard.io/response-timeout`    | duration, to the response headers  | `60s`          |
//! | `switchyard.io/ssl-redirect`        | `true` / `false`                   | `true` for hosts with TLS |
//! | `switchyard.io/load-balance`        | `least-request` / `round-robin`    | `least-request` |

use std::time::Duration;

use super::routes::{Balance, Settings};

pub const PREFIX: &str = "switchyard.io/";
pub const CONNECT_TIMEOUT: &str = "switchyard.io/connect-timeout";
pub const RESPONSE_TIMEOUT: &str = "switchyard.io/response-timeout";
pub const SSL_REDIRECT: &str = "switchyard.io/ssl-redirect";
pub const LOAD_BALANCE: &str = "switchyard.io/load-balance";

/// `250ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 100ms, 2s, 1m)");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// What an Ingress's annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub settings: Settings,
    /// `Some(false)` turns the redirect off for TLS hosts; `Some(true)` turns it on for every
    /// host of the Ingress.
    pub ssl_redirect: Option<bool>,
}

fn positive(key: &str, v: &str) -> Result<Duration, String> {
    match parse_duration(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{key}: must be more than zero")),
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// Parses the `switchyard.io/` annotations; the first bad value is an error naming it.
pub fn parse<'a>(
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for (key, value) in annotations {
        let value = value.trim();
        match key {
            CONNECT_TIMEOUT => out.settings.connect_timeout = positive(key, value)?,
            RESPONSE_TIMEOUT => out.settings.response_timeout = positive(key, value)?,
            SSL_REDIRECT => {
                out.ssl_redirect = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{key}: {value:?} is not \"true\" or \"false\"")),
                })
            }
            LOAD_BALANCE => {
                out.settings.balance = match value {
                    "least-request" => Balance::LeastRequest,
                    "round-robin" => Balance::RoundRobin,
                    _ => {
                        return Err(format!(
                            "{key}: {value:?} is not \"least-request\" or \"round-robin\""
                        ))
                    }
                }
            }
            k if k.starts_with(PREFIX) => {
                return Err(format!(
                    "{k}: unknown annotation (known: {CONNECT_TIMEOUT}, {RESPONSE_TIMEOUT}, {SSL_REDIRECT}, {LOAD_BALANCE})"
                ))
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_and_checked() {
        let p = parse([
            (CONNECT_TIMEOUT, "250ms"),
            (RESPONSE_TIMEOUT, "2m"),
            (SSL_REDIRECT, "false"),
            (LOAD_BALANCE, "round-robin"),
            ("other.io/x", "anything"),
        ])
        .unwrap();
        assert_eq!(p.settings.connect_timeout, Duration::from_millis(250));
        assert_eq!(p.settings.response_timeout, Duration::from_secs(120));
        assert_eq!(p.settings.balance, Balance::RoundRobin);
        assert_eq!(p.ssl_redirect, Some(false));
        for bad in [
            (CONNECT_TIMEOUT, "5"),
            (CONNECT_TIMEOUT, "0s"),
            (RESPONSE_TIMEOUT, "1h"),
            (SSL_REDIRECT, "yes"),
            (LOAD_BALANCE, "random"),
            ("switchyard.io/configuration-snippet", "return 200;"),
        ] {
            let e = parse([bad]).unwrap_err();
            assert!(e.starts_with(bad.0), "{e}");
        }
        assert!(parse_duration("99999999999999999999m").is_err());
    }
}
