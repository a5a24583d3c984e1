//! Several control planes on one PostgreSQL database: one leads, the others stand by.
//!
//! A plane opens the database as a contender ([`PgStore::open_contending`]) under a name of
//! its own, and starts serving (binding its ports, leasing jobs) only once it holds the
//! leadership: a lease of [`TTL`] in the database with a fencing token that every write
//! checks. The leader renews it every [`RENEW`]; a standby looks every [`LOOK`] and takes over
//! once the leader stopped renewing. A leader that cannot renew for a whole [`TTL`], or finds
//! another took over, stops: its writes are already refused by the fence, and the plane says
//! so ([`ControlPlane::failure`](super::ControlPlane::failure)), so its process exits and a
//! supervisor can start it again, as a standby.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nexa_runtime::{Expired, StoreConfig};
use nexa_storage::{OpenError, PgStore};
use tracing::{info, warn};

use crate::clock::now;

/// How long a leadership lasts without renewal: a standby takes over this long after the
/// leader stopped.
pub(crate) const TTL: Duration = Duration::from_secs(3);
/// How often the leader renews.
const RENEW: Duration = Duration::from_millis(750);
/// How often a standby looks.
const LOOK: Duration = Duration::from_millis(500);

/// A name no other process uses: host, process and a random part.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let nonce = std::collections::hash_map::RandomState::new();
    let nonce = std::hash::BuildHasher::hash_one(&nonce, now().0);
    format!("{host}:{}:{:08x}", std::process::id(), nonce as u32)
}

/// Opens the database as a contender and waits until this plane leads it, then recovers the
/// leases (as an opened store does). Blocking: run it off the async threads.
pub(crate) fn lead(url: &str, config: StoreConfig) -> Result<(PgStore, Vec<Expired>), OpenError> {
    let name = holder();
    let store = PgStore::open_contending(url, config, name.clone())?;
    let database = |detail: String| OpenError::Database {
        location: store.location().to_owned(),
        detail,
    };
    let mut told = None::<Instant>;
    loop {
        match store.lead(TTL) {
            Ok(true) => break,
            Ok(false) => {
                if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    let leader = store.leader().ok().flatten().unwrap_or_default();
                    info!(
                        leader,
                        "standing by: another control plane leads the database"
                    );
                    told = Some(Instant::now());
                }
            }
            Err(e) => return Err(database(format!("cannot take the leadership: {e}"))),
        }
        std::thread::sleep(LOOK);
    }
    info!(
        database = store.location(),
        holder = name,
        "this control plane leads the database; jobs are kept in PostgreSQL"
    );
    let recovered = store
        .recover(now())
        .map_err(|e| database(format!("recovery failed: {e}")))?;
    Ok((store, recovered))
}

/// Renews the leadership for as long as the plane runs; when it is lost, says why in
/// `failure` and wakes `failing`.
pub(crate) fn keep(
    store: Arc<PgStore>,
    failure: Arc<OnceLock<String>>,
    failing: Arc<tokio::sync::Notify>,
) {
    let store = Arc::downgrade(&store);
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let outcome = tokio::task::spawn_blocking(move || store.lead(TTL)).await;
            let why = match outcome {
                Ok(Ok(true)) => {
                    renewed = Instant::now();
                    continue;
                }
                Ok(Ok(false)) => "another control plane took over the database".to_owned(),
                Ok(Err(e)) if renewed.elapsed() < TTL => {
                    warn!("cannot renew the leadership of the database (retrying): {e}");
                    continue;
                }
                Ok(Err(e)) => format!("cannot renew the leadership of the database: {e}"),
                Err(e) => format!("the leadership task failed: {e}"),
            };
            let _ = failure.set(format!(
                "{why}; this control plane stopped writing and must be restarted (it stands \
                 by until it leads again)"
            ));
            failing.notify_waiters();
            return;
        }
    });
}
