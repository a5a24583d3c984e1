//! [`PgStore`]: the store in a PostgreSQL database, with group commit.
//!
//! The store's rules are the runtime's (`store/ops.rs`); this engine gives them what the redb
//! store gives them, over PostgreSQL:
//!
//! - **Snapshot reads**: each read runs in a `REPEATABLE READ READ ONLY` transaction on a
//!   pooled connection of the caller's thread.
//! - **Atomic, durable writes with group commit**: writes go to one writer thread and its own
//!   connection, which runs every write waiting in its queue inside one transaction and
//!   commits it once (see `group.rs`); a caller is answered only after `COMMIT` returned.
//! - **Tables a person can read**: one table per table of the runtime's `Tables`, prefixed
//!   `nexa_`, and readable columns on `nexa_jobs` (`id`, `state`, `job_type`, `priority`,
//!   `worker`, `created_at`, `updated_at`) beside the job's record, so
//!   `select id, state, job_type, created_at from nexa_jobs` shows the jobs in `psql`.
//! - **Versioned migrations** at open ([`SCHEMA_VERSION`]), under an advisory lock, so two
//!   control planes opening one database migrate it once; a database of a newer schema is
//!   refused.
//! - **Lost connections**: a connection that breaks is replaced on the next read or group.
//!   A group that fails before its `COMMIT` is answered with the failure (nothing of it was
//!   stored); one whose `COMMIT` was cut off is answered with a failure too, since its outcome
//!   is unknown: nothing acknowledged is lost, and nothing is acknowledged that may not be
//!   stored.
//!
//! The connection string is libpq's (`postgres://user:password@host:port/db?sslmode=require`
//! or `host=… user=…`). TLS uses rustls with the system's trusted roots; `sslmode` decides
//! whether it is used.

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexa_runtime::{
    Call, Counter, Engine, Expired, FaultKind, Job, JobId, JobState, LogLine, LogMeta, QueueClass,
    QueueEntry, QueueKey, ReadTables, StorageFault, Store, StoreConfig, StoreError, Tables,
    Timestamp, Visit, WorkerId, WorkerRecord, WriteOp,
};
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, Row, Statement, Transaction};

use self::pending::{JobRow, Pending};
use crate::group::{self, Request, unavailable};
use crate::record::{decode, encode};
use crate::redb_store::OpenError;

pub use self::credentials::{PgCredentials, StoredSession, StoredToken};

mod credentials;
mod pending;

/// The schema version this build writes, kept in `nexa_meta`.
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the runtime's `Tables`.
    "
    create table nexa_jobs (
        id bigint primary key,
        state text not null,
        job_type text not null,
        priority integer not null,
        worker text,
        created_ms bigint not null,
        updated_ms bigint not null,
        created_at timestamptz generated always as (to_timestamp(created_ms / 1000.0)) stored,
        updated_at timestamptz generated always as (to_timestamp(updated_ms / 1000.0)) stored,
        record bytea not null
    );
    create table nexa_job_states (state smallint not null, job bigint not null, primary key (state, job));
    create table nexa_queue (sort_key bigint not null, job bigint not null, entry bytea not null, primary key (sort_key, job));
    create table nexa_deadlines (at_ms bigint not null, job bigint not null, primary key (at_ms, job));
    create table nexa_idempotency (key text primary key, job bigint not null);
    create table nexa_dependents (dep bigint not null, child bigint not null, primary key (dep, child));
    create table nexa_log_meta (job bigint primary key, record bytea not null);
    create table nexa_logs (job bigint not null, attempt integer not null, seq bigint not null, record bytea not null, primary key (job, attempt, seq));
    create table nexa_workers (id text primary key, record bytea not null);
    create table nexa_worker_jobs (worker text not null, job bigint not null, primary key (worker, job));
    create table nexa_counters (name text primary key, value bigint not null);
    ",
    // 2: leadership, for several control planes on one database.
    "
    create table nexa_leader (
        id smallint primary key check (id = 1),
        holder text not null,
        token bigint not null,
        expires_at timestamptz not null
    );
    ",
    // 3: the API's tokens and its HTTP workers' sessions (hashes only), which every control
    // plane on the database shares.
    "
    create table nexa_api_tokens (
        hash bytea primary key check (length(hash) = 32),
        scope text not null check (scope in ('full', 'read', 'worker')),
        name text not null,
        created_at timestamptz not null default now()
    );
    create table nexa_http_workers (
        worker text primary key,
        session bytea not null check (length(session) = 32),
        credential bytea check (length(credential) = 32)
    );
    ",
    // 4: the queue by class (filled from the queue by `index_queue_classes`).
    "
    create table nexa_class_queue (
        class bytea not null,
        sort_key bigint not null,
        job bigint not null,
        not_before_ms bigint,
        primary key (class, sort_key, job)
    );
    ",
];

