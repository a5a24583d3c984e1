//! The writes of a group not yet sent: kept by key, read back by the point reads of later
//! writes in the group (a job, an idempotency key, a log's bookkeeping, a worker), and sent
//! table by table in one statement each (`unnest` of arrays) before anything else is read and
//! before the group commits. A group of submits then costs one round trip per table it
//! writes, not one per row.
//!
//! Each table is a map from its key to the last write of that key (a row, or its removal), so
//! sending the removals and then the rows gives what sending every write in order would.

use std::collections::BTreeMap;

use postgres::types::ToSql;

/// A `nexa_jobs` row.
pub(super) struct JobRow {
    pub(super) state: &'static str,
    pub(super) job_type: &'static str,
    pub(super) priority: i32,
    pub(super) worker: Option<String>,
    pub(super) created_ms: i64,
    pub(super) updated_ms: i64,
    pub(super) record: Vec<u8>,
}

/// The writes not yet sent, by table and key: `Some` a row (or `true`: present), `None` (or
/// `false`) its removal.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) jobs: BTreeMap<i64, Option<JobRow>>,
    pub(super) states: BTreeMap<(i16, i64), bool>,
    pub(super) queue: BTreeMap<(i64, i64), Option<Vec<u8>>>,
    /// (encoded class, rank, job) → `Some(not_before)`, or `None`: removed.
    pub(super) class_queue: BTreeMap<(Vec<u8>, i64, i64), Option<Option<i64>>>,
    pub(super) deadlines: BTreeMap<(i64, i64), bool>,
    pub(super) idempotency: BTreeMap<String, Option<i64>>,
    pub(super) dependents: BTreeMap<(i64, i64), bool>,
    pub(super) log_meta: BTreeMap<i64, Option<Vec<u8>>>,
    pub(super) logs: BTreeMap<(i64, i32, i64), Vec<u8>>,
    pub(super) workers: BTreeMap<String, Option<Vec<u8>>>,
    pub(super) worker_jobs: BTreeMap<(String, i64), bool>,
}

/// One statement to send, with its arrays.
pub(super) struct Batch {
    pub(super) sql: &'static str,
    pub(super) params: Vec<Box<dyn ToSql + Sync>>,
}

fn batch(sql: &'static str, params: Vec<Box<dyn ToSql + Sync>>) -> Batch {
    Batch { sql, params }
}

/// The keys whose last write is `present`, and the others.
fn split<K: Clone>(map: &BTreeMap<K, bool>) -> (Vec<K>, Vec<K>) {
    let mut put = Vec::new();
    let mut gone = Vec::new();
    for (k, present) in map {
        if *present {
            put.push(k.clone());
        } else {
            gone.push(k.clone());
        }
    }
    (put, gone)
}

