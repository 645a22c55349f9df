//! Joining a cluster from another machine (`switchyard node --server URL --token TOKEN
//! --ca-cert-hash sha256:HEX`), as kubeadm and the kubelet's TLS bootstrap do it:
//!
//! 1. the server's CA is taken from its TLS handshake and trusted only if its public key hashes
//!    to the pinned `--ca-cert-hash` (so the token never goes to a server we did not pin);
//! 2. with the bootstrap token, the node asks for a client certificate for
//!    `system:node:NAME` (a CertificateSigningRequest the server approves and signs);
//! 3. the key, the certificate and a kubeconfig using them go to the data directory (0700,
//!    files 0600), and the agent runs as that node.
//!
//! A node that already has a credential uses it; one past 80% of its lifetime gets a new one
//! (as itself, while it is valid; with the token once it has expired), at start and while the
//! agent runs ([`renewing_client`]: the TLS client's certificate is swapped in place). A wrong
//! token, an expired one or a wrong hash is refused with one line, and nothing is written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::apiserver::pki;
use crate::controllers::certificates::KUBELET_CLIENT_SIGNER;

/// How to join: where, with which token and pinned CA.
pub struct Join<'a> {
    pub server: &'a str,
    pub token: Option<&'a str>,
    pub ca_cert_hash: &'a str,
    pub node_name: &'a str,
    pub data_dir: &'a Path,
}

/// Records the chain the server presents and accepts it: the CA is checked against the pin
/// afterwards, and nothing is sent on this connection.
#[derive(Debug, Default)]
struct Capture(Mutex<Vec<Vec<u8>>>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.0.lock().unwrap_or_else(|p| p.into_inner());
        chain.push(end_entity.to_vec());
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The host (for the server name) and host:port (to connect to) of an https URL.
fn authority(server: &str) -> Result<(String, String)> {
    let uri: http::Uri = server.parse().context("--server is not a URL")?;
    if uri.scheme_str() != Some("https") {
        bail!("--server must be an https:// URL");
    }
    let host = uri.host().context("--server has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        format!("{host}:{port}"),
    ))
}

/// The server's CA, from its handshake, if its key hashes to `pin`.
pub async fn pinned_ca(server: &str, pin: &str) -> Result<Vec<u8>> {
    let (host, addr) = authority(server)?;
    let capture = Arc::new(Capture::default());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(capture.clone())
    .with_no_client_auth();
    let name =
        ServerName::try_from(host.clone()).map_err(|_| anyhow!("{host} is not a server name"))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| anyhow!("connecting to {addr} timed out"))?
    .with_context(|| format!("connecting to {addr}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let chain = capture.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut seen = Vec::new();
    for der in chain {
        let hash = pki::spki_hash(&der).unwrap_or_default();
        if hash.eq_ignore_ascii_case(pin) {
            return Ok(der);
        }
        seen.push(hash);
    }
    bail!(
        "the server's CA does not match --ca-cert-hash {pin} (it presented {})",
        seen.join(", ")
    )
}

fn pem(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
        lines.join("\n")
    )
}

/// A certificate's validity, Unix seconds (from, to).
fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    (to > from).then_some((from, to))
}

/// How far through its lifetime a certificate is (0.0 new, 1.0 expired).
fn lifetime_used(cert_pem: &str) -> Option<f64> {
    let (from, to) = validity(cert_pem)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some((now - from) as f64 / (to - from) as f64)
}

/// When a certificate is to be renewed: at 80% of its lifetime.
fn renewal_due(cert_pem: &str) -> Option<std::time::SystemTime> {
    let (from, to) = validity(cert_pem)?;
    let due = from + (to - from) * 4 / 5;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(due.max(0) as u64))
}

