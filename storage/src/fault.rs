//! redb's errors, translated into the kinds of failure callers act on.

use std::io;

use nexa_runtime::{FaultKind, StorageFault};

/// Classifies any redb error.
pub(crate) fn fault(e: impl Into<redb::Error>) -> StorageFault {
    let e: redb::Error = e.into();
    let kind = match &e {
        redb::Error::Io(io) => io_kind(io),
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_) => FaultKind::Corrupt,
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => FaultKind::Unavailable,
        _ => FaultKind::Io,
    };
    let message = match kind {
        FaultKind::DiskFull => format!("{e}; free disk space and retry"),
        FaultKind::ReadOnly => format!("{e}; the store's file or folder cannot be written"),
        FaultKind::Unavailable => format!("{e}; the store is reopening after an I/O error, retry"),
        _ => e.to_string(),
    };
    StorageFault::new(kind, message)
}

/// Classifies an I/O error.
pub(crate) fn io_kind(e: &io::Error) -> FaultKind {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    const EROFS: i32 = 30;
    const EACCES: i32 = 13;
    const EPERM: i32 = 1;
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded, _)
        | (_, Some(ENOSPC | EDQUOT)) => FaultKind::DiskFull,
        (io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied, _)
        | (_, Some(EROFS | EACCES | EPERM)) => FaultKind::ReadOnly,
        _ => FaultKind::Io,
    }
}
