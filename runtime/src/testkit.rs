//! The test suite every [`Store`] implementation must pass.
//!
//! The rules of the store operations are written once (in the blanket `Store` impl over
//! [`Engine`](crate::Engine)), but an engine can still break them: an index it forgets to
//! update, a write it does not make atomic, a table it does not reopen after a crash. This
//! suite checks a store from the outside, through the [`Store`] trait only, so
//! that [`MemStore`](crate::MemStore) and the redb store in `nexa-storage` are held to exactly
//! the same behaviour.
//!
//! An implementation provides a [`Harness`] (how to open an empty store and how to simulate a
//! crash and restart) and expands [`store_suite!`](crate::store_suite) in an integration test,
//! which gives one `#[test]` per suite function:
//!
//! ```no_run
//! use nexa_runtime::testkit::Harness;
//! use nexa_runtime::{MemStore, StoreConfig};
//!
//! struct MemHarness;
//!
//! impl Harness for MemHarness {
//!     type Store = MemStore;
//!
//!     fn open(&mut self, config: StoreConfig) -> MemStore {
//!         MemStore::new(config)
//!     }
//!
//!     fn restart(&mut self, store: MemStore, _config: StoreConfig) -> MemStore {
//!         store // nothing is on disk: the same object is the restarted store
//!     }
//! }
//!
//! nexa_runtime::store_suite!(MemHarness);
//! # fn main() {}
//! ```
//!
//! What the suite guarantees about itself: every test is deterministic (time is passed in,
//! the property test uses a fixed seed), asserts no timing, and uses only the `Store` trait
//! and the harness, so it runs unchanged against any implementation. Each suite function opens
//! its own stores, so the tests run in parallel.
//!
//! The suite functions cover submission (validation, idempotency, batches, dependencies),
//! leasing (one request or a batch) and fencing by epoch, retries, timeouts and cancellation, queries (`list`,
//! `pending_reason`), logs, the worker registry and restarts; [`random_histories`] is the
//! property test that runs random operation sequences, restarts included, against a simple
//! model and checks the job invariants after every step.

mod fixtures;
mod history;
mod lifecycle;
mod logs;
mod queries;
mod registry;
mod submission;

use crate::{Store, StoreConfig};

pub use history::random_histories;
pub use lifecycle::{
    an_unacknowledged_lease_is_short_and_costs_no_attempt, cancel_leased_job_waits_for_the_worker,
    cancel_of_finished_job_is_refused, cancel_waiting_or_queued_job_is_immediate,
    every_state_change_appends_an_event, expired_lease_requeues_as_worker_lost,
    finished_jobs_are_deleted_with_their_logs, finished_jobs_never_change,
    heartbeat_renews_the_lease_and_records_progress, lease_epochs_grow,
    lease_many_is_lease_next_in_turn, lease_many_leases_each_job_once_in_queue_order,
    lease_order_is_priority_then_fifo, lease_refuses_unknown_and_draining_workers,
    leases_only_jobs_that_fit, non_retryable_failures_fail_at_once, retry_waits_out_the_backoff,
    retryable_failures_retry_until_max_attempts, stale_epoch_reports_are_refused,
    stale_reports_on_finished_job_are_stale, submit_and_lease_hands_new_jobs_to_waiting_workers,
    timeout_fails_the_attempt,
};
pub use logs::{
    log_cap_keeps_the_cap_then_a_marker, log_gap_is_refused, log_lines_are_stored_with_seq,
    log_resend_is_not_duplicated, logs_are_kept_per_attempt, read_logs_pages,
};
pub use queries::{
    list_filters_by_state_and_type, list_filters_by_worker, list_limit_out_of_range_is_invalid,
    list_pages_cover_every_job_once, pending_reason_says_why,
};
pub use registry::{
    copy_keeps_every_acknowledged_write, restart_keeps_every_acknowledged_write,
    restart_recovers_expired_leases, worker_heartbeats_answer_each_worker,
    workers_register_heartbeat_drain_and_remove,
};
pub use submission::{
    dependency_failure_cancels_dependents_transitively, idempotency_key_with_other_spec_conflicts,
    idempotent_resubmit_returns_the_same_job, invalid_spec_is_refused_and_nothing_stored,
    job_ids_grow, submit_batch_refuses_duplicate_keys, submit_batch_stores_all,
    submit_batch_with_one_bad_spec_stores_none, submit_every_job_type,
    submit_with_finished_dependency, unknown_dependency_is_refused,
    waiting_job_is_queued_when_dependencies_succeed,
};