/// The client certificate the node presents, swapped in place when it is renewed: new
/// connections present the new one, established ones carry on.
#[derive(Debug)]
struct CurrentCert(arc_swap::ArcSwap<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The node's certificate and key (PEM) from its kubeconfig: the one file written last, so a
/// crash during a renewal leaves a consistent pair.
fn credential(kubeconfig: &Path) -> Result<(String, String)> {
    use base64::Engine;
    let text = std::fs::read_to_string(kubeconfig)?;
    let kc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let user = &kc["users"][0]["user"];
    let pem = |field: &str| -> Result<String> {
        let data = user[field]
            .as_str()
            .with_context(|| format!("no {field} in the node's kubeconfig"))?;
        let b = base64::engine::general_purpose::STANDARD.decode(data)?;
        Ok(String::from_utf8(b)?)
    };
    Ok((pem("client-certificate-data")?, pem("client-key-data")?))
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(rustls::sign::CertifiedKey::new(certs, signer))
}

/// A client for the joined node whose certificate is renewed while it runs, and the task that
/// renews it at 80% of its lifetime (run it next to the agent).
pub async fn renewing_client(
    j: &Join<'_>,
    kubeconfig: &Path,
) -> Result<(kube::Client, impl std::future::Future<Output = ()>)> {
    use kube::client::ConfigExt;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let read = |f: &str| {
        let p = j.data_dir.join(f);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let (cert, key) = credential(kubeconfig)?;
    let current = Arc::new(CurrentCert(arc_swap::ArcSwap::from_pointee(certified_key(
        &cert, &key,
    )?)));
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = current.clone();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(http);
    let client = kube::Client::new(service, config.default_namespace.clone());
    let ca_der = rustls_pemfile::certs(&mut read("ca.crt")?.as_bytes())
        .next()
        .context("no certificate in ca.crt")??
        .to_vec();
    let (server, name, dir) = (
        j.server.to_string(),
        j.node_name.to_string(),
        j.data_dir.to_path_buf(),
    );
    let kubeconfig = kubeconfig.to_path_buf();
    let renewer = client.clone();
    let renew = async move {
        let j = Join {
            server: &server,
            token: None,
            ca_cert_hash: "",
            node_name: &name,
            data_dir: &dir,
        };
        loop {
            let cert = credential(&kubeconfig).map(|c| c.0).unwrap_or_default();
            let wait = renewal_due(&cert)
                .and_then(|due| due.duration_since(std::time::SystemTime::now()).ok())
                .unwrap_or_default()
                .max(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            let renewed = async {
                obtain(&j, renewer.clone(), &ca_der).await?;
                let (cert, key) = credential(&kubeconfig)?;
                current.0.store(Arc::new(certified_key(&cert, &key)?));
                anyhow::Ok(())
            };
            match renewed.await {
                Ok(()) => tracing::info!(node = %name, "node certificate renewed"),
                Err(e) => {
                    tracing::warn!(node = %name, error = %format!("{e:#}"), "renewing the node certificate; will retry");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    };
    Ok((client, renew))
}

/// The node's kubeconfig in `data_dir`, obtained or renewed as needed.
pub async fn node_credential(j: &Join<'_>) -> Result<PathBuf> {
    let kubeconfig = j.data_dir.join("node.kubeconfig");
    let used = credential(&kubeconfig)
        .ok()
        .and_then(|(cert, _)| lifetime_used(&cert));
    match used {
        Some(u) if u < 0.8 && kubeconfig.exists() => return Ok(kubeconfig),
        // Valid but old: renew as the node itself.
        Some(u) if u < 1.0 && kubeconfig.exists() => {
            tracing::info!("the node's certificate is past 80% of its lifetime; renewing it");
            let client = client_from_kubeconfig(&kubeconfig).await?;
            let ca = std::fs::read(j.data_dir.join("ca.crt")).ok();
            let ca_der = ca
                .as_deref()
                .and_then(|c| rustls_pemfile::certs(&mut &c[..]).next()?.ok())
                .map(|c| c.to_vec())
                .context("no ca.crt in the data directory")?;
            return obtain(j, client, &ca_der).await;
        }
        _ => {}
    }
    let token = j.token.ok_or_else(|| {
        anyhow!(
            "no valid node credential in {} and no --token to get one",
            j.data_dir.display()
        )
    })?;
    if crate::apiserver::auth::bootstrap_token_id(token).is_none() {
        bail!("--token is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})");
    }
    let ca_der = pinned_ca(j.server, j.ca_cert_hash).await?;
    let mut config = kube::Config::new(j.server.parse().context("--server is not a URL")?);
    config.root_cert = Some(vec![ca_der.clone()]);
    config.auth_info.token = Some(token.to_string().into());
    let client = kube::Client::try_from(config)?;
    obtain(j, client, &ca_der).await
}

async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Asks for a node certificate with `client`, waits for it, and stores it.
async fn obtain(j: &Join<'_>, client: kube::Client, ca_der: &[u8]) -> Result<PathBuf> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, crate::apiserver::auth::NODES);
    dn.push(DnType::CommonName, format!("system:node:{}", j.node_name));
    params.distinguished_name = dn;
    let request = params.serialize_request(&key)?.pem()?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let name = format!("node-csr-{}-{:08x}", j.node_name, rand::random::<u32>());
    let csr = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 401 => {
                anyhow!("the server refused the token (401 Unauthorized): wrong or expired")
            }
            other => anyhow!("asking for a node certificate: {other}"),
        })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cert = loop {
        let got = api
            .get(&name)
            .await
            .context("reading the certificate request")?;
        let status = got.status.unwrap_or_default();
        if let Some(c) = status.certificate {
            break c.0;
        }
        if let Some(c) = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        {
            bail!(
                "the server {} the certificate request: {}",
                c.type_.to_lowercase(),
                c.message.unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the certificate request {name} was not signed within a minute");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cert = String::from_utf8(cert).context("the certificate is not PEM")?;
    let ca_pem = pem("CERTIFICATE", ca_der);
    let dir = j.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let user = format!("system:node:{}", j.node_name);
    pki::write_secret_file(&dir.join("node.key"), &key.serialize_pem())?;
    pki::write_secret_file(&dir.join("node.crt"), &cert)?;
    pki::write_secret_file(&dir.join("ca.crt"), &ca_pem)?;
    let kubeconfig = dir.join("node.kubeconfig");
    pki::write_secret_file(
        &kubeconfig,
        &pki::cert_kubeconfig(j.server, &ca_pem, &user, &cert, &key.serialize_pem()),
    )?;
    tracing::info!(
        node = j.node_name,
        "node credential stored in {}",
        dir.display()
    );
    Ok(kubeconfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_authorities() {
        assert_eq!(
            authority("https://10.0.0.1:6443").unwrap(),
            ("10.0.0.1".to_string(), "10.0.0.1:6443".to_string())
        );
        assert_eq!(
            authority("https://cp.example").unwrap(),
            ("cp.example".to_string(), "cp.example:443".to_string())
        );
        assert!(authority("http://10.0.0.1:6443").is_err());
    }

    #[test]
    fn renewal_comes_at_four_fifths_of_the_lifetime() {
        let (_, ca) = pki::ca(tempfile::tempdir().unwrap().path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = pki::client_params(
            "system:node:n",
            &["system:nodes"],
            Duration::from_secs(1000),
        )
        .signed_by(&key, &ca)
        .unwrap()
        .pem();
        let (from, to) = validity(&cert).unwrap();
        assert_eq!(
            to - from,
            1100,
            "a tenth of the lifetime before now, for skew"
        );
        let used = lifetime_used(&cert).unwrap();
        assert!((0.08..0.1).contains(&used), "{used}");
        let due = renewal_due(&cert).unwrap();
        let due = due.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(due, from + 880);
    }
}
