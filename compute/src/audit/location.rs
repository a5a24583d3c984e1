//! Turning a dataset location (a path or a `file://` URI) into a local path.

use std::path::PathBuf;

use super::AuditError;

/// The local path `location` names.
///
/// Anything without `://` is a path, used as it is. `file:///abs/path` and
/// `file://localhost/abs/path` name `/abs/path`, with `%XX` escapes decoded. Every other scheme
/// is [`AuditError::UnsupportedLocation`].
pub(crate) fn resolve(location: &str) -> Result<PathBuf, AuditError> {
    let invalid = |reason: &str| AuditError::InvalidLocation {
        location: location.to_owned(),
        reason: reason.to_owned(),
    };
    if location.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    let Some((scheme, rest)) = location.split_once("://") else {
        return Ok(PathBuf::from(location));
    };
    if !scheme.eq_ignore_ascii_case("file") {
        return Err(AuditError::UnsupportedLocation {
            location: location.to_owned(),
            scheme: scheme.to_owned(),
        });
    }
    // file://HOST/PATH: only the local host, written as nothing or `localhost`.
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return Err(invalid(&format!(
            "file:// URIs name a host before the path, here {host:?}; \
             write file:///absolute/path or a plain (relative) path"
        )));
    }
    if path.is_empty() {
        return Err(invalid("no path after file://"));
    }
    let decoded = percent_decode(path)
        .ok_or_else(|| invalid("a %XX escape is incomplete or does not decode to UTF-8 text"))?;
    Ok(PathBuf::from(decoded))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_file_uris() {
        assert_eq!(resolve("data/x.csv").unwrap(), PathBuf::from("data/x.csv"));
        assert_eq!(
            resolve("file:///d/x.csv").unwrap(),
            PathBuf::from("/d/x.csv")
        );
        assert_eq!(
            resolve("FILE://localhost/d/my%20x.csv").unwrap(),
            PathBuf::from("/d/my x.csv")
        );
    }

    #[test]
    fn refusals() {
        let err = resolve("s3://bucket/x.csv").unwrap_err();
        assert!(matches!(&err, AuditError::UnsupportedLocation { scheme, .. } if scheme == "s3"));
        assert!(err.to_string().contains("\"s3\""), "{err}");
        for bad in [
            "file://host/x.csv",
            "file://",
            "file:///x%2",
            "file:///x%ff",
            " ",
        ] {
            let err = resolve(bad).unwrap_err();
            assert!(
                matches!(err, AuditError::InvalidLocation { .. }),
                "{bad}: {err}"
            );
            assert!(err.is_invalid_input());
        }
    }
}
