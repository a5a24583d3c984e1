//! API tokens: made by `nexa token create`, kept hashed, presented as
//! `Authorization: Bearer <token>`.
//!
//! They are kept where the control plane keeps its jobs ([`Keep`]). In the data folder, the
//! file `<data>/api_tokens` has one token a line: `<sha256 hex> <scope> <name>`, where scope
//! is `full`, `read` or `worker`; the server reads it again whenever it changes. In a
//! PostgreSQL database, they are the rows of `nexa_api_tokens`, which every control plane on
//! the database reads again each second. Only hashes are kept, so neither gives tokens away,
//! and a new token works without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::State;
use super::error::ApiError;

/// The name of the tokens file in the data folder.
pub(crate) const TOKENS_FILE: &str = "api_tokens";

/// How often a control plane reads the tokens kept in its database again: a token made or
/// revoked on any machine counts from then on.
const DATABASE_REFRESH: Duration = Duration::from_secs(1);

/// Where a control plane keeps its API tokens and its HTTP workers' sessions: files in its
/// data folder, or the PostgreSQL database that keeps its jobs (shared by every control plane
/// on it).
#[derive(Clone, Debug)]
pub(crate) enum Keep {
    /// Files in this data folder.
    Folder(PathBuf),
    /// The tables of this database.
    Database(Arc<nexa_storage::PgCredentials>),
}

impl Keep {
    /// Where a control plane with data folder `data` and, when given, the database at
    /// `database_url` keeps them: in the database when there is one.
    pub(crate) fn open(data: &Path, database_url: Option<&str>) -> anyhow::Result<Self> {
        Ok(match database_url {
            None => Self::Folder(data.to_path_buf()),
            Some(url) => Self::Database(Arc::new(nexa_storage::PgCredentials::open(url)?)),
        })
    }

    /// Where the tokens are, for people.
    pub(crate) fn tokens_place(&self) -> String {
        match self {
            Self::Folder(data) => data.join(TOKENS_FILE).display().to_string(),
            Self::Database(db) => format!("the database {}", db.location()),
        }
    }
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A user's: read, submit and cancel.
    Full,
    /// A user's: read only.
    Read,
    /// A worker's credential: register workers over HTTP, lease jobs and report on them, and
    /// read; not submit or cancel.
    Worker,
}

/// What a request needs to be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Any token.
    Read,
    /// A user's full token.
    Write,
    /// A worker credential.
    Work,
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) hash: [u8; 32],
    pub(crate) scope: Scope,
    pub(crate) name: String,
}

impl Scope {
    /// Its name where tokens are kept.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::Read => "read",
            Scope::Worker => "worker",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Scope::Full),
            "read" => Some(Scope::Read),
            "worker" => Some(Scope::Worker),
            _ => None,
        }
    }
}

/// The tokens the server accepts, read again when they change.
#[derive(Debug)]
pub(crate) struct Tokens {
    keep: Keep,
    loaded: Arc<Mutex<Loaded>>,
}

#[derive(Debug, Default)]
struct Loaded {
    /// The file as last read (when it changed, its length and inode); `None` when there
    /// was no file.
    stamp: Option<(Option<SystemTime>, u64, u64)>,
    entries: Vec<Entry>,
    /// Set once the server has seen a token: from then on it never answers without one.
    armed: bool,
    /// Why the tokens cannot be read now, when they cannot.
    problem: Option<String>,
    /// Whether the tokens were read at least once (from a database: the last reading stands
    /// while the database cannot be read).
    read: bool,
}

/// How the API is guarded now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// No token was ever made: only this machine's requests are answered.
    Open,
    /// Requests must present one of the tokens.
    Tokens,
    /// Tokens were in use and cannot be read now: every request is refused until fixed.
    Broken(String),
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token lines of the file; damaged lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let hex = parts.next()?;
            let scope = Scope::parse(parts.next()?)?;
            let hash = unhex32(hex)?;
            let name = parts.next().unwrap_or("token").to_owned();
            Some(Entry { hash, scope, name })
        })
        .collect()
}