fn pairs<A: Clone, B: Clone>(keys: &[(A, B)]) -> (Vec<A>, Vec<B>) {
    keys.iter().map(|(a, b)| (a.clone(), b.clone())).unzip()
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.states.is_empty()
            && self.queue.is_empty()
            && self.class_queue.is_empty()
            && self.deadlines.is_empty()
            && self.idempotency.is_empty()
            && self.dependents.is_empty()
            && self.log_meta.is_empty()
            && self.logs.is_empty()
            && self.workers.is_empty()
            && self.worker_jobs.is_empty()
    }

    /// The statements that send every write, emptying `self`: for each table, its removals,
    /// then its rows.
    pub(super) fn take(&mut self) -> Vec<Batch> {
        let p = std::mem::take(self);
        let mut out = Vec::new();

        let (gone, rows): (Vec<_>, Vec<_>) = p.jobs.into_iter().partition(|(_, r)| r.is_none());
        if !gone.is_empty() {
            let ids: Vec<i64> = gone.into_iter().map(|(id, _)| id).collect();
            out.push(batch(
                "delete from nexa_jobs where id = any($1::bigint[])",
                vec![Box::new(ids)],
            ));
        }
        if !rows.is_empty() {
            let mut cols = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for (id, row) in rows.into_iter() {
                let Some(r) = row else { continue };
                cols.0.push(id);
                cols.1.push(r.state);
                cols.2.push(r.job_type);
                cols.3.push(r.priority);
                cols.4.push(r.worker);
                cols.5.push(r.created_ms);
                cols.6.push(r.updated_ms);
                cols.7.push(r.record);
            }
            out.push(batch(
                "insert into nexa_jobs (id, state, job_type, priority, worker, created_ms, updated_ms, record) \
                 select * from unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::text[], \
                 $6::bigint[], $7::bigint[], $8::bytea[]) \
                 on conflict (id) do update set state = excluded.state, worker = excluded.worker, \
                 updated_ms = excluded.updated_ms, record = excluded.record",
                vec![
                    Box::new(cols.0),
                    Box::new(cols.1),
                    Box::new(cols.2),
                    Box::new(cols.3),
                    Box::new(cols.4),
                    Box::new(cols.5),
                    Box::new(cols.6),
                    Box::new(cols.7),
                ],
            ));
        }

        let (put, gone) = split(&p.states);
        if !gone.is_empty() {
            let (s, j) = pairs(&gone);
            out.push(batch(
                "delete from nexa_job_states t using unnest($1::smallint[], $2::bigint[]) as g(state, job) \
                 where t.state = g.state and t.job = g.job",
                vec![Box::new(s), Box::new(j)],
            ));
        }
        if !put.is_empty() {
            let (s, j) = pairs(&put);
            out.push(batch(
                "insert into nexa_job_states (state, job) select * from unnest($1::smallint[], $2::bigint[]) \
                 on conflict do nothing",
                vec![Box::new(s), Box::new(j)],
            ));
        }

        let (gone, rows): (Vec<_>, Vec<_>) = p.queue.into_iter().partition(|(_, e)| e.is_none());
        if !gone.is_empty() {
            let keys: Vec<(i64, i64)> = gone.into_iter().map(|(k, _)| k).collect();
            let (s, j) = pairs(&keys);
            out.push(batch(
                "delete from nexa_queue t using unnest($1::bigint[], $2::bigint[]) as g(sort_key, job) \
                 where t.sort_key = g.sort_key and t.job = g.job",
                vec![Box::new(s), Box::new(j)],
            ));
        }
        if !rows.is_empty() {
            let (mut s, mut j, mut e) = (Vec::new(), Vec::new(), Vec::new());
            for ((sort, job), entry) in rows {
                if let Some(entry) = entry {
                    s.push(sort);
                    j.push(job);
                    e.push(entry);
                }
            }
            out.push(batch(
                "insert into nexa_queue (sort_key, job, entry) \
                 select * from unnest($1::bigint[], $2::bigint[], $3::bytea[]) \
                 on conflict (sort_key, job) do update set entry = excluded.entry",
                vec![Box::new(s), Box::new(j), Box::new(e)],
            ));
        }

        let (gone, rows): (Vec<_>, Vec<_>) =
            p.class_queue.into_iter().partition(|(_, e)| e.is_none());
        if !gone.is_empty() {
            let (mut c, mut s, mut j) = (Vec::new(), Vec::new(), Vec::new());
            for ((class, sort, job), _) in gone {
                c.push(class);
                s.push(sort);
                j.push(job);
            }
            out.push(batch(
                "delete from nexa_class_queue t \
                 using unnest($1::bytea[], $2::bigint[], $3::bigint[]) as g(class, sort_key, job) \
                 where t.class = g.class and t.sort_key = g.sort_key and t.job = g.job",
                vec![Box::new(c), Box::new(s), Box::new(j)],
            ));
        }
        if !rows.is_empty() {
            let (mut c, mut s, mut j, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((class, sort, job), not_before) in rows {
                if let Some(not_before) = not_before {
                    c.push(class);
                    s.push(sort);
                    j.push(job);
                    n.push(not_before);
                }
            }
            out.push(batch(
                "insert into nexa_class_queue (class, sort_key, job, not_before_ms) \
                 select * from unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                 on conflict (class, sort_key, job) do update set not_before_ms = excluded.not_before_ms",
                vec![Box::new(c), Box::new(s), Box::new(j), Box::new(n)],
            ));
        }

        let (put, gone) = split(&p.deadlines);
        if !gone.is_empty() {
            let (a, j) = pairs(&gone);
            out.push(batch(
                "delete from nexa_deadlines t using unnest($1::bigint[], $2::bigint[]) as g(at_ms, job) \
                 where t.at_ms = g.at_ms and t.job = g.job",
                vec![Box::new(a), Box::new(j)],
            ));
        }
        if !put.is_empty() {
            let (a, j) = pairs(&put);
            out.push(batch(
                "insert into nexa_deadlines (at_ms, job) select * from unnest($1::bigint[], $2::bigint[]) \
                 on conflict do nothing",
                vec![Box::new(a), Box::new(j)],
            ));
        }

        let (gone, rows): (Vec<_>, Vec<_>) =
            p.idempotency.into_iter().partition(|(_, j)| j.is_none());
        if !gone.is_empty() {
            let keys: Vec<String> = gone.into_iter().map(|(k, _)| k).collect();
            out.push(batch(
                "delete from nexa_idempotency where key = any($1::text[])",
                vec![Box::new(keys)],
            ));
        }
        if !rows.is_empty() {
            let (k, j): (Vec<String>, Vec<i64>) =
                rows.into_iter().filter_map(|(k, j)| Some((k, j?))).unzip();
            out.push(batch(
                "insert into nexa_idempotency (key, job) select * from unnest($1::text[], $2::bigint[]) \
                 on conflict (key) do update set job = excluded.job",
                vec![Box::new(k), Box::new(j)],
            ));
        }

        let (put, gone) = split(&p.dependents);
        if !gone.is_empty() {
            let (d, c) = pairs(&gone);
            out.push(batch(
                "delete from nexa_dependents t using unnest($1::bigint[], $2::bigint[]) as g(dep, child) \
                 where t.dep = g.dep and t.child = g.child",
                vec![Box::new(d), Box::new(c)],
            ));
        }
        if !put.is_empty() {
            let (d, c) = pairs(&put);
            out.push(batch(
                "insert into nexa_dependents (dep, child) select * from unnest($1::bigint[], $2::bigint[]) \
                 on conflict do nothing",
                vec![Box::new(d), Box::new(c)],
            ));
        }

        let (gone, rows): (Vec<_>, Vec<_>) = p.log_meta.into_iter().partition(|(_, r)| r.is_none());
        if !gone.is_empty() {
            let ids: Vec<i64> = gone.into_iter().map(|(id, _)| id).collect();
            out.push(batch(
                "delete from nexa_log_meta where job = any($1::bigint[])",
                vec![Box::new(ids)],
            ));
        }
        if !rows.is_empty() {
            let (j, r): (Vec<i64>, Vec<Vec<u8>>) =
                rows.into_iter().filter_map(|(j, r)| Some((j, r?))).unzip();
            out.push(batch(
                "insert into nexa_log_meta (job, record) select * from unnest($1::bigint[], $2::bytea[]) \
                 on conflict (job) do update set record = excluded.record",
                vec![Box::new(j), Box::new(r)],
            ));
        }

        if !p.logs.is_empty() {
            let (mut j, mut a, mut s, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((job, attempt, seq), record) in p.logs {
                j.push(job);
                a.push(attempt);
                s.push(seq);
                r.push(record);
            }
            out.push(batch(
                "insert into nexa_logs (job, attempt, seq, record) \
                 select * from unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bytea[]) \
                 on conflict (job, attempt, seq) do update set record = excluded.record",
                vec![Box::new(j), Box::new(a), Box::new(s), Box::new(r)],
            ));
        }

        let (gone, rows): (Vec<_>, Vec<_>) = p.workers.into_iter().partition(|(_, r)| r.is_none());
        if !gone.is_empty() {
            let ids: Vec<String> = gone.into_iter().map(|(id, _)| id).collect();
            out.push(batch(
                "delete from nexa_workers where id = any($1::text[])",
                vec![Box::new(ids)],
            ));
        }
        if !rows.is_empty() {
            let (i, r): (Vec<String>, Vec<Vec<u8>>) =
                rows.into_iter().filter_map(|(i, r)| Some((i, r?))).unzip();
            out.push(batch(
                "insert into nexa_workers (id, record) select * from unnest($1::text[], $2::bytea[]) \
                 on conflict (id) do update set record = excluded.record",
                vec![Box::new(i), Box::new(r)],
            ));
        }

        let (put, gone) = split(&p.worker_jobs);
        if !gone.is_empty() {
            let (w, j) = pairs(&gone);
            out.push(batch(
                "delete from nexa_worker_jobs t using unnest($1::text[], $2::bigint[]) as g(worker, job) \
                 where t.worker = g.worker and t.job = g.job",
                vec![Box::new(w), Box::new(j)],
            ));
        }
        if !put.is_empty() {
            let (w, j) = pairs(&put);
            out.push(batch(
                "insert into nexa_worker_jobs (worker, job) select * from unnest($1::text[], $2::bigint[]) \
                 on conflict do nothing",
                vec![Box::new(w), Box::new(j)],
            ));
        }
        out
    }
}
