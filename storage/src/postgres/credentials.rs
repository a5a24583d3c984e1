//! [`PgCredentials`]: the HTTP API's tokens and its workers' sessions in the database, beside
//! the jobs, so that every control plane on the database accepts the same tokens and a
//! worker's session outlives the plane that opened it.
//!
//! Only hashes are kept. The rules (scopes, what a token may do) are the API's; this is where
//! they are kept. Every call runs on a short-lived thread of its own: the synchronous client
//! blocks on a runtime of its own, which a thread that drives async tasks may not do, and the
//! API calls these from its handlers.

use std::sync::{Arc, Mutex};

use nexa_runtime::{FaultKind, StorageFault};
use postgres::Client;

use super::{Conn, Target, connect_failure, pg_fault};
use crate::redb_store::OpenError;

/// One API token as kept: the SHA-256 of the token, its scope and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    /// The SHA-256 of the token.
    pub hash: [u8; 32],
    /// `full`, `read` or `worker`.
    pub scope: String,
    /// The name it was made with.
    pub name: String,
}

/// One HTTP worker's session as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The worker's id.
    pub worker: String,
    /// The SHA-256 of the session id.
    pub session: [u8; 32],
    /// The SHA-256 of the credential it registered with; `None` while the API had no tokens.
    pub credential: Option<[u8; 32]>,
}

/// The tokens and HTTP workers' sessions of a database.
pub struct PgCredentials {
    target: Arc<Target>,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for PgCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCredentials")
            .field("location", &self.target.location)
            .finish_non_exhaustive()
    }
}

/// The key in `nexa_meta` set once a token was ever made: from then on an empty token table
/// means "every token was revoked", not "no token yet".
const ARMED: &str = "tokens_armed";

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], StorageFault> {
    bytes.try_into().map_err(|_| {
        StorageFault::new(
            FaultKind::Corrupt,
            format!("{what} is {} bytes, not 32", bytes.len()),
        )
    })
}

impl PgCredentials {
    /// Connects to the database at `url`, creating or migrating its tables as
    /// [`PgStore::open`](crate::PgStore::open) does.
    pub fn open(url: &str) -> Result<Self, OpenError> {
        let target = Arc::new(Target::new(url)?);
        let conn = off_runtime(|| target.open())?;
        Ok(Self {
            target,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// The database, without its password.
    pub fn location(&self) -> &str {
        &self.target.location
    }

    /// Runs `f` with a connection (made again if it was lost), on a thread of its own.
    fn with<R: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, postgres::Error> + Send,
    ) -> Result<R, StorageFault> {
        let mut guard = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held: &mut Option<Conn> = &mut guard;
        off_runtime(|| {
            if held.as_ref().is_none_or(|c| c.client.is_closed()) {
                *held = None;
                *held =
                    Some(self.target.connect().map_err(|e| {
                        StorageFault::new(FaultKind::Unavailable, connect_failure(&e))
                    })?);
            }
            let conn = held.as_mut().expect("connected above");
            f(&mut conn.client).map_err(pg_fault)
        })
    }

    /// The tokens, oldest first, and whether a token was ever made here.
    pub fn tokens(&self) -> Result<(Vec<StoredToken>, bool), StorageFault> {
        let (rows, armed) = self.with(|c| {
            let rows = c.query(
                "select hash, scope, name from nexa_api_tokens order by created_at, name",
                &[],
            )?;
            let armed = c
                .query_opt("select 1 from nexa_meta where key = $1", &[&ARMED])?
                .is_some();
            Ok((rows, armed))
        })?;
        let tokens = rows
            .iter()
            .map(|r| {
                Ok(StoredToken {
                    hash: hash32(r.get(0), "a token's hash")?,
                    scope: r.get(1),
                    name: r.get(2),
                })
            })
            .collect::<Result<_, StorageFault>>()?;
        Ok((tokens, armed))
    }

    /// Keeps `token` (and marks the database as one whose API requires tokens).
    pub fn add_token(&self, token: &StoredToken) -> Result<(), StorageFault> {
        self.with(|c| {
            let mut txn = c.transaction()?;
            txn.execute(
                "insert into nexa_api_tokens (hash, scope, name) values ($1, $2, $3)",
                &[&&token.hash[..], &token.scope, &token.name],
            )?;
            txn.execute(
                "insert into nexa_meta (key, value) values ($1, 1) on conflict (key) do nothing",
                &[&ARMED],
            )?;
            txn.commit()
        })
    }

    /// Removes every token named `name`; answers how many.
    pub fn revoke_tokens(&self, name: &str) -> Result<usize, StorageFault> {
        let n =
            self.with(|c| c.execute("delete from nexa_api_tokens where name = $1", &[&name]))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Every HTTP worker's session.
    pub fn sessions(&self) -> Result<Vec<StoredSession>, StorageFault> {
        let rows = self.with(|c| {
            c.query(
                "select worker, session, credential from nexa_http_workers",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(StoredSession {
                    worker: r.get(0),
                    session: hash32(r.get(1), "a session's hash")?,
                    credential: r
                        .get::<_, Option<&[u8]>>(2)
                        .map(|c| hash32(c, "a session's credential"))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Keeps `session`, replacing its worker's earlier one, and forgets the sessions of the
    /// workers in `forget`, in one transaction.
    pub fn put_session(
        &self,
        session: &StoredSession,
        forget: &[String],
    ) -> Result<(), StorageFault> {
        self.with(|c| {
            let mut txn = c.transaction()?;
            txn.execute(
                "insert into nexa_http_workers (worker, session, credential) values ($1, $2, $3) \
                 on conflict (worker) do update set session = excluded.session, \
                 credential = excluded.credential",
                &[
                    &session.worker,
                    &&session.session[..],
                    &session.credential.as_ref().map(|c| &c[..]),
                ],
            )?;
            if !forget.is_empty() {
                txn.execute(
                    "delete from nexa_http_workers where worker = any($1)",
                    &[&forget],
                )?;
            }
            txn.commit()
        })
    }
}

impl Drop for PgCredentials {
    fn drop(&mut self) {
        // The connection closes by blocking on its own runtime: off any async thread.
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if conn.is_some() {
            off_runtime(move || drop(conn));
        }
    }
}

/// Runs `f` on a thread of its own and waits for it.
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}
