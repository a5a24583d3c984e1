//! Waiting for jobs without polling: [`Changes`] tells waiters that jobs changed, and
//! [`wait`] and [`follow`] read again only then.
//!
//! Every write the plane makes to a job (a submission, a lease, a worker's report, a cancel,
//! an expiry, a deletion) bumps one counter after the store acknowledged it. A waiter marks
//! the counter seen, reads, and sleeps until it moves, so it misses nothing written after its
//! read. The counter says only that *some* job changed: a waiter woken for another job's
//! change reads once and sleeps again. A change the plane did not make itself (another
//! process writing the same store) is seen within [`RECHECK`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use nexa_runtime::{Job, JobId, JobState, LogLine, LogQuery, Store};
use tokio::sync::watch;

use super::PlaneError;
use super::blocking;

/// The longest a waiter sleeps without reading again.
const RECHECK: Duration = Duration::from_secs(5);

/// Log lines read at once while following.
const FOLLOW_PAGE: usize = 1000;

/// A counter of job changes, bumped after every write the plane makes to a job.
#[derive(Clone, Debug)]
pub(crate) struct Changes(Arc<watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Changes {
    /// Jobs changed.
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Sleeps until a change after the last one `rx` saw, or [`RECHECK`].
async fn next_change(rx: &mut watch::Receiver<u64>) {
    if let Ok(Err(_)) = tokio::time::timeout(RECHECK, rx.changed()).await {
        // The plane is gone: nothing will bump the counter any more.
        tokio::time::sleep(RECHECK).await;
    }
}

/// The job once it has ended (succeeded, failed or cancelled).
pub(crate) async fn wait(
    store: Arc<dyn Store>,
    changes: &Changes,
    id: JobId,
) -> Result<Job, PlaneError> {
    let mut rx = changes.watch();
    loop {
        rx.borrow_and_update();
        let job = blocking(&store, move |s| s.get(id)).await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        next_change(&mut rx).await;
    }
}

/// The jobs of `ids` that have ended, in the order of `ids` (each once), once at least
/// `at_least` of them have (all of them, at most).
pub(crate) async fn wait_many(
    store: Arc<dyn Store>,
    changes: &Changes,
    ids: &[JobId],
    at_least: usize,
) -> Result<Vec<Job>, PlaneError> {
    let mut ids = ids.to_vec();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let at_least = at_least.min(ids.len());
    let mut ended: HashMap<JobId, Job> = HashMap::new();
    let mut rx = changes.watch();
    loop {
        rx.borrow_and_update();
        let pending: Vec<JobId> = ids
            .iter()
            .filter(|id| !ended.contains_key(id))
            .copied()
            .collect();
        let read = blocking(&store, move |s| {
            pending
                .into_iter()
                .map(|id| s.get(id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        ended.extend(
            read.into_iter()
                .filter(|job| job.state.is_terminal())
                .map(|job| (job.id, job)),
        );
        if ended.len() >= at_least {
            return Ok(ids.iter().filter_map(|id| ended.remove(id)).collect());
        }
        next_change(&mut rx).await;
    }
}

/// The job each time it changed (a new event, state or progress), from how it is now to the
/// change that ended it.
pub(crate) fn watch(
    store: Arc<dyn Store>,
    changes: &Changes,
    id: JobId,
) -> impl Stream<Item = Result<Job, PlaneError>> + Send + 'static {
    struct Watcher {
        store: Arc<dyn Store>,
        rx: watch::Receiver<u64>,
        id: JobId,
        /// What the job looked like when last yielded.
        seen: Option<(usize, JobState, nexa_runtime::Timestamp)>,
        done: bool,
    }
    let watcher = Watcher {
        store,
        rx: changes.watch(),
        id,
        seen: None,
        done: false,
    };
    futures_util::stream::unfold(watcher, |mut w| async move {
        loop {
            if w.done {
                return None;
            }
            w.rx.borrow_and_update();
            let id = w.id;
            let job = match blocking(&w.store, move |s| s.get(id)).await {
                Ok(job) => job,
                Err(e) => {
                    w.done = true;
                    return Some((Err(e.into()), w));
                }
            };
            let now = Some((job.events.len(), job.state, job.updated_at));
            if now != w.seen {
                w.seen = now;
                w.done = job.state.is_terminal();
                return Some((Ok(job), w));
            }
            next_change(&mut w.rx).await;
        }
    })
}

/// Where following a job's log begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowFrom {
    /// The attempt to begin with, from 1; later attempts follow it.
    pub attempt: u32,
    /// Its first line to show.
    pub from_seq: u64,
}

impl Default for FollowFrom {
    /// The first line of the first attempt.
    fn default() -> Self {
        Self {
            attempt: 1,
            from_seq: 0,
        }
    }
}

impl FollowFrom {
    /// Line `from_seq` of `attempt` (from 1).
    pub fn new(attempt: u32, from_seq: u64) -> Self {
        Self {
            attempt: attempt.max(1),
            from_seq,
        }
    }
}

/// What following a job's log yields, in order.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LogEvent {
    /// An attempt began; the lines after this event are its lines.
    Attempt(u32),
    /// A line of the attempt named last.
    Line {
        /// The attempt, from 1.
        attempt: u32,
        /// The line.
        line: LogLine,
    },
    /// The job ended, in this state, and every line it wrote has been shown. Nothing follows.
    End(JobState),
}

/// A job's log, attempt after attempt, as lines arrive, until the job ends.
pub(crate) fn follow(
    store: Arc<dyn Store>,
    changes: &Changes,
    job: JobId,
    from: FollowFrom,
) -> impl Stream<Item = Result<LogEvent, PlaneError>> + Send + 'static {
    let follower = Follower {
        store,
        rx: changes.watch(),
        job,
        attempt: None,
        first: from.attempt.max(1),
        first_from: from.from_seq,
        next_seq: from.from_seq,
        out: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(follower, |mut f| async move {
        let item = f.next().await?;
        Some((item, f))
    })
}

struct Follower {
    store: Arc<dyn Store>,
    rx: watch::Receiver<u64>,
    job: JobId,
    /// The attempt being read; `None` until the first one followed has begun.
    attempt: Option<u32>,
    /// The attempt to begin with, and the line to begin it from.
    first: u32,
    first_from: u64,
    next_seq: u64,
    out: VecDeque<LogEvent>,
    done: bool,
}

impl Follower {
    /// The next event; `None` after the end (or an error).
    async fn next(&mut self) -> Option<Result<LogEvent, PlaneError>> {
        loop {
            if let Some(event) = self.out.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            if let Err(e) = self.read().await {
                self.done = true;
                return Some(Err(e));
            }
            if self.out.is_empty() && !self.done {
                next_change(&mut self.rx).await;
            }
        }
    }

    async fn lines(
        &self,
        attempt: u32,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, PlaneError> {
        let (job, query) = (
            self.job,
            LogQuery {
                attempt: Some(attempt),
                from_seq,
                limit,
            },
        );
        Ok(blocking(&self.store, move |s| s.read_logs(job, query))
            .await?
            .lines)
    }

    /// Reads what is new; queues the events it makes.
    async fn read(&mut self) -> Result<(), PlaneError> {
        if let Some(attempt) = self.attempt {
            let lines = self.lines(attempt, self.next_seq, FOLLOW_PAGE).await?;
            if let Some(last) = lines.last() {
                self.next_seq = last.seq + 1;
                self.out.extend(
                    lines
                        .into_iter()
                        .map(|line| LogEvent::Line { attempt, line }),
                );
                return Ok(());
            }
        }
        // Nothing new in this attempt: has another begun, or has the job ended?
        let id = self.job;
        let job = blocking(&self.store, move |s| s.get(id)).await?;
        let tried = job.attempts.len() as u32;
        match self.attempt {
            Some(a) if a < tried => self.begin(a + 1),
            None if tried >= self.first => self.begin(self.first),
            _ if job.state.is_terminal() => {
                // Lines are stored before the report that ends the job; one more read
                // catches any that came in after the read above.
                if let Some(attempt) = self.attempt
                    && !self.lines(attempt, self.next_seq, 1).await?.is_empty()
                {
                    return Ok(());
                }
                self.out.push_back(LogEvent::End(job.state));
                self.done = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn begin(&mut self, attempt: u32) {
        self.next_seq = if self.attempt.is_none() {
            self.first_from
        } else {
            0
        };
        self.attempt = Some(attempt);
        self.out.push_back(LogEvent::Attempt(attempt));
    }
}
