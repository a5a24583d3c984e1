//! The file's SHA-256, and the expected digest it is checked against.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{AuditError, AuditPhase, Observer};

/// The expected digest, lower-cased, when it is 64 hex digits (surrounding blanks ignored).
pub(crate) fn parse_expected(value: &str) -> Result<String, AuditError> {
    let hex = value.trim();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(AuditError::InvalidExpectedSha256 {
            value: value.to_owned(),
        })
    }
}

/// The SHA-256 of `file` (`total` bytes long, read from where it stands) as lower-case hex,
/// and how many bytes it has; `path` names it in errors.
pub(crate) fn sha256_file(
    file: &mut File,
    total: u64,
    path: &Path,
    observer: &mut Observer<'_>,
) -> Result<(String, u64), AuditError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0; CHUNK];
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    observer.report(AuditPhase::Hashing, 0, total)?;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(AuditError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        observer.report(AuditPhase::Hashing, done, total)?;
    }
    Ok((to_hex(&hasher.finalize()), done))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_digest_is_checked_and_lower_cased() {
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(parse_expected(upper).unwrap(), upper.to_ascii_lowercase());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let err = parse_expected(bad).unwrap_err();
            assert!(matches!(err, AuditError::InvalidExpectedSha256 { .. }));
            assert!(err.is_invalid_input());
        }
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
