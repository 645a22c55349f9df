//! Credentials kept in the data directory: a CA made on first start, a serving certificate it
//! signs on every start (so the names follow the listen address), the admin and node bearer
//! tokens, and the kubeconfig files that carry them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// What the server needs to serve and authenticate.
pub struct Credentials {
    pub ca_pem: String,
    pub tls: Arc<rustls::ServerConfig>,
    pub admin_token: String,
    /// The ServiceAccount token signing key (P-256, PKCS#8 DER).
    pub sa_key: Vec<u8>,
    /// The CA, to issue client certificates.
    pub ca: Arc<Issuer<'static, KeyPair>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<String, PkiError>,
) -> Result<String, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = make()?;
            write_private(path, &s)?;
            Ok(s)
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "switchyard-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// Loads the credentials in `dir`, creating what is missing, and signs a serving certificate
/// for `hosts` (DNS names or IP addresses).
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<Credentials, PkiError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_pem, issuer) = ca(dir)?;
    ensure_rest(dir, hosts, ca_pem, issuer)
}

/// The CA in `dir` (made on first use): its certificate (PEM) and what signs with it.
pub fn ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), PkiError> {
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = read_or_create(&ca_key_path, || Ok(KeyPair::generate()?.serialize_pem()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Invalid {
        path: ca_key_path.clone(),
        what: e.to_string(),
    })?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_pem = match fs::read_to_string(&ca_cert_path) {
        Ok(s) => s,
        Err(_) => {
            let pem = ca_params().self_signed(&ca_key)?.pem();
            write_private(&ca_cert_path, &pem)?;
            pem
        }
    };
    Ok((ca_pem, Issuer::new(ca_params(), ca_key)))
}

fn ensure_rest(
    dir: &Path,
    hosts: &[String],
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
) -> Result<Credentials, PkiError> {
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "switchyard-apiserver");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    let server_cert = params.signed_by(&server_key, &issuer)?;
    write_private(&dir.join("server.crt"), &server_cert.pem())?;
    write_private(&dir.join("server.key"), &server_key.serialize_pem())?;

    let admin_token = read_or_create(&dir.join("admin-token"), || Ok(new_token()))?
        .trim()
        .to_string();
    let sa_key_path = dir.join("sa.key");
    let sa_key_pem = read_or_create(&sa_key_path, || Ok(KeyPair::generate()?.serialize_pem()))?;
    let sa_key = KeyPair::from_pem(&sa_key_pem)
        .map_err(|e| PkiError::Invalid {
            path: sa_key_path.clone(),
            what: e.to_string(),
        })?
        .serialize_der();

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    // The CA goes with the serving certificate: a joining node pins it by its hash.
    let ca_der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| PkiError::Invalid {
            path: dir.join("ca.crt"),
            what: "no certificate".into(),
        })?;
    let chain = vec![server_cert.der().clone(), ca_der];
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_client_cert_verifier(client_verifier(&ca_pem)?)
    .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Credentials {
        ca_pem,
        tls: Arc::new(tls),
        admin_token,
        sa_key,
        ca: Arc::new(issuer),
    })
}

/// Client certificates are optional (tokens are the other way in); one that is presented must
/// be signed by our CA.
fn client_verifier(
    ca_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Invalid {
            path: PathBuf::from("ca.crt"),
            what: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Invalid {
        path: PathBuf::from("ca.crt"),
        what: e.to_string(),
    })
}

/// The CA hash a joining node pins, as kubeadm prints it: `sha256:` and the hex SHA-256 of the
/// CA certificate's DER SubjectPublicKeyInfo.
pub fn ca_hash(ca_pem: &str) -> Option<String> {
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes()).next()?.ok()?;
    spki_hash(&der)
}

/// `sha256:HEX` of a DER certificate's SubjectPublicKeyInfo.
pub fn spki_hash(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Some(format!(
        "sha256:{}",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// A client certificate for `user` in `groups` (CN and O), signed by the CA, valid for `days`;
/// returns the certificate and its key, PEM.
pub fn client_certificate(
    ca: &Issuer<'static, KeyPair>,
    user: &str,
    groups: &[&str],
    days: i64,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let lifetime = std::time::Duration::from_secs(days.max(0) as u64 * 86_400);
    let cert = client_params(user, groups, lifetime).signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a client certificate for `user` in `groups` says (CN, O, client auth), valid for
/// `lifetime` and, for clock skew, from a little before now (a tenth of it, five minutes at most).
pub fn client_params(
    user: &str,
    groups: &[&str],
    lifetime: std::time::Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    dn.push(DnType::CommonName, user);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    let secs = lifetime.as_secs().min(i64::MAX as u64 / 2) as i64;
    params.not_before = now - time::Duration::seconds((secs / 10).min(300));
    params.not_after = now + time::Duration::seconds(secs);
    params
}

/// A kubeconfig with one cluster, one user (a bearer token) and one context.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: switchyard\n  context:\n    cluster: switchyard\n    user: {user}\n    namespace: default\ncurrent-context: switchyard\n"
    )
}

/// A kubeconfig whose user is a client certificate and key (PEM).
pub fn cert_kubeconfig(server: &str, ca_pem: &str, user: &str, cert: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: switchyard\n  context:\n    cluster: switchyard\n    user: {user}\n    namespace: default\ncurrent-context: switchyard\n",
        b64(ca_pem),
        b64(cert),
        b64(key)
    )
}

/// Writes `DIR/admin.kubeconfig` for a server reachable at `server`.
pub fn write_kubeconfigs(
    dir: &Path,
    server: &str,
    creds: &Credentials,
) -> Result<PathBuf, PkiError> {
    let admin = dir.join("admin.kubeconfig");
    write_private(
        &admin,
        &kubeconfig(server, &creds.ca_pem, "admin", &creds.admin_token),
    )?;
    Ok(admin)
}

/// Writes `path` readable only by its owner.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_private(path, contents)
}

/// Makes the data directory 0700 and every file in it 0600 (keys, tokens, kubeconfigs and the
/// store, which holds every Secret); returns what it had to tighten.
pub fn tighten(dir: &Path) -> Result<Vec<String>, PkiError> {
    let mut tightened = Vec::new();
    let mut fix = |path: &Path, want: u32| -> Result<(), PkiError> {
        let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
        if mode & !want != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(want)).map_err(io(path))?;
            tightened.push(format!("{} was {mode:o}, now {want:o}", path.display()));
        }
        Ok(())
    };
    fix(dir, 0o700)?;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.file_type().map_err(io(dir))?.is_file() {
            fix(&entry.path(), 0o600)?;
        }
    }
    Ok(tightened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_keeps_ca_and_tokens_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let b = ensure(dir.path(), &["10.0.0.1".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.sa_key, b.sa_key);
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }

    #[test]
    fn the_data_directory_is_tightened_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let store = dir.path().join("store.redb");
        fs::write(&store, "x").unwrap();
        fs::set_permissions(&store, fs::Permissions::from_mode(0o644)).unwrap();
        let told = tighten(dir.path()).unwrap();
        assert_eq!(told.len(), 2, "{told:?}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&store), 0o600);
        assert!(
            tighten(dir.path()).unwrap().is_empty(),
            "nothing left to tighten"
        );
    }
}
