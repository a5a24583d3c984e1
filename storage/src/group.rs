//! Group commit, as both durable stores do it: writes queue for one writer thread, which runs
//! every write waiting in the queue inside one transaction, commits it once and only then
//! answers each caller. A write whose operation hit a storage fault fails the whole group
//! (none of it is stored); one refused by the store's rules (a stale lease, say) wrote
//! nothing and the group goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, Sender};

use nexa_runtime::{FaultKind, StorageFault, StoreError, Tables, WriteOp};

/// Most writes committed in one transaction.
pub(crate) const MAX_GROUP: usize = 4096;

/// The answer half of a queued write: told how the group's commit went.
pub(crate) type Reply = Box<dyn FnOnce(Result<(), StorageFault>) + Send>;

/// A queued write. Given the transaction's tables (or `None` when the group already failed),
/// it runs its operation and returns the storage fault it hit, if any, and its reply.
pub(crate) type Request =
    Box<dyn FnOnce(Option<&mut dyn Tables>) -> (Option<StorageFault>, Reply) + Send>;

pub(crate) fn unavailable(why: &str) -> StorageFault {
    StorageFault::new(FaultKind::Unavailable, why)
}

/// Queues `op` for the writer behind `requests` and waits for its answer: the operation's
/// result once its group has committed, or why the group failed.
pub(crate) fn write<R: Send + 'static>(
    requests: Option<&Sender<Request>>,
    op: WriteOp<R>,
) -> Result<R, StoreError> {
    let (tx, rx) = mpsc::sync_channel::<Result<R, StoreError>>(1);
    let request: Request = Box::new(move |tables| {
        let result = match tables {
            Some(t) => op(t),
            None => Err(unavailable("not run: an earlier write of its group failed").into()),
        };
        let fault = match &result {
            Err(StoreError::Storage(f)) => Some(f.clone()),
            _ => None,
        };
        let reply: Reply = Box::new(move |commit| {
            let answer = match commit {
                Ok(()) => result,
                Err(f) => Err(f.into()),
            };
            let _ = tx.send(answer);
        });
        (fault, reply)
    });
    let stopped = || StoreError::from(unavailable("the store's writer has stopped"));
    requests
        .ok_or_else(stopped)?
        .send(request)
        .map_err(|_| stopped())?;
    rx.recv().map_err(|_| {
        StoreError::from(StorageFault::new(
            FaultKind::Io,
            "the write failed inside the store and was not stored",
        ))
    })?
}

/// The next group: `first` and every request waiting behind it, up to [`MAX_GROUP`].
pub(crate) fn next_group(first: Request, requests: &Receiver<Request>) -> Vec<Request> {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match requests.try_recv() {
            Ok(r) => group.push(r),
            Err(_) => break,
        }
    }
    group
}

/// Answers every request of a group that cannot run with `failure`.
pub(crate) fn refuse(
    group: Vec<Request>,
    failure: StorageFault,
) -> (Vec<Reply>, Option<StorageFault>) {
    let replies = group.into_iter().map(|r| r(None).1).collect();
    (replies, Some(failure))
}

/// Runs the requests of a group against `tables`, in order, stopping at the first storage
/// fault (the requests after it are answered without running). Returns the replies and the
/// fault: the caller commits when there is none, and rolls back otherwise.
pub(crate) fn run(
    tables: &mut dyn Tables,
    group: Vec<Request>,
) -> (Vec<Reply>, Option<StorageFault>) {
    let mut replies = Vec::with_capacity(group.len());
    let mut failure = None;
    let mut requests = group.into_iter();
    for request in requests.by_ref() {
        match catch_unwind(AssertUnwindSafe(|| request(Some(&mut *tables)))) {
            Ok((fault, reply)) => {
                replies.push(reply);
                if fault.is_some() {
                    failure = fault;
                    break;
                }
            }
            // That caller sees its answer channel close. Nothing of the group is committed:
            // the op may have written half of its changes.
            Err(_) => {
                failure = Some(StorageFault::new(
                    FaultKind::Io,
                    "a store operation panicked; its group was not stored",
                ));
                break;
            }
        }
    }
    replies.extend(requests.map(|r| r(None).1));
    (replies, failure)
}

/// Tells every caller of a group how its commit went.
pub(crate) fn answer(replies: Vec<Reply>, failure: Option<StorageFault>) {
    let outcome = failure.map_or(Ok(()), Err);
    for reply in replies {
        reply(outcome.clone());
    }
}