/// The migration that added `nexa_class_queue`, which the queue's rows then fill.
const CLASS_QUEUE_MIGRATION: usize = 4;

/// The key of the advisory lock held while the schema is checked and migrated ("nexa").
const MIGRATION_LOCK: i64 = 0x6e65_7861;

/// Rows a scan reads at a time; a visitor that stops early costs at most this many more.
const SCAN: i64 = 256;

/// Idle read connections kept.
const MAX_IDLE_READERS: usize = 8;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// What connections are made from.
struct Target {
    config: postgres::Config,
    /// TLS, made once: the connection string's `sslmode` says whether it is used.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The database as shown in messages, without its password.
    location: String,
}

impl Target {
    /// The database at `url` (libpq's forms), not yet connected to.
    fn new(url: &str) -> Result<Self, OpenError> {
        let mut config = postgres::Config::from_str(url).map_err(|e| OpenError::Database {
            location: "given".into(),
            detail: format!("it is not a PostgreSQL connection string: {e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("nexa");
        }
        let location = location_of(&config);
        let tls = tls().map_err(|e| OpenError::Database {
            location: location.clone(),
            detail: format!("cannot set up TLS: {e}"),
        })?;
        Ok(Self {
            config,
            tls,
            location,
        })
    }

    /// The first connection: made, and the schema checked and migrated on it.
    fn open(&self) -> Result<Conn, OpenError> {
        let mut conn = self.connect().map_err(|e| OpenError::Database {
            location: self.location.clone(),
            detail: connect_failure(&e),
        })?;
        migrate(&mut conn.client, &self.location)?;
        Ok(conn)
    }

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.config.connect(self.tls.clone())?;
        // The statements are few and prepared once, their plans do not depend on the values:
        // planned once, not on each execution.
        client.batch_execute("set plan_cache_mode = force_generic_plan")?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }
}

/// TLS through rustls, trusting the system's roots.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A PostgreSQL error in full: the server's message and detail when it sent one (the
/// client's `Display` says only "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_owned(),
        },
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A PostgreSQL error as the kind of storage failure callers act on.
fn pg_fault(e: postgres::Error) -> StorageFault {
    use postgres::error::SqlState;
    let kind = match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => FaultKind::DiskFull,
        Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => FaultKind::ReadOnly,
        Some(c)
            if *c == SqlState::DATA_CORRUPTED
                || *c == SqlState::UNDEFINED_TABLE
                || *c == SqlState::UNDEFINED_COLUMN =>
        {
            FaultKind::Corrupt
        }
        Some(_) => FaultKind::Io,
        // No SQL state: the connection failed or was lost.
        None => FaultKind::Unavailable,
    };
    StorageFault::new(kind, format!("PostgreSQL: {}", describe(&e)))
}

fn corrupt(what: String) -> StorageFault {
    StorageFault::new(FaultKind::Corrupt, what)
}

/// A stored integer as a column's `bigint` (the runtime's ids, times and sequence numbers
/// stay far below 2^63; a larger one would saturate, past every row).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The queue key stored as `(sort_key, job)`.
fn queue_key((sort_key, job): (i64, i64)) -> Result<QueueKey, StorageFault> {
    let rank = u32::try_from(sort_key)
        .map_err(|_| corrupt(format!("a queue rank is out of range ({sort_key})")))?;
    Ok(QueueKey::from_sort_key((rank, uint(job, "a queued job")?)))
}

/// A `bigint` column back as the runtime's integer.
fn uint(v: i64, what: &str) -> Result<u64, StorageFault> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} is negative ({v})")))
}

/// The tables of one transaction: reads for a read, reads and writes for a group.
struct PgTables<'t> {
    txn: RefCell<Transaction<'t>>,
    statements: RefCell<&'t mut HashMap<&'static str, Statement>>,
    /// The counters as this transaction has them, and whether it changed them: read once,
    /// written once at the end (every submit and lease moves one).
    counters: RefCell<HashMap<&'static str, (u64, bool)>>,
    /// The writes not yet sent (see `pending.rs`).
    pending: RefCell<Pending>,
}

impl<'t> PgTables<'t> {
    fn new(txn: Transaction<'t>, statements: &'t mut HashMap<&'static str, Statement>) -> Self {
        Self {
            txn: RefCell::new(txn),
            statements: RefCell::new(statements),
            counters: RefCell::default(),
            pending: RefCell::default(),
        }
    }

    /// Sends the pending writes, a statement per table: before a read they may change, and
    /// before the commit.
    fn flush(&self) -> Result<(), StorageFault> {
        if self.pending.borrow().is_empty() {
            return Ok(());
        }
        let batches = self.pending.borrow_mut().take();
        for b in batches {
            let params: Vec<&(dyn ToSql + Sync)> = b.params.iter().map(|p| &**p).collect();
            self.execute(b.sql, &params)?;
        }
        Ok(())
    }

