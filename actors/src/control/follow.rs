//! Waiting for jobs without polling: [`Changes`] wakes the waiters of the jobs a write
//! changed, and [`wait`], [`wait_many`], [`watch`] and [`follow`] read again only then.
//!
//! Every write the plane makes (a submission, a lease, a worker's report or log lines, a
//! cancel, an expiry, a deletion) goes through [`write`], which learns from the store which
//! jobs it changed (their records or logs, the cascade to dependents included:
//! [`nexa_runtime::recording`]) and, once the store acknowledged it, wakes the waiters of
//! those jobs and no others. A waiter registers its interest before it reads, so it misses
//! nothing written after its read. A change the plane did not make itself (another process
//! writing the same store) is seen within [`RECHECK`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use nexa_runtime::{Job, JobId, JobState, LogLine, LogQuery, Store, StoreError};
use tokio::sync::Notify;

use super::PlaneError;
use super::{blocking, read};

/// The longest a waiter sleeps without reading again.
const RECHECK: Duration = Duration::from_secs(5);

/// Log lines read at once while following.
const FOLLOW_PAGE: usize = 1000;

/// The waiters of each job, woken when a write changed it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Changes(Arc<Mutex<Waiters>>);

#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    /// By job, its waiters: each its key and the waiter.
    by_job: HashMap<JobId, Vec<(u64, Arc<Waiter>)>>,
}

/// One waiter: how to wake it, and which of its jobs changed since it last looked.
#[derive(Debug, Default)]
struct Waiter {
    notify: Notify,
    changed: Mutex<Vec<JobId>>,
}

impl Changes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `jobs` changed: their waiters read again.
    pub(crate) fn touched(&self, jobs: &[JobId]) {
        if jobs.is_empty() {
            return;
        }
        let waiters = self.lock();
        for id in jobs {
            for (_, waiter) in waiters.by_job.get(id).into_iter().flatten() {
                let mut changed = waiter
                    .changed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !changed.contains(id) {
                    changed.push(*id);
                }
                drop(changed);
                waiter.notify.notify_one();
            }
        }
    }

    /// Interest in `jobs`: [`Interest::changed`] returns once one of them changed since the
    /// interest was taken (or since the last time it returned).
    pub(crate) fn interest(&self, jobs: &[JobId]) -> Interest {
        let waiter = Arc::new(Waiter::default());
        let mut waiters = self.lock();
        let key = waiters.next;
        waiters.next += 1;
        for id in jobs {
            waiters
                .by_job
                .entry(*id)
                .or_default()
                .push((key, waiter.clone()));
        }
        drop(waiters);
        Interest {
            changes: self.clone(),
            key,
            jobs: jobs.to_vec(),
            waiter,
        }
    }
}

/// A waiter's interest in some jobs, withdrawn when dropped.
pub(crate) struct Interest {
    changes: Changes,
    key: u64,
    jobs: Vec<JobId>,
    waiter: Arc<Waiter>,
}

impl Interest {
    /// Returns once one of the jobs changed, with those that did since the last time it
    /// returned; or after [`RECHECK`] with `None`: any may have (another process may have
    /// changed them).
    async fn changed(&self) -> Option<Vec<JobId>> {
        tokio::time::timeout(RECHECK, self.waiter.notify.notified())
            .await
            .ok()?;
        let mut changed = self
            .waiter
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(std::mem::take(&mut *changed))
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut waiters = self.changes.lock();
        for id in &self.jobs {
            if let Some(list) = waiters.by_job.get_mut(id) {
                list.retain(|(k, _)| *k != self.key);
                if list.is_empty() {
                    waiters.by_job.remove(id);
                }
            }
        }
    }
}

/// Runs a store write off the async threads; once it is stored, the waiters of the jobs it
/// changed are woken.
pub(crate) async fn write<R: Send + 'static>(
    store: &Arc<dyn Store>,
    changes: &Changes,
    op: impl FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let (result, touched) = blocking(store, move |s| Ok(nexa_runtime::recording(|| op(s))))
        .await
        .unwrap_or_else(|e| (Err(e), Vec::new()));
    changes.touched(&touched);
    result
}

/// The job once it has ended (succeeded, failed or cancelled).
pub(crate) async fn wait(
    store: Arc<dyn Store>,
    changes: &Changes,
    id: JobId,
) -> Result<Job, PlaneError> {
    let interest = changes.interest(&[id]);
    loop {
        let job = read(&store, move |s| s.get(id)).await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        interest.changed().await;
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
    let interest = changes.interest(&ids);
    // Every job first; then only those a write changed (every one again after a quiet
    // RECHECK), so that a set of n jobs costs about n reads a change, not n a change each.
    let mut changed = ids.clone();
    loop {
        let pending: Vec<JobId> = changed
            .into_iter()
            .filter(|id| !ended.contains_key(id))
            .collect();
        if !pending.is_empty() {
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
        }
        if ended.len() >= at_least {
            return Ok(ids.iter().filter_map(|id| ended.remove(id)).collect());
        }
        changed = interest.changed().await.unwrap_or_else(|| ids.clone());
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
        interest: Interest,
        id: JobId,
        /// What the job looked like when last yielded.
        seen: Option<(usize, JobState, nexa_runtime::Timestamp)>,
        done: bool,
    }
    let watcher = Watcher {
        store,
        interest: changes.interest(&[id]),
        id,
        seen: None,
        done: false,
    };
    futures_util::stream::unfold(watcher, |mut w| async move {
        loop {
            if w.done {
                return None;
            }
            let id = w.id;
            let job = match read(&w.store, move |s| s.get(id)).await {
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
            w.interest.changed().await;
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
        interest: changes.interest(&[job]),
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
    interest: Interest,
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
            if let Err(e) = self.read().await {
                self.done = true;
                return Some(Err(e));
            }
            if self.out.is_empty() && !self.done {
                self.interest.changed().await;
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
        let job = read(&self.store, move |s| s.get(id)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter is told which of its jobs changed since it last looked, each once, and is
    /// not woken by other jobs.
    #[tokio::test]
    async fn an_interest_hears_which_of_its_jobs_changed() {
        let changes = Changes::default();
        let (a, b, c) = (JobId(1), JobId(2), JobId(3));
        let interest = changes.interest(&[a, b]);
        changes.touched(&[c]);
        changes.touched(&[b, c]);
        changes.touched(&[b]);
        changes.touched(&[a]);
        assert_eq!(interest.changed().await, Some(vec![b, a]));

        changes.touched(&[c]);
        let quiet = tokio::time::timeout(Duration::from_millis(50), interest.changed()).await;
        assert!(quiet.is_err(), "woken by a job it has no interest in");

        drop(interest);
        assert!(changes.lock().by_job.is_empty(), "withdrawn when dropped");
    }
}