/// How the suite gets stores of one implementation.
pub trait Harness {
    /// The store under test.
    type Store: Store;

    /// A fresh, empty store with `config`.
    fn open(&mut self, config: StoreConfig) -> Self::Store;

    /// Simulates a crash and restart: drops `store` and returns a store over the same data
    /// (for [`MemStore`](crate::MemStore): the same object, since it has no disk; for a
    /// durable store: reopened from its file). Everything acknowledged before must still be
    /// there.
    fn restart(&mut self, store: Self::Store, config: StoreConfig) -> Self::Store;
}

/// Expands to the whole store suite: one `#[test]` per suite function of
/// [`testkit`](crate::testkit), each running it against a harness.
///
/// `$harness` is an expression that makes a [`Harness`] (a unit struct, or a constructor call
/// such as `RedbHarness::new()`); it is evaluated once per test. Expand it once, at the top
/// level of an integration test file: it defines functions named after the suite functions.
/// Needs the `testkit` feature of `nexa-runtime` (as a dev-dependency feature).
///
/// This macro is the one list of the suite's tests: a new suite function is added here.
/// `random_histories` runs 64 random histories; run it with more cases by calling
/// [`random_histories`] from a test of your own.
///
/// ```no_run
/// # use nexa_runtime::testkit::Harness;
/// # use nexa_runtime::{MemStore, StoreConfig};
/// # struct MemHarness;
/// # impl Harness for MemHarness {
/// #     type Store = MemStore;
/// #     fn open(&mut self, config: StoreConfig) -> MemStore { MemStore::new(config) }
/// #     fn restart(&mut self, store: MemStore, _: StoreConfig) -> MemStore { store }
/// # }
/// nexa_runtime::store_suite!(MemHarness);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_suite {
    ($harness:expr) => {
        $crate::store_suite!(@tests $harness;
            submit_every_job_type,
            job_ids_grow,
            invalid_spec_is_refused_and_nothing_stored,
            idempotent_resubmit_returns_the_same_job,
            idempotency_key_with_other_spec_conflicts,
            submit_batch_stores_all,
            submit_batch_with_one_bad_spec_stores_none,
            submit_batch_refuses_duplicate_keys,
            unknown_dependency_is_refused,
            waiting_job_is_queued_when_dependencies_succeed,
            dependency_failure_cancels_dependents_transitively,
            submit_with_finished_dependency,
            lease_order_is_priority_then_fifo,
            leases_only_jobs_that_fit,
            lease_refuses_unknown_and_draining_workers,
            lease_epochs_grow,
            lease_many_leases_each_job_once_in_queue_order,
            lease_many_is_lease_next_in_turn,
            submit_and_lease_hands_new_jobs_to_waiting_workers,
            retry_waits_out_the_backoff,
            stale_epoch_reports_are_refused,
            stale_reports_on_finished_job_are_stale,
            expired_lease_requeues_as_worker_lost,
            an_unacknowledged_lease_is_short_and_costs_no_attempt,
            heartbeat_renews_the_lease_and_records_progress,
            retryable_failures_retry_until_max_attempts,
            non_retryable_failures_fail_at_once,
            timeout_fails_the_attempt,
            cancel_waiting_or_queued_job_is_immediate,
            cancel_leased_job_waits_for_the_worker,
            cancel_of_finished_job_is_refused,
            finished_jobs_never_change,
            finished_jobs_are_deleted_with_their_logs,
            every_state_change_appends_an_event,
            list_filters_by_state_and_type,
            list_filters_by_worker,
            list_pages_cover_every_job_once,
            list_limit_out_of_range_is_invalid,
            pending_reason_says_why,
            log_lines_are_stored_with_seq,
            log_resend_is_not_duplicated,
            log_gap_is_refused,
            log_cap_keeps_the_cap_then_a_marker,
            read_logs_pages,
            logs_are_kept_per_attempt,
            workers_register_heartbeat_drain_and_remove,
            worker_heartbeats_answer_each_worker,
            restart_keeps_every_acknowledged_write,
            copy_keeps_every_acknowledged_write,
            restart_recovers_expired_leases,
        );

        #[test]
        fn random_histories() {
            $crate::testkit::random_histories(&mut $harness, 64);
        }
    };
    (@tests $harness:expr; $($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $(
            #[test]
            $(#[$attr])*
            fn $name() {
                $crate::testkit::$name(&mut $harness);
            }
        )*
    };
}