/// A token as a database keeps it, when its scope is one this build knows.
fn from_row(row: nexa_storage::StoredToken) -> Option<Entry> {
    Some(Entry {
        hash: row.hash,
        scope: Scope::parse(&row.scope)?,
        name: row.name,
    })
}

fn lock(loaded: &Mutex<Loaded>) -> std::sync::MutexGuard<'_, Loaded> {
    loaded.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the tokens kept in `db` into `loaded`. Once tokens were ever made there, an empty
/// table refuses every request, as an empty tokens file does; a database that cannot be
/// read leaves the last reading in force (and refuses everything if there was none).
fn read_database(db: &nexa_storage::PgCredentials, loaded: &Mutex<Loaded>) {
    let read = db.tokens();
    let mut loaded = lock(loaded);
    match read {
        Ok((rows, armed)) => {
            loaded.read = true;
            loaded.entries = rows.into_iter().filter_map(from_row).collect();
            loaded.armed |= armed || !loaded.entries.is_empty();
            loaded.problem = (loaded.armed && loaded.entries.is_empty()).then(|| {
                format!(
                    "the database {} holds no valid token; requests are refused until it does \
                     (nexa token create --database-url … adds one)",
                    db.location()
                )
            });
        }
        Err(e) if !loaded.read => {
            loaded.armed = true;
            loaded.problem = Some(format!(
                "the tokens cannot be read from the database {}: {e}",
                db.location()
            ));
        }
        Err(e) => tracing::warn!(
            "cannot read the tokens from the database {} again ({e}); the last reading stands",
            db.location()
        ),
    }
}

