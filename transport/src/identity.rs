//! Who the server is: its certificate, kept in its data folder, and how clients trust it.
//!
//! On first start the server makes a self-signed certificate and keeps it with its key in
//! `<data>/tls/` (the key readable by the owner only). Clients trust it either by the SHA-256
//! fingerprint of that certificate, which the server prints, or by a CA file when the operator
//! brings certificates of their own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::IdentityError;

/// The names the self-signed certificate is made for. Clients trusting by fingerprint do not
/// check names; clients trusting a CA use the name they are configured with.
pub const CERT_NAMES: [&str; 2] = ["nexa-forge", "localhost"];

/// The SHA-256 of a certificate (DER). Shown and parsed as `sha256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &[u8]) -> Self {
        Self(Sha256::digest(cert).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a certificate fingerprint (expected sha256: and 64 hex digits)")]
pub struct ParseFingerprintError(pub String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s
            .trim()
            .strip_prefix("sha256:")
            .unwrap_or(s.trim())
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let err = || ParseFingerprintError(s.to_owned());
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Self(out))
    }
}

/// The server's certificate chain and key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's fingerprint.
    pub fingerprint: Fingerprint,
    /// Whether this start made the certificate.
    pub created: bool,
}

impl ServerIdentity {
    /// Where the certificate is kept under a data folder.
    pub fn cert_path(data_dir: &Path) -> PathBuf {
        data_dir.join("tls").join("server.crt")
    }

    /// Where the key is kept under a data folder.
    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join("tls").join("server.key")
    }

    /// Loads the identity kept in `data_dir`, making a self-signed one on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = Self::cert_path(data_dir);
        let key_path = Self::key_path(data_dir);
        if cert_path.exists() || key_path.exists() {
            return Self::load(&cert_path, &key_path);
        }
        let made = rcgen::generate_simple_self_signed(CERT_NAMES.map(String::from).to_vec())
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let folder = data_dir.join("tls");
        std::fs::create_dir_all(&folder).map_err(|source| IdentityError::Io {
            path: folder.clone(),
            source,
        })?;
        write_private(&key_path, made.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, made.cert.pem()).map_err(|source| IdentityError::Io {
            path: cert_path.clone(),
            source,
        })?;
        let cert = made.cert.der().clone();
        Ok(Self {
            fingerprint: Fingerprint::of(&cert),
            certs: vec![cert],
            key: PrivateKeyDer::try_from(made.signing_key.serialize_der())
                .map_err(|e| IdentityError::Generate(e.to_string()))?,
            created: true,
        })
    }

    /// Loads a certificate chain and key from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let bad = |path: &Path, e: &dyn fmt::Display| IdentityError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| bad(cert_path, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert_path, &e))?;
        let Some(leaf) = certs.first() else {
            return Err(bad(cert_path, &"it holds no certificate"));
        };
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| bad(key_path, &e))?;
        Ok(Self {
            fingerprint: Fingerprint::of(leaf),
            certs,
            key,
            created: false,
        })
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// How a client decides the server is the right one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The server's certificate has exactly this fingerprint (what `nexa server` prints).
    Fingerprint(Fingerprint),
    /// The server's certificate chains to a CA in this PEM file, for the configured name.
    CaFile(PathBuf),
}

/// The ring crypto provider, the one this crate is built with.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate, by fingerprint, and remembers what it saw so a mismatch
/// can be reported with both fingerprints.
#[derive(Debug)]
pub(crate) struct FingerprintVerifier {
    expected: Fingerprint,
    seen: Mutex<Option<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl FingerprintVerifier {
    pub(crate) fn new(expected: Fingerprint) -> Self {
        Self {
            expected,
            seen: Mutex::new(None),
            provider: provider(),
        }
    }

    /// The fingerprint of the last certificate presented.
    pub(crate) fn seen(&self) -> Option<Fingerprint> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn expected(&self) -> Fingerprint {
        self.expected
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(seen);
        // Fingerprints are public; a plain comparison leaks nothing worth protecting.
        if seen == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint is {seen}, expected {}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse() {
        let fp = Fingerprint::of(b"certificate");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(text[7..].to_uppercase().parse::<Fingerprint>(), Ok(fp));
        assert!("sha256:abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn the_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerIdentity::load_or_create(dir.path()).unwrap();
        assert!(first.created);
        let again = ServerIdentity::load_or_create(dir.path()).unwrap();
        assert!(!again.created);
        assert_eq!(first.fingerprint, again.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ServerIdentity::key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(dir.path()).unwrap();
        std::fs::write(ServerIdentity::key_path(dir.path()), "not a key").unwrap();
        let err = ServerIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("server.key"), "{err}");
    }
}
