//! The wall clock. The core takes time as an argument; this is where the actors read it.

use std::time::{SystemTime, UNIX_EPOCH};

use nexa_runtime::Timestamp;

/// Now, in milliseconds since the Unix epoch.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}