    /// Writes the counters the transaction changed; before its commit.
    fn flush_counters(&self) -> Result<(), StorageFault> {
        let changed: Vec<(&'static str, u64)> = self
            .counters
            .borrow()
            .iter()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(name, (value, _))| (*name, *value))
            .collect();
        for (name, value) in changed {
            self.execute(
                "insert into nexa_counters (name, value) values ($1, $2) \
                 on conflict (name) do update set value = excluded.value",
                &[&name, &int(value)],
            )?;
        }
        Ok(())
    }

    /// `sql`, prepared once per connection.
    fn statement(&self, sql: &'static str) -> Result<Statement, StorageFault> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.txn.borrow_mut().prepare(sql).map_err(pg_fault)?;
        self.statements.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageFault> {
        let s = self.statement(sql)?;
        self.txn.borrow_mut().query(&s, params).map_err(pg_fault)
    }

    fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), StorageFault> {
        let s = self.statement(sql)?;
        self.txn
            .borrow_mut()
            .execute(&s, params)
            .map(drop)
            .map_err(pg_fault)
    }

    /// Visits job ids from `sql`, a page of [`SCAN`] at a time: `sql` takes the bound to
    /// continue below (`$2`, exclusive) and the page size (`$3`) after `key` (`$1`).
    fn ids_desc(
        &self,
        sql: &'static str,
        key: &(dyn ToSql + Sync),
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault> {
        self.flush()?;
        let mut below = before.map_or(i64::MAX, |b| int(b.0));
        loop {
            let rows = self.query(sql, &[key, &below, &SCAN])?;
            for row in &rows {
                let id: i64 = row.get(0);
                below = id;
                if !visit(JobId(uint(id, "a job id")?)) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < SCAN {
                return Ok(());
            }
        }
    }
}

impl ReadTables for PgTables<'_> {
    fn job(&self, id: JobId) -> Result<Option<Job>, StorageFault> {
        if let Some(row) = self.pending.borrow().jobs.get(&int(id.0)) {
            return row.as_ref().map(|r| decode(&r.record, "job")).transpose();
        }
        let rows = self.query("select record from nexa_jobs where id = $1", &[&int(id.0)])?;
        rows.first()
            .map(|r| decode(r.get::<_, &[u8]>(0), "job"))
            .transpose()
    }

    fn jobs_desc(&self, before: Option<JobId>, visit: Visit<'_, Job>) -> Result<(), StorageFault> {
        self.flush()?;
        let mut below = before.map_or(i64::MAX, |b| int(b.0));
        loop {
            let rows = self.query(
                "select id, record from nexa_jobs where id < $1 order by id desc limit $2",
                &[&below, &SCAN],
            )?;
            for row in &rows {
                below = row.get(0);
                if !visit(decode(row.get::<_, &[u8]>(1), "job")?) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < SCAN {
                return Ok(());
            }
        }
    }

    fn state_desc(
        &self,
        state: JobState,
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault> {
        self.ids_desc(
            "select job from nexa_job_states where state = $1 and job < $2 order by job desc limit $3",
            &i16::from(state.code()),
            before,
            visit,
        )
    }

    fn worker_jobs_desc(
        &self,
        worker: &WorkerId,
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault> {
        self.ids_desc(
            "select job from nexa_worker_jobs where worker = $1 and job < $2 order by job desc limit $3",
            &worker.as_str(),
            before,
            visit,
        )
    }

    fn queue(&self, visit: Visit<'_, (QueueKey, QueueEntry)>) -> Result<(), StorageFault> {
        self.flush()?;
        let mut after = (-1i64, -1i64);
        loop {
            let rows = self.query(
                "select sort_key, job, entry from nexa_queue where (sort_key, job) > ($1, $2) \
                 order by sort_key, job limit $3",
                &[&after.0, &after.1, &SCAN],
            )?;
            for row in &rows {
                after = (row.get(0), row.get(1));
                let key = queue_key(after)?;
                if !visit((key, decode(row.get::<_, &[u8]>(2), "queue entry")?)) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < SCAN {
                return Ok(());
            }
        }
    }

    fn queue_classes(&self, visit: Visit<'_, QueueClass>) -> Result<(), StorageFault> {
        self.flush()?;
        // Each distinct class by one index probe (a loose index scan), not a read of each row.
        let rows = self.query(
            "with recursive c(class) as ( \
               (select class from nexa_class_queue order by class limit 1) \
               union all \
               select (select q.class from nexa_class_queue q where q.class > c.class \
                       order by q.class limit 1) from c where c.class is not null \
             ) select class from c where class is not null",
            &[],
        )?;
        for row in &rows {
            if !visit(decode(row.get::<_, &[u8]>(0), "queue class")?) {
                break;
            }
        }
        Ok(())
    }

    fn class_queue(
        &self,
        class: &QueueClass,
        visit: Visit<'_, (QueueKey, Option<Timestamp>)>,
    ) -> Result<(), StorageFault> {
        self.flush()?;
        let class = encode(class)?;
        let mut after = (-1i64, -1i64);
        loop {
            let rows = self.query(
                "select sort_key, job, not_before_ms from nexa_class_queue \
                 where class = $1 and (sort_key, job) > ($2, $3) order by sort_key, job limit $4",
                &[&class, &after.0, &after.1, &SCAN],
            )?;
            for row in &rows {
                after = (row.get(0), row.get(1));
                let key = queue_key(after)?;
                let not_before = row
                    .get::<_, Option<i64>>(2)
                    .map(|t| uint(t, "a retry backoff").map(Timestamp))
                    .transpose()?;
                if !visit((key, not_before)) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < SCAN {
                return Ok(());
            }
        }
    }

    fn deadlines_until(
        &self,
        now: Timestamp,
        visit: Visit<'_, (Timestamp, JobId)>,
    ) -> Result<(), StorageFault> {
        self.flush()?;
        let mut after = (-1i64, -1i64);
        loop {
            let rows = self.query(
                "select at_ms, job from nexa_deadlines where at_ms <= $1 and (at_ms, job) > ($2, $3) \
                 order by at_ms, job limit $4",
                &[&int(now.0), &after.0, &after.1, &SCAN],
            )?;
            for row in &rows {
                after = (row.get(0), row.get(1));
                let entry = (
                    Timestamp(uint(after.0, "a deadline")?),
                    JobId(uint(after.1, "a job id")?),
                );
                if !visit(entry) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < SCAN {
                return Ok(());
            }
        }
    }

    fn idempotent(&self, key: &str) -> Result<Option<JobId>, StorageFault> {
        if let Some(job) = self.pending.borrow().idempotency.get(key) {
            return job.map(|j| uint(j, "a job id").map(JobId)).transpose();
        }
        let rows = self.query("select job from nexa_idempotency where key = $1", &[&key])?;
        rows.first()
            .map(|r| uint(r.get(0), "a job id").map(JobId))
            .transpose()
    }

    fn dependents(&self, id: JobId) -> Result<Vec<JobId>, StorageFault> {
        self.flush()?;
        self.query(
            "select child from nexa_dependents where dep = $1 order by child",
            &[&int(id.0)],
        )?
        .iter()
        .map(|r| uint(r.get(0), "a job id").map(JobId))
        .collect()
    }

    fn log_meta(&self, id: JobId) -> Result<Option<LogMeta>, StorageFault> {
        if let Some(meta) = self.pending.borrow().log_meta.get(&int(id.0)) {
            return meta.as_ref().map(|r| decode(r, "log meta")).transpose();
        }
        let rows = self.query(
            "select record from nexa_log_meta where job = $1",
            &[&int(id.0)],
        )?;
        rows.first()
            .map(|r| decode(r.get::<_, &[u8]>(0), "log meta"))
            .transpose()
    }

    fn logs(
        &self,
        id: JobId,
        attempt: u32,
        from_seq: u64,
        visit: Visit<'_, LogLine>,
    ) -> Result<(), StorageFault> {
        self.flush()?;
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let mut from = int(from_seq);
        loop {
            let rows = self.query(
                "select seq, record from nexa_logs where job = $1 and attempt = $2 and seq >= $3 \
                 order by seq limit $4",
                &[&int(id.0), &attempt, &from, &SCAN],
            )?;
            for row in &rows {
                from = row.get::<_, i64>(0).saturating_add(1);
                if !visit(decode(row.get::<_, &[u8]>(1), "log line")?) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < SCAN {
                return Ok(());
            }
        }
    }

    fn worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, StorageFault> {
        if let Some(worker) = self.pending.borrow().workers.get(id.as_str()) {
            return worker.as_ref().map(|r| decode(r, "worker")).transpose();
        }
        let rows = self.query(
            "select record from nexa_workers where id = $1",
            &[&id.as_str()],
        )?;
        rows.first()
            .map(|r| decode(r.get::<_, &[u8]>(0), "worker"))
            .transpose()
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StorageFault> {
        self.flush()?;
        self.query("select record from nexa_workers order by id", &[])?
            .iter()
            .map(|r| decode(r.get::<_, &[u8]>(0), "worker"))
            .collect()
    }

    fn worker_count(&self) -> Result<usize, StorageFault> {
        self.flush()?;
        let rows = self.query("select count(*) from nexa_workers", &[])?;
        let n: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn counter(&self, counter: Counter) -> Result<u64, StorageFault> {
        if let Some((value, _)) = self.counters.borrow().get(counter.name()) {
            return Ok(*value);
        }
        let rows = self.query(
            "select value from nexa_counters where name = $1",
            &[&counter.name()],
        )?;
        let value = rows
            .first()
            .map_or(Ok(0), |r| uint(r.get(0), counter.name()))?;
        self.counters
            .borrow_mut()
            .insert(counter.name(), (value, false));
        Ok(value)
    }
}

impl Tables for PgTables<'_> {
    fn put_job(&mut self, job: &Job) -> Result<(), StorageFault> {
        let row = JobRow {
            state: job.state.as_str(),
            job_type: job.spec.job_type().as_str(),
            priority: job.spec.priority,
            worker: job.attempts.last().map(|a| a.worker.as_str().to_owned()),
            created_ms: int(job.submitted_at.0),
            updated_ms: int(job.updated_at.0),
            record: encode(job)?,
        };
        self.pending.get_mut().jobs.insert(int(job.id.0), Some(row));
        Ok(())
    }

    fn queue_put(&mut self, key: QueueKey, entry: &QueueEntry) -> Result<(), StorageFault> {
        let (rank, job) = key.sort_key();
        let entry = encode(entry)?;
        let queue = &mut self.pending.get_mut().queue;
        queue.insert((i64::from(rank), int(job)), Some(entry));
        Ok(())
    }

    fn queue_remove(&mut self, key: QueueKey) -> Result<(), StorageFault> {
        let (rank, job) = key.sort_key();
        let queue = &mut self.pending.get_mut().queue;
        queue.insert((i64::from(rank), int(job)), None);
        Ok(())
    }

    fn class_queue_put(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
        not_before: Option<Timestamp>,
    ) -> Result<(), StorageFault> {
        let (rank, job) = key.sort_key();
        let index = &mut self.pending.get_mut().class_queue;
        index.insert(
            (encode(class)?, i64::from(rank), int(job)),
            Some(not_before.map(|t| int(t.0))),
        );
        Ok(())
    }

    fn class_queue_remove(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
    ) -> Result<(), StorageFault> {
        let (rank, job) = key.sort_key();
        let index = &mut self.pending.get_mut().class_queue;
        index.insert((encode(class)?, i64::from(rank), int(job)), None);
        Ok(())
    }

    fn state_put(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        let states = &mut self.pending.get_mut().states;
        states.insert((i16::from(state.code()), int(id.0)), true);
        Ok(())
    }

    fn state_remove(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        let states = &mut self.pending.get_mut().states;
        states.insert((i16::from(state.code()), int(id.0)), false);
        Ok(())
    }

    fn worker_job_put(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        let index = &mut self.pending.get_mut().worker_jobs;
        index.insert((worker.as_str().to_owned(), int(id.0)), true);
        Ok(())
    }

    fn worker_job_remove(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        let index = &mut self.pending.get_mut().worker_jobs;
        index.insert((worker.as_str().to_owned(), int(id.0)), false);
        Ok(())
    }

    fn deadline_put(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        let deadlines = &mut self.pending.get_mut().deadlines;
        deadlines.insert((int(at.0), int(id.0)), true);
        Ok(())
    }

    fn deadline_remove(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        let deadlines = &mut self.pending.get_mut().deadlines;
        deadlines.insert((int(at.0), int(id.0)), false);
        Ok(())
    }

    fn put_idempotent(&mut self, key: &str, id: JobId) -> Result<(), StorageFault> {
        let keys = &mut self.pending.get_mut().idempotency;
        keys.insert(key.to_owned(), Some(int(id.0)));
        Ok(())
    }

    fn add_dependent(&mut self, dep: JobId, child: JobId) -> Result<(), StorageFault> {
        let dependents = &mut self.pending.get_mut().dependents;
        dependents.insert((int(dep.0), int(child.0)), true);
        Ok(())
    }

    fn put_log_meta(&mut self, id: JobId, meta: &LogMeta) -> Result<(), StorageFault> {
        let record = encode(meta)?;
        self.pending
            .get_mut()
            .log_meta
            .insert(int(id.0), Some(record));
        Ok(())
    }

    fn put_log_line(
        &mut self,
        id: JobId,
        attempt: u32,
        line: &LogLine,
    ) -> Result<(), StorageFault> {
        let record = encode(line)?;
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let logs = &mut self.pending.get_mut().logs;
        logs.insert((int(id.0), attempt, int(line.seq)), record);
        Ok(())
    }

    fn put_worker(&mut self, worker: &WorkerRecord) -> Result<(), StorageFault> {
        let record = encode(worker)?;
        let workers = &mut self.pending.get_mut().workers;
        workers.insert(worker.info.id.as_str().to_owned(), Some(record));
        Ok(())
    }

    fn remove_worker(&mut self, id: &WorkerId) -> Result<bool, StorageFault> {
        let existed = match self.pending.get_mut().workers.get(id.as_str()) {
            Some(worker) => worker.is_some(),
            None => !self
                .query("select 1 from nexa_workers where id = $1", &[&id.as_str()])?
                .is_empty(),
        };
        let workers = &mut self.pending.get_mut().workers;
        workers.insert(id.as_str().to_owned(), None);
        Ok(existed)
    }

    fn remove_job(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.pending.get_mut().jobs.insert(int(id.0), None);
        Ok(())
    }

    fn remove_idempotent(&mut self, key: &str) -> Result<(), StorageFault> {
        let keys = &mut self.pending.get_mut().idempotency;
        keys.insert(key.to_owned(), None);
        Ok(())
    }

    fn remove_dependents(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.flush()?;
        self.execute("delete from nexa_dependents where dep = $1", &[&int(id.0)])
    }

    fn remove_logs(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.flush()?;
        self.execute("delete from nexa_logs where job = $1", &[&int(id.0)])?;
        self.execute("delete from nexa_log_meta where job = $1", &[&int(id.0)])
    }

    fn set_counter(&mut self, counter: Counter, value: u64) -> Result<(), StorageFault> {
        self.counters
            .borrow_mut()
            .insert(counter.name(), (value, true));
        Ok(())
    }
}

/// Who may write, when several control planes share the database: the holder's name and the
/// fencing token of its leadership (0 while it holds none). Every group checks, in its own
/// transaction, that the token is still the leader's.
struct Fence {
    holder: String,
    token: std::sync::atomic::AtomicI64,
}

impl Fence {
    fn token(&self) -> i64 {
        self.token.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The job store in a PostgreSQL database.
///
/// ```no_run
/// use nexa_runtime::{GenerateParams, JobParams, JobSpec, Store, StoreConfig, Timestamp};
/// use nexa_storage::PgStore;
///
/// let store = PgStore::open("postgres://nexa@127.0.0.1/nexa", StoreConfig::default()).unwrap();
/// let spec = JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 100)));
/// let job = store.submit(spec, Timestamp(0)).unwrap(); // committed once this returns
/// assert_eq!(store.get(job.id).unwrap().id, job.id);
/// ```
pub struct PgStore {
    config: StoreConfig,
    target: std::sync::Arc<Target>,
    /// Idle connections for reads.
    readers: Mutex<Vec<Conn>>,
    requests: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    recovered: Vec<Expired>,
    /// Set when the store is one of several control planes' (see [`PgStore::open_contending`]).
    fence: Option<std::sync::Arc<Fence>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.target.location)
            .finish_non_exhaustive()
    }
}

/// `url` as shown in messages: its user, hosts, ports and database, never its password.
fn location_of(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            Host::Tcp(name) => format!("{name}:{p}"),
            Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl PgStore {
    /// Connects to the database at `url` (libpq's forms), creates or migrates its tables,
    /// and recovers as [`RedbStore::open`](crate::RedbStore::open) does, with the wall clock.
    pub fn open(url: &str, config: StoreConfig) -> Result<Self, OpenError> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::open_at(url, config, Timestamp(ms))
    }

    /// [`PgStore::open`] with the time passed in.
    pub fn open_at(url: &str, config: StoreConfig, now: Timestamp) -> Result<Self, OpenError> {
        let mut store = Self::connect(url, config, None)?;
        store.recovered = store.recover(now).map_err(|e| OpenError::Database {
            location: store.target.location.clone(),
            detail: format!("recovery failed: {e}"),
        })?;
        Ok(store)
    }

    /// Opens the store as one of several control planes sharing the database, as `holder` (a
    /// name no other process uses): it writes nothing until [`PgStore::lead`] says it holds
    /// the leadership, and every write checks, in its own transaction, that it still does, so
    /// a leader that was paused past its lease can never write after another took over. The
    /// new leader then runs [`PgStore::recover`].
    pub fn open_contending(
        url: &str,
        config: StoreConfig,
        holder: impl Into<String>,
    ) -> Result<Self, OpenError> {
        let fence = Fence {
            holder: holder.into(),
            token: std::sync::atomic::AtomicI64::new(0),
        };
        Self::connect(url, config, Some(std::sync::Arc::new(fence)))
    }

    /// What opening does after the schema: every lease gets its whole time from `now` (the
    /// time no control plane had the store is held against no worker), and attempts past
    /// their timeout end; returns those.
    pub fn recover(&self, now: Timestamp) -> Result<Vec<Expired>, StoreError> {
        self.renew_leases(now.saturating_add(self.config.lease_ttl), now)?;
        self.expire(now)
    }

    /// Takes the leadership of the database for `ttl` if no one holds it (or its holder let
    /// it run out), or renews ours; `true` while this store holds it. Only a store opened with
    /// [`PgStore::open_contending`] leads.
    pub fn lead(&self, ttl: Duration) -> Result<bool, StorageFault> {
        let Some(fence) = &self.fence else {
            return Ok(true);
        };
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut conn = self.reader()?;
        // Renewed if ours, else taken if free or run out: the token grows with each taking.
        let row = conn
            .client
            .query_opt(
                "insert into nexa_leader (id, holder, token, expires_at) \
                 values (1, $1, 1, now() + $2::bigint * interval '1 millisecond') \
                 on conflict (id) do update set \
                   token = case when nexa_leader.holder = excluded.holder and nexa_leader.token = $3 \
                           then nexa_leader.token else nexa_leader.token + 1 end, \
                   holder = excluded.holder, expires_at = excluded.expires_at \
                 where (nexa_leader.holder = excluded.holder and nexa_leader.token = $3 \
                        and nexa_leader.expires_at > now()) \
                    or nexa_leader.expires_at <= now() \
                 returning token",
                &[&fence.holder, &ms, &fence.token()],
            )
            .map_err(pg_fault);
        let token = match row {
            Ok(row) => row.map_or(0, |r| r.get::<_, i64>(0)),
            Err(e) => {
                // Unknown: write nothing until the next look says.
                fence.token.store(0, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
        };
        fence
            .token
            .store(token, std::sync::atomic::Ordering::SeqCst);
        self.put_back(conn);
        Ok(token != 0)
    }

    /// Who holds the leadership of the database, while someone does.
    pub fn leader(&self) -> Result<Option<String>, StorageFault> {
        let mut conn = self.reader()?;
        let row = conn
            .client
            .query_opt(
                "select holder from nexa_leader where id = 1 and expires_at > now()",
                &[],
            )
            .map_err(pg_fault)?;
        self.put_back(conn);
        Ok(row.map(|r| r.get(0)))
    }

    fn connect(
        url: &str,
        config: StoreConfig,
        fence: Option<std::sync::Arc<Fence>>,
    ) -> Result<Self, OpenError> {
        let target = std::sync::Arc::new(Target::new(url)?);
        let database = |detail: String| OpenError::Database {
            location: target.location.clone(),
            detail,
        };
        let conn = target.open()?;
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (target, fence) = (target.clone(), fence.clone());
            std::thread::Builder::new()
                .name("nexa-store-commit".into())
                .spawn(move || run_writer(&target, fence.as_deref(), conn, &rx))
                .map_err(|e| database(format!("cannot start the writer thread: {e}")))?
        };
        Ok(Self {
            config,
            target,
            readers: Mutex::default(),
            requests: Some(tx),
            writer: Some(writer),
            recovered: Vec::new(),
            fence,
        })
    }

    /// The attempts that ran past their timeout while no control plane had the store open,
    /// as [`Store::expire`] ended them on open.
    pub fn recovered(&self) -> &[Expired] {
        &self.recovered
    }

    /// The database, without its password.
    pub fn location(&self) -> &str {
        &self.target.location
    }

    fn reader(&self) -> Result<Conn, StorageFault> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) if !conn.client.is_closed() => Ok(conn),
            _ => self
                .target
                .connect()
                .map_err(|e| StorageFault::new(FaultKind::Unavailable, connect_failure(&e))),
        }
    }

    fn put_back(&self, conn: Conn) {
        let mut idle = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !conn.client.is_closed() && idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// `url` with the store kept in schema `schema` of its database (its `search_path`), so that
/// several stores share one database: a URL's form (`postgres://…`) only.
pub fn in_schema(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-csearch_path%3D{schema}")
}

/// Why connecting failed, for people: PostgreSQL's own words (a refused password, an unknown
/// database), or the network's.
fn connect_failure(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("PostgreSQL refused the connection: {}", db.message()),
        (None, Some(cause)) => format!("cannot connect: {e}: {cause}"),
        (None, None) => format!("cannot connect: {e}"),
    }
}

/// Fills `nexa_class_queue` from `nexa_queue` (schema 4 added it).
fn index_queue_classes(txn: &mut Transaction<'_>) -> Result<(), String> {
    let rows = txn
        .query("select sort_key, job, entry from nexa_queue", &[])
        .map_err(|e| describe(&e))?;
    for row in &rows {
        let entry: QueueEntry =
            decode(row.get::<_, &[u8]>(2), "queue entry").map_err(|e| e.to_string())?;
        let class = encode(&entry.class()).map_err(|e| e.to_string())?;
        let not_before = entry.not_before.map(|t| int(t.0));
        txn.execute(
            "insert into nexa_class_queue (class, sort_key, job, not_before_ms) \
             values ($1, $2, $3, $4)",
            &[
                &class,
                &row.get::<_, i64>(0),
                &row.get::<_, i64>(1),
                &not_before,
            ],
        )
        .map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// Creates the tables, or brings them to [`SCHEMA_VERSION`], under an advisory lock.
fn migrate(client: &mut Client, location: &str) -> Result<(), OpenError> {
    let database = |detail: String| OpenError::Database {
        location: location.to_owned(),
        detail,
    };
    let sql = |e: postgres::Error| database(format!("migrating the schema: {}", describe(&e)));
    let mut txn = client.transaction().map_err(sql)?;
    txn.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(sql)?;
    // "already exists, skipping" is not news.
    txn.batch_execute("set local client_min_messages = warning")
        .map_err(sql)?;
    txn.batch_execute(
        "create table if not exists nexa_meta (key text primary key, value bigint not null)",
    )
    .map_err(sql)?;
    let found: Option<i64> = txn
        .query_opt(
            "select value from nexa_meta where key = 'schema_version'",
            &[],
        )
        .map_err(sql)?
        .map(|r| r.get(0));
    let found = match found {
        Some(v) => u64::try_from(v)
            .map_err(|_| database(format!("its schema version is negative ({v})")))?,
        None => 0,
    };
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerFormat {
            location: location.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        txn.batch_execute(migration).map_err(|e| {
            database(format!(
                "migration to schema {}: {}",
                from + 1,
                describe(&e)
            ))
        })?;
        if from + 1 == CLASS_QUEUE_MIGRATION {
            index_queue_classes(&mut txn)
                .map_err(|e| database(format!("migration to schema {}: {e}", from + 1)))?;
        }
    }
    if found < SCHEMA_VERSION {
        txn.execute(
            "insert into nexa_meta (key, value) values ('schema_version', $1) \
             on conflict (key) do update set value = excluded.value",
            &[&int(SCHEMA_VERSION)],
        )
        .map_err(sql)?;
    }
    txn.commit().map_err(sql)
}

fn run_writer(target: &Target, fence: Option<&Fence>, conn: Conn, requests: &Receiver<Request>) {
    let mut conn = Some(conn);
    while let Ok(first) = requests.recv() {
        let group = group::next_group(first, requests);
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            conn = target.connect().ok();
        }
        let (replies, failure) = match conn.as_mut() {
            None => group::refuse(group, unavailable("cannot reach the database; retry")),
            Some(c) => commit_group(c, fence, group),
        };
        group::answer(replies, failure);
    }
}

/// Runs `group` in one transaction and commits it unless a write failed on storage. With a
/// `fence`, the transaction first checks (and holds, until it commits: a taking-over leader
/// waits for it) that the fence's token still leads.
fn commit_group(
    conn: &mut Conn,
    fence: Option<&Fence>,
    group: Vec<Request>,
) -> (Vec<group::Reply>, Option<StorageFault>) {
    let mut txn = match conn.client.transaction() {
        Ok(t) => t,
        Err(e) => return group::refuse(group, pg_fault(e)),
    };
    if let Some(fence) = fence {
        let leads = txn.query_opt(
            "select 1 from nexa_leader where id = 1 and holder = $1 and token = $2 \
             and expires_at > now() for share",
            &[&fence.holder, &fence.token()],
        );
        match leads {
            Ok(Some(_)) => {}
            Ok(None) => {
                let why = "this control plane does not lead the database (another took over, \
                           or its leadership ran out); nothing was written";
                return group::refuse(group, unavailable(why));
            }
            Err(e) => return group::refuse(group, pg_fault(e)),
        }
    }
    let mut tables = PgTables::new(txn, &mut conn.statements);
    let (replies, mut failure) = group::run(&mut tables, group);
    if failure.is_none() {
        failure = tables.flush().and_then(|()| tables.flush_counters()).err();
    }
    let txn = tables.txn.into_inner();
    match failure {
        None => {
            if let Err(e) = txn.commit() {
                failure = Some(pg_fault(e));
            }
        }
        Some(_) => {
            // Dropping the transaction rolls it back; a broken connection is replaced.
            drop(txn);
        }
    }
    (replies, failure)
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        drop(self.requests.take());
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        // A connection closes by blocking on its own runtime, which a thread that drives
        // async tasks may not do: the store is often dropped on one. They close on a thread
        // of their own.
        let readers = std::mem::take(
            &mut *self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !readers.is_empty()
            && let Ok(closing) = std::thread::Builder::new()
                .name("nexa-store-close".into())
                .spawn(move || drop(readers))
        {
            let _ = closing.join();
        }
    }
}

impl Engine for PgStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn write<R: Send + 'static>(&self, _: Call, op: WriteOp<R>) -> Result<R, StoreError> {
        group::write(self.requests.as_ref(), op)
    }

    fn read<R>(
        &self,
        _: Call,
        op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.reader()?;
        let result = {
            let Conn {
                client, statements, ..
            } = &mut conn;
            let txn = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg_fault)?;
            let tables = PgTables::new(txn, statements);
            let result = op(&tables);
            // A read-only transaction has nothing to commit; ending it frees the snapshot.
            let _ = tables.txn.into_inner().commit();
            result
        };
        self.put_back(conn);
        result
    }
}
