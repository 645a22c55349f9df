//! Targets: URLs parsed and checked before anything runs, and names resolved — through a given
//! DNS server (`--dns`, e.g. the cluster DNS) or the system resolver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use super::LoadError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    /// TCP connect rate.
    Tcp,
    /// DNS queries to a server.
    Dns,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path and query (HTTP).
    pub path: String,
    /// Where connections go (filled by [`Target::resolve`]).
    pub addrs: Vec<SocketAddr>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, LoadError> {
        let bad = |why: &str| LoadError::Url(url.to_string(), why.to_string());
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some("tcp") => Scheme::Tcp,
            Some("dns") => Scheme::Dns,
            Some(other) => {
                return Err(bad(&format!(
                    "unknown scheme {other:?} (http, https, tcp or dns)"
                )))
            }
            None => return Err(bad("no scheme (http://, https://, tcp:// or dns://)")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = match (uri.port_u16(), scheme) {
            (Some(p), _) => p,
            (None, Scheme::Http) => 80,
            (None, Scheme::Https) => 443,
            (None, Scheme::Dns) => 53,
            (None, Scheme::Tcp) => return Err(bad("tcp:// needs a port")),
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Target {
            url: url.to_string(),
            scheme,
            host,
            port,
            path,
            addrs: Vec::new(),
        })
    }

    /// The `Host` header value (the port only when it is not the scheme's default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.scheme, self.port) {
            (Scheme::Http, 80) | (Scheme::Https, 443) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    /// Fills `addrs`: the host itself when it is an address, else its A and AAAA records from
    /// `dns` (or the system resolver).
    pub async fn resolve(&mut self, dns: Option<SocketAddr>) -> Result<(), LoadError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            self.addrs = vec![SocketAddr::new(ip, self.port)];
            return Ok(());
        }
        let ips = match dns {
            Some(server) => {
                let mut ips = Vec::new();
                for rtype in [RecordType::A, RecordType::AAAA] {
                    ips.extend(lookup(server, &self.host, rtype).await?);
                }
                ips
            }
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| LoadError::Resolve(self.host.clone(), e.to_string()))?
                .map(|a| a.ip())
                .collect(),
        };
        if ips.is_empty() {
            return Err(LoadError::Resolve(self.host.clone(), "no addresses".into()));
        }
        self.addrs = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        Ok(())
    }
}

/// A DNS query for `name` of `rtype`, as wire bytes (ID 0, recursion desired).
pub fn query(name: &str, rtype: RecordType) -> Result<Vec<u8>, String> {
    let name = Name::from_ascii(name).map_err(|e| format!("{name:?}: {e}"))?;
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, rtype));
    m.to_vec().map_err(|e| e.to_string())
}

/// The addresses of `name` of `rtype` from `server`.
async fn lookup(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> Result<Vec<IpAddr>, LoadError> {
    let fail = |why: String| LoadError::Resolve(format!("{name} ({rtype}) through {server}"), why);
    let mut q = query(name, rtype).map_err(fail)?;
    let id: u16 = rand::random();
    q[..2].copy_from_slice(&id.to_be_bytes());
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| fail(e.to_string()))?;
    sock.connect(server)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        sock.send(&q).await.map_err(|e| fail(e.to_string()))?;
        let Ok(got) = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await
        else {
            continue;
        };
        let n = got.map_err(|e| fail(e.to_string()))?;
        let msg = Message::from_vec(&buf[..n]).map_err(|e| fail(e.to_string()))?;
        if msg.metadata.id != id {
            continue;
        }
        let code = msg.metadata.response_code;
        if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
            return Err(fail(code.to_string()));
        }
        return Ok(msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect());
    }
    Err(fail("no answer in 3 s".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_or_refused_with_a_reason() {
        let t = Target::parse("http://web.default.svc.cluster.local/api?x=1").unwrap();
        assert_eq!(
            (t.scheme, t.port, t.path.as_str()),
            (Scheme::Http, 80, "/api?x=1")
        );
        assert_eq!(t.authority(), "web.default.svc.cluster.local");
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8443, "/")
        );
        assert_eq!(t.authority(), "[::1]:8443");
        assert_eq!(Target::parse("dns://127.0.0.1").unwrap().port, 53);
        for (bad, why) in [
            ("127.0.0.1:80", "no scheme"),
            ("ftp://x/", "unknown scheme"),
            ("tcp://127.0.0.1", "needs a port"),
            ("http://", "bad URL"),
            ("http://x:0/", "port 0"),
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
