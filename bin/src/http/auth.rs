//! API tokens: made by `nexa token create`, kept hashed in the data folder, presented as
//! `Authorization: Bearer <token>`.
//!
//! The file `<data>/api_tokens` has one token a line: `<sha256 hex> <scope> <name>`, where
//! scope is `full` or `read`. Only hashes are kept, so the file does not give tokens away. The
//! server reads it again whenever it changes, so a new token works without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::State;
use super::error::ApiError;

/// The name of the tokens file in the data folder.
pub(crate) const TOKENS_FILE: &str = "api_tokens";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Read and change.
    Full,
    /// Read only.
    Read,
}

#[derive(Clone, Debug)]
struct Entry {
    hash: [u8; 32],
    scope: Scope,
}

/// The tokens the server accepts, reloaded when the file changes.
#[derive(Debug)]
pub(crate) struct Tokens {
    path: PathBuf,
    loaded: Mutex<(Option<SystemTime>, Vec<Entry>)>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let hex = parts.next()?;
            let scope = match parts.next()? {
                "full" => Scope::Full,
                "read" => Scope::Read,
                _ => return None,
            };
            let mut hash = [0u8; 32];
            if hex.len() != 64 {
                return None;
            }
            for (i, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(Entry { hash, scope })
        })
        .collect()
}

impl Tokens {
    /// The tokens of the data folder `data` (none yet is fine).
    pub(crate) fn new(data: &Path) -> Self {
        let tokens = Self {
            path: data.join(TOKENS_FILE),
            loaded: Mutex::new((None, Vec::new())),
        };
        tokens.refresh();
        tokens
    }

    /// Reads the file again if it changed; returns whether any token exists.
    fn refresh(&self) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.0 != modified {
            let entries = std::fs::read_to_string(&self.path)
                .map(|t| parse(&t))
                .unwrap_or_default();
            *loaded = (modified, entries);
        }
        !loaded.1.is_empty()
    }

    /// Whether the API requires a token: it does once one exists.
    pub(crate) fn required(&self) -> bool {
        self.refresh()
    }

    /// The scope of `token`, if it is one of ours.
    fn scope_of(&self, token: &str) -> Option<Scope> {
        self.refresh();
        let presented = hash(token);
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        // Compare against every entry in constant time; no early exit on a match.
        let mut found = None;
        for entry in &loaded.1 {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry.scope);
            }
        }
        found
    }

    /// Checks a request's token against what it needs.
    pub(crate) fn check(&self, req: &HttpRequest, need: Scope) -> Result<(), ApiError> {
        if !self.required() {
            return Ok(());
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "this server requires a token: send `Authorization: Bearer <token>` (make one with `nexa token create`)",
                )
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        match (self.scope_of(token), need) {
            (None, _) => Err(ApiError::unauthorized("unknown token")),
            (Some(Scope::Read), Scope::Full) => Err(ApiError::forbidden(
                "this token may only read; use a token made without --read-only",
            )),
            (Some(_), _) => Ok(()),
        }
    }
}

/// Makes a token, keeps its hash in `data`, and returns it.
pub(crate) fn create(data: &Path, scope: Scope, name: &str) -> std::io::Result<String> {
    use std::io::Write;
    std::fs::create_dir_all(data)?;
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let token: String = std::iter::once("nxf_".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let hex: String = hash(&token).iter().map(|b| format!("{b:02x}")).collect();
    let scope = match scope {
        Scope::Full => "full",
        Scope::Read => "read",
    };
    let name: String = name
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect();
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(data.join(TOKENS_FILE))?;
    writeln!(file, "{hex} {scope} {name}")?;
    file.sync_all()?;
    Ok(token)
}

/// A request allowed to read.
pub(crate) struct Reader;

/// A request allowed to change things.
pub(crate) struct Writer;

fn extract(req: &HttpRequest, need: Scope) -> Result<(), ApiError> {
    match req.app_data::<web::Data<State>>() {
        Some(state) => state.tokens.check(req, need),
        None => Err(ApiError::unavailable("the API is not set up")),
    }
}

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(extract(req, Scope::Read).map(|()| Reader))
    }
}

impl FromRequest for Writer {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(extract(req, Scope::Full).map(|()| Writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_hashed_and_checked_with_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        assert!(!tokens.required(), "no token made yet");
        let full = create(dir.path(), Scope::Full, "ci bot").unwrap();
        let read = create(dir.path(), Scope::Read, "dashboard").unwrap();
        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(&full) && !file.contains(&read), "{file}");
        assert!(file.contains(" full ci-bot\n"), "{file}");
        assert!(tokens.required(), "the new file is picked up");
        assert_eq!(tokens.scope_of(&full), Some(Scope::Full));
        assert_eq!(tokens.scope_of(&read), Some(Scope::Read));
        assert_eq!(tokens.scope_of("nxf_guess"), None);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(TOKENS_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let entries = parse("zz full x\nabc read\n\n".to_owned().as_str());
        assert!(entries.is_empty());
    }
}
