//! Certificate credentials: the client assertion (a JWT signed with the application's private
//! key) that replaces a client secret in the client-credentials grant.
//!
//! Implements <https://learn.microsoft.com/entra/identity-platform/certificate-credentials>:
//! header `alg` `PS256` with `x5t#S256` (base64url SHA-256 thumbprint of the DER certificate),
//! or `RS256` with `x5t` (base64url SHA-1 thumbprint); claims `aud` = the token endpoint,
//! `iss` = `sub` = the client id, a unique `jti`, `iat`/`nbf` = now, `exp` = now + 5 minutes.
//! Sent as `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//! and `client_assertion=<jwt>` (RFC 7523 §2.2).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

use crate::error::{Error, Result};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid (`exp - nbf`).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The signature algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, header `x5t#S256` (Microsoft's recommended form).
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, header `x5t` (SHA-1 thumbprint; older form, still
    /// accepted by Entra ID).
    Rs256,
}

impl AssertionAlgorithm {
    /// `PS256` or `RS256`, as in the JWT `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlgorithm::Ps256 => "PS256",
            AssertionAlgorithm::Rs256 => "RS256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            AssertionAlgorithm::Ps256 => Algorithm::PS256,
            AssertionAlgorithm::Rs256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for AssertionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AssertionAlgorithm {
    type Err = Error;

    /// `PS256` or `RS256` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PS256" => Ok(AssertionAlgorithm::Ps256),
            "RS256" => Ok(AssertionAlgorithm::Rs256),
            _ => Err(Error::Invalid {
                detail: format!(
                    "assertion algorithm {s:?} is not supported: use \"PS256\" (recommended) or \"RS256\""
                ),
            }),
        }
    }
}