impl Tokens {
    /// The tokens kept in `keep`. A tokens file that exists at start arms them, even if it
    /// cannot be read. Tokens kept in a database are read now, then each second by a thread
    /// that ends with them.
    pub(crate) fn new(keep: Keep) -> Self {
        let armed = match &keep {
            Keep::Folder(data) => data.join(TOKENS_FILE).exists(),
            Keep::Database(_) => false,
        };
        let loaded = Arc::new(Mutex::new(Loaded {
            armed,
            ..Loaded::default()
        }));
        if let Keep::Database(db) = &keep {
            read_database(db, &loaded);
            let (db, weak) = (db.clone(), Arc::downgrade(&loaded));
            let refresh = move || {
                loop {
                    std::thread::sleep(DATABASE_REFRESH);
                    match Weak::upgrade(&weak) {
                        Some(loaded) => read_database(&db, &loaded),
                        None => return,
                    }
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("nexa-tokens".into())
                .spawn(refresh)
            {
                let mut loaded = lock(&loaded);
                loaded.armed = true;
                loaded.problem = Some(format!("cannot start reading the tokens again: {e}"));
            }
        }
        let tokens = Self { keep, loaded };
        tokens.mode();
        tokens
    }

    /// Reads the tokens file again if it changed, and says how the API is guarded.
    fn mode(&self) -> Mode {
        let mut loaded = lock(&self.loaded);
        if let Keep::Folder(data) = &self.keep {
            Self::read_file(&data.join(TOKENS_FILE), &mut loaded);
        }
        match (&loaded.problem, loaded.armed) {
            (Some(problem), _) => Mode::Broken(problem.clone()),
            (None, true) => Mode::Tokens,
            (None, false) => Mode::Open,
        }
    }

    /// Reads the tokens file at `path` into `loaded` if it changed since the last reading.
    fn read_file(path: &Path, loaded: &mut Loaded) {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                loaded.stamp = None;
                loaded.entries.clear();
                loaded.problem = loaded.armed.then(|| {
                    format!(
                        "the token file {} was removed; requests are refused until it is back \
                         (nexa token create makes a new one)",
                        path.display()
                    )
                });
            }
            Err(e) => {
                loaded.armed = true;
                loaded.stamp = None;
                loaded.entries.clear();
                loaded.problem = Some(format!(
                    "the token file {} cannot be read: {e}",
                    path.display()
                ));
            }
            Ok(meta) => {
                let stamp = (
                    meta.modified().ok(),
                    meta.len(),
                    std::os::unix::fs::MetadataExt::ino(&meta),
                );
                if loaded.stamp != Some(stamp) || stamp.0.is_none() {
                    loaded.armed = true;
                    loaded.stamp = Some(stamp);
                    match std::fs::read_to_string(path) {
                        Ok(text) => {
                            loaded.entries = parse(&text);
                            loaded.problem = loaded.entries.is_empty().then(|| {
                                format!(
                                    "the token file {} holds no valid token; requests are \
                                     refused until it does (nexa token create adds one)",
                                    path.display()
                                )
                            });
                        }
                        Err(e) => {
                            loaded.entries.clear();
                            loaded.problem = Some(format!(
                                "the token file {} cannot be read: {e}",
                                path.display()
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Whether requests must present a token (or are refused because the tokens cannot be
    /// read): false only while no token was ever made.
    pub(crate) fn required(&self) -> bool {
        self.mode() != Mode::Open
    }

    #[cfg(test)]
    fn scope_of(&self, token: &str) -> Option<Scope> {
        self.entry_of(token).map(|e| e.scope)
    }

    fn entry_of(&self, token: &str) -> Option<Entry> {
        let presented = hash(token);
        let loaded = lock(&self.loaded);
        // Every entry is compared, so the time taken does not tell which one matched.
        let mut found = None;
        for entry in &loaded.entries {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry.clone());
            }
        }
        found
    }

    /// Lets the request through if it may do what `need` asks; answers who is asking.
    pub(crate) fn check(&self, req: &HttpRequest, need: Need) -> Result<Caller, ApiError> {
        match self.mode() {
            Mode::Open => {
                return from_this_machine(req, need).map(|()| Caller {
                    credential: None,
                    name: "local".to_owned(),
                });
            }
            Mode::Broken(problem) => return Err(ApiError::unavailable(problem)),
            Mode::Tokens => {}
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
        let entry = self.entry_of(token);
        match (entry.as_ref().map(|e| e.scope), need) {
            (None, _) => Err(ApiError::unauthorized("unknown token")),
            (Some(Scope::Read), Need::Write | Need::Work) => Err(ApiError::forbidden(
                "this token may only read; use a token made without --read-only",
            )),
            (Some(Scope::Worker), Need::Write) => Err(ApiError::forbidden(
                "a worker credential cannot submit or cancel jobs; use a user's token",
            )),
            (Some(Scope::Full), Need::Work) => Err(ApiError::forbidden(
                "workers join with a worker credential (nexa token create --worker); a user's \
                 token cannot act as a worker",
            )),
            (Some(_), _) => Ok(Caller {
                credential: Some(hash(token)),
                name: entry.map(|e| e.name).unwrap_or_default(),
            }),
        }
    }
}

/// Without tokens the API trusts this machine's programs, and only them: the request must
/// name a loopback host (so a web page whose name was rebound to 127.0.0.1 is refused), come
/// from no other origin (a web page the user visits cannot drive it), and, to change
/// anything, send its body as JSON (which a plain HTML form cannot).
fn from_this_machine(req: &HttpRequest, need: Need) -> Result<(), ApiError> {
    let headers = req.headers();
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let no_token = "requests without a token are taken only from programs on this machine";
    if let Some(host) = text(actix_web::http::header::HOST)
        && !is_loopback_host(host)
    {
        return Err(ApiError::forbidden(format!(
            "{no_token}: Host {host:?} is not a loopback name (use localhost or 127.0.0.1, \
             or make a token with nexa token create)"
        )));
    }
    if let Some(origin) = text(actix_web::http::header::ORIGIN) {
        let host = text(actix_web::http::header::HOST).unwrap_or_default();
        let same = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host));
        if !same {
            return Err(ApiError::forbidden(format!(
                "{no_token}: a request from the web page origin {origin:?} is refused"
            )));
        }
    }
    if need != Need::Read {
        let has_body = text(actix_web::http::header::CONTENT_LENGTH).is_some_and(|n| n != "0")
            || headers.contains_key(actix_web::http::header::TRANSFER_ENCODING);
        // Neither is a type a form can send: a page's request with one needs the API's
        // consent first (a CORS preflight), which it never gives.
        let json = text(actix_web::http::header::CONTENT_TYPE).is_some_and(|t| {
            t.split(';').next().is_some_and(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json")
                    || m.eq_ignore_ascii_case(super::workers::FRAME_TYPE)
            })
        });
        if has_body && !json {
            return Err(ApiError::from_status(
                actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON, with `Content-Type: application/json`".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Whether `host` (a Host header: a name or address, with or without a port) names this
/// machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8000
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Makes a token, keeps its hash in `keep`, and returns it.
pub(crate) fn create(keep: &Keep, scope: Scope, name: &str) -> anyhow::Result<String> {
    let token = format!("nxf_{}", random_hex(24)?);
    let name: String = name
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect();
    add(
        keep,
        &Entry {
            hash: hash(&token),
            scope,
            name,
        },
    )?;
    Ok(token)
}

/// Keeps `entry` in `keep`.
pub(crate) fn add(keep: &Keep, entry: &Entry) -> anyhow::Result<()> {
    use std::io::Write;
    match keep {
        Keep::Folder(data) => {
            crate::node::private_dir(data)?;
            let mut options = std::fs::OpenOptions::new();
            options.append(true).create(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(data.join(TOKENS_FILE))?;
            writeln!(
                file,
                "{} {} {}",
                hex(&entry.hash),
                entry.scope.as_str(),
                entry.name
            )?;
            file.sync_all()?;
        }
        Keep::Database(db) => db.add_token(&nexa_storage::StoredToken {
            hash: entry.hash,
            scope: entry.scope.as_str().to_owned(),
            name: entry.name.clone(),
        })?,
    }
    Ok(())
}

/// The tokens kept in `keep`, oldest first; `None` when no token was ever made there (the
/// API then answers this machine's programs only).
pub(crate) fn list(keep: &Keep) -> anyhow::Result<Option<Vec<Entry>>> {
    match keep {
        Keep::Folder(data) => match std::fs::read_to_string(data.join(TOKENS_FILE)) {
            Ok(text) => Ok(Some(parse(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        },
        Keep::Database(db) => {
            let (rows, armed) = db.tokens()?;
            let entries: Vec<Entry> = rows.into_iter().filter_map(from_row).collect();
            Ok((armed || !entries.is_empty()).then_some(entries))
        }
    }
}

/// Removes every token named `name` from `keep`; answers how many. A tokens file is replaced
/// whole (written beside it, then renamed), so a server never reads half of it.
pub(crate) fn revoke(keep: &Keep, name: &str) -> anyhow::Result<usize> {
    let data = match keep {
        Keep::Folder(data) => data,
        Keep::Database(db) => return Ok(db.revoke_tokens(name)?),
    };
    let path = data.join(TOKENS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let (gone, kept): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|line| line.split_whitespace().nth(2) == Some(name));
    if gone.is_empty() {
        return Ok(0);
    }
    let text: String = kept.iter().map(|line| format!("{line}\n")).collect();
    nexa_actors::replace_private(&path, text.as_bytes())?;
    Ok(gone.len())
}

/// `bytes` as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as the 32 bytes they write (a SHA-256).
pub(crate) fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `n` random bytes from the system, as hex: a secret to hand out.
pub(crate) fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex(&bytes))
}

/// Who made a request: for the audit log, and to tie a worker id to its registrant.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The hash of the token presented; `None` while the server has no tokens.
    pub(crate) credential: Option<[u8; 32]>,
    /// The token's name (`local` while the server has no tokens).
    pub(crate) name: String,
}

/// A request allowed to read.
pub(crate) struct Reader;

/// A request allowed to change things: a user's full token.
pub(crate) struct Writer(pub(crate) Caller);

/// A request from a worker: a worker credential.
pub(crate) struct WorkerCaller(pub(crate) Caller);

fn extract(req: &HttpRequest, need: Need) -> Result<Caller, ApiError> {
    match req.app_data::<web::Data<State>>() {
        Some(state) => state.tokens.check(req, need),
        None => Err(ApiError::unavailable("the API is not set up")),
    }
}

impl FromRequest for WorkerCaller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(extract(req, Need::Work).map(WorkerCaller))
    }
}

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(extract(req, Need::Read).map(|_| Reader))
    }
}

impl FromRequest for Writer {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(extract(req, Need::Write).map(Writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: Option<Vec<Entry>>) -> Option<Vec<(String, Scope)>> {
        entries.map(|e| e.into_iter().map(|e| (e.name, e.scope)).collect())
    }

    #[test]
    fn tokens_are_kept_hashed_and_checked_with_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Keep::Folder(dir.path().to_path_buf());
        let tokens = Tokens::new(keep.clone());
        assert!(!tokens.required(), "no token made yet");
        let full = create(&keep, Scope::Full, "ci bot").unwrap();
        let read = create(&keep, Scope::Read, "dashboard").unwrap();
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
    fn loopback_hosts_are_told_apart_from_other_names() {
        for host in [
            "localhost",
            "localhost:8000",
            "127.0.0.1:18001",
            "127.1.2.3",
            "[::1]:8000",
            "app.localhost:80",
            "LOCALHOST.",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "attacker.example:18001",
            "localhost.attacker.example",
            "10.0.0.1:8000",
            "[::2]:80",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn tokens_fail_closed_once_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Keep::Folder(dir.path().to_path_buf());
        let tokens = Tokens::new(keep.clone());
        assert_eq!(tokens.mode(), Mode::Open);
        let full = create(&keep, Scope::Full, "ci").unwrap();
        assert_eq!(tokens.mode(), Mode::Tokens);
        let file = dir.path().join(TOKENS_FILE);
        let kept = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(tokens.mode(), Mode::Broken(why) if why.contains("was removed")));
        std::fs::write(&file, "garbage\n").unwrap();
        assert!(matches!(tokens.mode(), Mode::Broken(why) if why.contains("no valid token")));
        std::fs::write(&file, &kept).unwrap();
        assert_eq!(tokens.mode(), Mode::Tokens);
        assert_eq!(tokens.scope_of(&full), Some(Scope::Full));
        // A server started on a damaged file is armed as well.
        std::fs::write(&file, "").unwrap();
        assert!(matches!(Tokens::new(keep).mode(), Mode::Broken(_)));
    }

    #[test]
    fn tokens_are_listed_by_name_and_revoked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Keep::Folder(dir.path().to_path_buf());
        let tokens = Tokens::new(keep.clone());
        assert_eq!(names(list(&keep).unwrap()), None);
        let ci = create(&keep, Scope::Full, "ci").unwrap();
        let node = create(&keep, Scope::Worker, "gpu node").unwrap();
        assert_eq!(
            names(list(&keep).unwrap()).unwrap(),
            [
                ("ci".to_owned(), Scope::Full),
                ("gpu-node".into(), Scope::Worker)
            ]
        );
        assert_eq!(tokens.mode(), Mode::Tokens);
        assert_eq!(revoke(&keep, "nobody").unwrap(), 0);
        assert_eq!(revoke(&keep, "ci").unwrap(), 1);
        assert_eq!(tokens.mode(), Mode::Tokens);
        assert_eq!(
            tokens.scope_of(&ci),
            None,
            "a revoked token is refused at once"
        );
        assert_eq!(tokens.scope_of(&node), Some(Scope::Worker));
        // Revoking the last one does not open the server.
        assert_eq!(revoke(&keep, "gpu-node").unwrap(), 1);
        assert!(matches!(tokens.mode(), Mode::Broken(_)));
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let entries = parse("zz full x\nabc read\n\n".to_owned().as_str());
        assert!(entries.is_empty());
    }
}
