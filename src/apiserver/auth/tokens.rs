//! ServiceAccount tokens: JWTs signed with the server's ES256 key (`sa.key` in the data
//! directory), as TokenRequest issues them. A token names its ServiceAccount and that account's
//! uid, its audiences and its expiry; it is accepted only with a valid signature, our issuer, an
//! audience of ours, inside its lifetime, and while the ServiceAccount with that uid exists (the
//! caller checks the last). Verified tokens are remembered, so a token costs one signature check
//! for as long as it is in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};

use super::User;

/// The issuer and default audience, as kube-apiserver's default `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Tokens longer than this are not even parsed.
const MAX_TOKEN: usize = 16 * 1024;
/// Clock skew allowed on `nbf` and `exp`, in seconds.
const SKEW: u64 = 60;
/// Verified tokens remembered at most.
const REMEMBERED: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("unsupported signing algorithm")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("issued by someone else")]
    Issuer,
    #[error("not meant for this server (audience)")]
    Audience,
    #[error("expired or not yet valid")]
    Lifetime,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: Account,
}

/// What a token says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// A verified token: what it says, and the user it makes (built once per token).
pub struct Verified {
    pub claims: Claims,
    pub user: Arc<User>,
}

pub struct Signer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    kid: String,
    rng: SystemRandom,
    verified: Mutex<HashMap<String, Arc<Verified>>>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    /// A signer for the P-256 key in `pkcs8` (DER).
    pub fn new(pkcs8: &[u8]) -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| format!("the ServiceAccount signing key is not a P-256 key: {e}"))?;
        let public = key.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = b64(&digest.as_ref()[..16]);
        Ok(Signer {
            key,
            public,
            kid,
            rng,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
        };
        let h = b64(&serde_json::to_vec(&header).expect("json"));
        let p = b64(&serde_json::to_vec(claims).expect("json"));
        let input = format!("{h}.{p}");
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("ECDSA signing does not fail");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// The claims of a token we signed, at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Verified>, TokenError> {
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        let claims = match remembered {
            Some(c) => c,
            None => {
                let claims = self.check_signature(token)?;
                let k = &claims.kubernetes;
                let user = Arc::new(User::service_account(
                    &k.namespace,
                    &k.serviceaccount.name,
                    &k.serviceaccount.uid,
                ));
                let c = Arc::new(Verified { claims, user });
                let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if v.len() >= REMEMBERED {
                    v.clear();
                }
                v.insert(token.to_string(), c.clone());
                c
            }
        };
        if claims.claims.nbf > now + SKEW || claims.claims.exp + SKEW <= now {
            return Err(TokenError::Lifetime);
        }
        Ok(claims)
    }

    fn check_signature(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "ES256" {
            return Err(TokenError::Algorithm);
        }
        let signed = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signed.as_bytes(), &decode(s)?)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(p)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        if !claims.aud.iter().any(|a| a == ISSUER) {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts).
pub fn is_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate().unwrap();
        Signer::new(&key.serialize_der()).unwrap()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:ns:app".into(),
            aud: vec![ISSUER.into()],
            exp,
            iat: 1000,
            nbf: 1000,
            kubernetes: KubernetesClaims {
                namespace: "ns".into(),
                serviceaccount: Account {
                    name: "app".into(),
                    uid: "u1".into(),
                },
            },
        }
    }

    #[test]
    fn issued_tokens_verify_and_nothing_else_does() {
        let s = signer();
        let t = s.issue(&claims(5000));
        assert!(is_jwt(&t));
        assert_eq!(s.verify(&t, 2000).unwrap().claims, claims(5000));
        assert_eq!(
            s.verify(&t, 2000).unwrap().user.name,
            "system:serviceaccount:ns:app"
        );
        // Remembered, and still held to its lifetime.
        assert_eq!(s.verify(&t, 6000).err(), Some(TokenError::Lifetime));
        assert_eq!(s.verify(&t, 100).err(), Some(TokenError::Lifetime));
        // Another key's token, a changed payload, no signature, another algorithm.
        let other = signer().issue(&claims(5000));
        assert_eq!(s.verify(&other, 2000).err(), Some(TokenError::Signature));
        let parts: Vec<&str> = t.split('.').collect();
        let forged = b64(&serde_json::to_vec(&claims(99_999)).unwrap());
        let t2 = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(s.verify(&t2, 2000).err(), Some(TokenError::Signature));
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(s.verify(&none, 2000).err(), Some(TokenError::Algorithm));
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "eyJ.eyJ.x",
            &"x".repeat(MAX_TOKEN + 1),
        ] {
            assert!(s.verify(junk, 2000).is_err(), "{junk:.20}");
        }
        // Another audience.
        let mut c = claims(5000);
        c.aud = vec!["vault".into()];
        assert_eq!(
            s.verify(&s.issue(&c), 2000).err(),
            Some(TokenError::Audience)
        );
    }
}