/// An application's certificate and private key, and the algorithm to sign assertions with.
///
/// Built with [`CertificateCredential::from_pem`], which checks that the key belongs to the
/// certificate, so a mismatched pair fails at start rather than at Entra ID (`AADSTS700027`).
#[derive(Clone)]
pub struct CertificateCredential {
    /// Directory (tenant) ID GUID or a verified domain.
    pub tenant_id: String,
    /// Application (client) ID GUID.
    pub client_id: String,
    algorithm: AssertionAlgorithm,
    key: EncodingKey,
    /// base64url SHA-256 of the DER certificate.
    x5t_s256: String,
    /// base64url SHA-1 of the DER certificate.
    x5t: String,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("algorithm", &self.algorithm)
            .field("x5t#S256", &self.x5t_s256)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct AssertionClaims {
    aud: String,
    iss: String,
    sub: String,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl CertificateCredential {
    /// Parses the certificate and the private key from PEM text.
    ///
    /// `certificate_pem` holds an X.509 `CERTIFICATE` block (the one registered on the app
    /// registration under *Certificates & secrets*); `key_pem` an RSA private key, PKCS#8
    /// (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`), unencrypted. Both may be the same text
    /// (one file holding the certificate and its key). The first certificate block is the one
    /// used (a chain may follow).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming what is missing or wrong: no certificate block, no private key
    /// block, an encrypted or non-RSA key, or a key that does not belong to the certificate.
    pub fn from_pem(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        certificate_pem: &[u8],
        key_pem: &[u8],
        algorithm: AssertionAlgorithm,
    ) -> Result<Self> {
        let invalid = |detail: String| Error::Invalid { detail };
        let certs = pem::parse_many(certificate_pem)
            .map_err(|e| invalid(format!("the certificate is not PEM text ({e})")))?;
        let cert = certs
            .iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .ok_or_else(|| {
                invalid(
                    "no `-----BEGIN CERTIFICATE-----` block in the certificate file: give the \
                     PEM certificate that is registered on the app registration"
                        .into(),
                )
            })?;
        let keys = pem::parse_many(key_pem)
            .map_err(|e| invalid(format!("the private key is not PEM text ({e})")))?;
        if keys.iter().any(|p| p.tag() == "ENCRYPTED PRIVATE KEY") {
            return Err(invalid(
                "the private key is encrypted: store it unencrypted in a file readable only by \
                 m365bk (`openssl pkey -in key.pem -out plain.pem`, then chmod 600), or pass it \
                 as a systemd credential (LoadCredentialEncrypted=)"
                    .into(),
            ));
        }
        let key = keys
            .iter()
            .find(|p| p.tag() == "PRIVATE KEY" || p.tag() == "RSA PRIVATE KEY")
            .ok_or_else(|| {
                invalid(
                    "no `-----BEGIN PRIVATE KEY-----` (or `RSA PRIVATE KEY`) block in the \
                     private key file"
                        .into(),
                )
            })?;
        let key_text = pem::encode(key);
        let key = EncodingKey::from_rsa_pem(key_text.as_bytes()).map_err(|e| {
            invalid(format!(
                "the private key is not an RSA key ({e}): Entra ID certificate credentials \
                 need an RSA key of 2048 bits or more"
            ))
        })?;
        let der = cert.contents();
        let credential = CertificateCredential {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            algorithm,
            key,
            x5t_s256: b64url(&sha2::Sha256::digest(der)),
            x5t: b64url(&sha1::Sha1::digest(der)),
        };
        credential.check_pair(&pem::encode(cert))?;
        Ok(credential)
    }

    /// Signs a probe with the key and verifies it with the certificate's public key.
    fn check_pair(&self, certificate_pem: &str) -> Result<()> {
        let mismatch = |detail: String| Error::Invalid { detail };
        let public = DecodingKey::from_rsa_pem(certificate_pem.as_bytes()).map_err(|e| {
            mismatch(format!(
                "the certificate does not hold an RSA public key ({e}): Entra ID certificate \
                 credentials need an RSA certificate"
            ))
        })?;
        let header = Header::new(self.algorithm.jwt());
        let probe = serde_json::json!({ "probe": true, "exp": u64::MAX / 2 });
        let signed = jsonwebtoken::encode(&header, &probe, &self.key)
            .map_err(|e| mismatch(format!("cannot sign with the private key ({e})")))?;
        let mut validation = Validation::new(self.algorithm.jwt());
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(&signed, &public, &validation).map_err(|_| {
            mismatch(
                "the private key does not belong to the certificate: give the key the \
                 certificate was made from (the certificate's thumbprint must match one \
                 registered on the app registration)"
                    .into(),
            )
        })?;
        Ok(())
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    /// base64url SHA-256 thumbprint of the DER certificate (the `x5t#S256` header).
    pub fn thumbprint_sha256(&self) -> &str {
        &self.x5t_s256
    }

    /// base64url SHA-1 thumbprint of the DER certificate (the `x5t` header).
    pub fn thumbprint_sha1(&self) -> &str {
        &self.x5t
    }

    /// A fresh client assertion for `token_endpoint`, valid from `now` for
    /// [`ASSERTION_LIFETIME`], with a new random `jti`.
    ///
    /// CPU-bound (one RSA signature, about a millisecond with optimised code): call it from
    /// a blocking context.
    ///
    /// # Errors
    /// [`Error::Invalid`] when signing fails (cannot happen for a key accepted by
    /// [`CertificateCredential::from_pem`]).
    pub fn assertion(&self, token_endpoint: &str, now: SystemTime) -> Result<String> {
        let mut header = Header::new(self.algorithm.jwt());
        header.typ = Some("JWT".into());
        match self.algorithm {
            AssertionAlgorithm::Ps256 => header.x5t_s256 = Some(self.x5t_s256.clone()),
            AssertionAlgorithm::Rs256 => header.x5t = Some(self.x5t.clone()),
        }
        let now = unix_secs(now);
        let claims = AssertionClaims {
            aud: token_endpoint.to_owned(),
            iss: self.client_id.clone(),
            sub: self.client_id.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| Error::Invalid {
            detail: format!("cannot sign the client assertion: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh self-signed RSA certificate: (certificate PEM, PKCS#8 key PEM, DER).
    fn test_certificate() -> (String, String, Vec<u8>) {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["m365bk-test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn decode_part(part: &str) -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn assertions_carry_the_documented_header_and_claims_and_verify() {
        let (cert, key, der) = test_certificate();
        let endpoint = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        for alg in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
            let c =
                CertificateCredential::from_pem("t", "app", cert.as_bytes(), key.as_bytes(), alg)
                    .unwrap();
            let now = SystemTime::now();
            let jwt = c.assertion(endpoint, now).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            let header = decode_part(parts[0]);
            let claims = decode_part(parts[1]);
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["typ"], "JWT");
            match alg {
                AssertionAlgorithm::Ps256 => {
                    assert_eq!(header["x5t#S256"], b64url(&sha2::Sha256::digest(&der)));
                    assert!(header.get("x5t").is_none());
                }
                AssertionAlgorithm::Rs256 => {
                    assert_eq!(header["x5t"], b64url(&sha1::Sha1::digest(&der)));
                    assert!(header.get("x5t#S256").is_none());
                }
            }
            assert_eq!(claims["aud"], endpoint);
            assert_eq!(claims["iss"], "app");
            assert_eq!(claims["sub"], "app");
            let nbf = claims["nbf"].as_u64().unwrap();
            assert_eq!(nbf, unix_secs(now));
            assert_eq!(claims["exp"].as_u64().unwrap() - nbf, 300);
            let again = c.assertion(endpoint, now).unwrap();
            assert_ne!(
                decode_part(again.split('.').nth(1).unwrap())["jti"],
                claims["jti"]
            );
            // The signature verifies with the certificate's public key.
            let public = DecodingKey::from_rsa_pem(cert.as_bytes()).unwrap();
            let mut v = Validation::new(alg.jwt());
            v.set_audience(&[endpoint]);
            jsonwebtoken::decode::<AssertionClaims>(&jwt, &public, &v).unwrap();
        }
        // One file holding both.
        let both = format!("{cert}{key}");
        CertificateCredential::from_pem(
            "t",
            "app",
            both.as_bytes(),
            both.as_bytes(),
            AssertionAlgorithm::default(),
        )
        .unwrap();
    }

    #[test]
    fn bad_pairs_and_files_are_named() {
        let (cert, key, _) = test_certificate();
        let (_, other_key, _) = test_certificate();
        let err = |c: &str, k: &str| {
            CertificateCredential::from_pem(
                "t",
                "app",
                c.as_bytes(),
                k.as_bytes(),
                AssertionAlgorithm::Ps256,
            )
            .unwrap_err()
            .to_string()
        };
        let e = err(&cert, &other_key);
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let e = err(&key, &key);
        assert!(e.contains("BEGIN CERTIFICATE"), "{e}");
        let e = err(&cert, &cert);
        assert!(e.contains("BEGIN PRIVATE KEY"), "{e}");
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = err(&cert, encrypted);
        assert!(e.contains("encrypted"), "{e}");
        assert!("rs256".parse::<AssertionAlgorithm>().unwrap() == AssertionAlgorithm::Rs256);
        let e = "ES256"
            .parse::<AssertionAlgorithm>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("PS256"), "{e}");
    }
}
