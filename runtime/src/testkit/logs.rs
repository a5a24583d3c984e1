//! Job logs: sequence numbers, resends, gaps, the per-job cap, pages and attempts.

use super::Harness;
use super::fixtures::{at, config, error, generate, lease, register_cpu_worker, submit};
use crate::{
    Epoch, FailureClass, JobId, LogAck, LogLine, LogPage, LogQuery, Store, StoreConfig, StoreError,
    cap_marker,
};

/// A store with one running job; returns the job and its live epoch.
fn running_job(store: &impl Store) -> (JobId, Epoch) {
    let w = register_cpu_worker(store, "w1", at(0));
    let id = submit(store, generate(0), at(0));
    let l = lease(store, &w, id, at(0));
    store.start(id, l.epoch, at(0)).expect("start");
    (id, l.epoch)
}

fn lines(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

fn read_all(store: &impl Store, id: JobId, attempt: Option<u32>) -> LogPage {
    store
        .read_logs(
            id,
            LogQuery {
                attempt,
                from_seq: 0,
                limit: 10_000,
            },
        )
        .expect("read_logs")
}

fn texts(page: &LogPage) -> Vec<(u64, &str)> {
    page.lines
        .iter()
        .map(|l| (l.seq, l.text.as_str()))
        .collect()
}

/// Lines are stored in order with their sequence numbers and arrival time; the ack says where
/// to go on.
pub fn log_lines_are_stored_with_seq<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let (id, epoch) = running_job(&store);
    assert_eq!(read_all(&store, id, None).lines, vec![]);
    let ack = store
        .append_logs(id, epoch, 0, lines(&["loading", "epoch 1"]), at(1))
        .expect("append");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 2,
            dropped: 0
        }
    );
    let ack = store
        .append_logs(id, epoch, 2, lines(&["epoch 2"]), at(2))
        .expect("append");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 3,
            dropped: 0
        }
    );
    let ack = store
        .append_logs(id, epoch, 3, vec![], at(2))
        .expect("empty batch");
    assert_eq!(ack.next_seq, 3);

    let page = read_all(&store, id, None);
    assert_eq!(page.attempt, 1);
    assert_eq!(
        page.lines,
        vec![
            LogLine {
                seq: 0,
                at: at(1),
                text: "loading".into()
            },
            LogLine {
                seq: 1,
                at: at(1),
                text: "epoch 1".into()
            },
            LogLine {
                seq: 2,
                at: at(2),
                text: "epoch 2".into()
            },
        ]
    );
    assert_eq!((page.next_seq, page.dropped), (None, 0));
    assert_eq!(read_all(&store, id, Some(1)), page);

    // An over-long line is cut to the configured size, at a character boundary.
    let long = "é".repeat(20_000);
    store
        .append_logs(id, epoch, 3, vec![long.clone()], at(3))
        .expect("append");
    let stored = &read_all(&store, id, None).lines[3].text;
    assert!(stored.len() < long.len(), "the line was cut");
    assert!(stored.starts_with(&"é".repeat(100)));
    // A job that was never tried has no lines, attempt 0.
    let fresh = submit(&store, generate(1), at(4));
    assert_eq!(read_all(&store, fresh, None), LogPage::default());
    assert!(matches!(
        store.read_logs(JobId(9_999), LogQuery::default()),
        Err(StoreError::NotFound(JobId(9_999)))
    ));
}

/// A batch resent after a lost ack stores nothing twice: lines already stored are skipped,
/// new ones in the same batch are kept.
pub fn log_resend_is_not_duplicated<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let (id, epoch) = running_job(&store);
    store
        .append_logs(id, epoch, 0, lines(&["a", "b", "c"]), at(1))
        .expect("append");
    let ack = store
        .append_logs(id, epoch, 0, lines(&["a", "b", "c"]), at(2))
        .expect("resend");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 3,
            dropped: 0
        }
    );
    let ack = store
        .append_logs(id, epoch, 1, lines(&["b", "c", "d", "e"]), at(3))
        .expect("overlap");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 5,
            dropped: 0
        }
    );
    let ack = store
        .append_logs(id, epoch, 2, lines(&["c"]), at(4))
        .expect("old line");
    assert_eq!(ack.next_seq, 5);
    let page = read_all(&store, id, None);
    assert_eq!(
        texts(&page),
        vec![(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]
    );
    assert_eq!(
        page.lines[1].at,
        at(1),
        "a resent line keeps its first arrival"
    );
    assert_eq!(page.lines[3].at, at(3));
}

/// A batch that starts past the next expected line is a `LogGap` naming that line; nothing of
/// it is stored.
pub fn log_gap_is_refused<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let (id, epoch) = running_job(&store);
    let err = store
        .append_logs(id, epoch, 1, lines(&["x"]), at(1))
        .expect_err("gap");
    assert!(
        matches!(err, StoreError::LogGap { job, attempt: 1, expected: 0, got: 1 } if job == id),
        "{err:?}"
    );
    store
        .append_logs(id, epoch, 0, lines(&["a", "b"]), at(1))
        .expect("append");
    let err = store
        .append_logs(id, epoch, 5, lines(&["f", "g"]), at(2))
        .expect_err("gap");
    assert!(
        matches!(err, StoreError::LogGap { job, attempt: 1, expected: 2, got: 5 } if job == id),
        "{err:?}"
    );
    assert_eq!(texts(&read_all(&store, id, None)), vec![(0, "a"), (1, "b")]);
    let ack = store
        .append_logs(id, epoch, 2, lines(&["c"]), at(3))
        .expect("resend from 2");
    assert_eq!(ack.next_seq, 3);
}

/// Past `max_log_lines_per_job` lines (all attempts together), one marker line is stored in
/// place of the first dropped line of each attempt and the rest are counted as dropped.
pub fn log_cap_keeps_the_cap_then_a_marker<H: Harness>(h: &mut H) {
    let store = h.open(StoreConfig {
        max_log_lines_per_job: 5,
        ..config()
    });
    let (id, epoch) = running_job(&store);
    let ack = store
        .append_logs(id, epoch, 0, lines(&["0", "1", "2"]), at(1))
        .expect("append");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 3,
            dropped: 0
        }
    );
    let ack = store
        .append_logs(id, epoch, 3, lines(&["3", "4", "5", "6"]), at(2))
        .expect("append");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 7,
            dropped: 2
        }
    );
    let marker = cap_marker(5);
    let page = read_all(&store, id, None);
    assert_eq!(
        texts(&page),
        vec![
            (0, "0"),
            (1, "1"),
            (2, "2"),
            (3, "3"),
            (4, "4"),
            (5, marker.as_str())
        ]
    );
    assert_eq!(page.dropped, 2);

    // More lines: counted, no second marker; a resend of dropped lines is not counted again.
    let ack = store
        .append_logs(id, epoch, 7, lines(&["7", "8"]), at(3))
        .expect("append");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 9,
            dropped: 4
        }
    );
    let ack = store
        .append_logs(id, epoch, 5, lines(&["5", "6", "7", "8"]), at(3))
        .expect("resend");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 9,
            dropped: 4
        }
    );
    let page = read_all(&store, id, None);
    assert_eq!(page.lines.len(), 6);
    assert_eq!(page.dropped, 4);

    // The cap is per job: the next attempt's first line is already over it.
    store
        .fail(id, epoch, error(FailureClass::StageError), at(4))
        .expect("fail");
    let w = crate::WorkerId::new("w1").expect("id");
    let l2 = lease(&store, &w, id, at(10));
    let ack = store
        .append_logs(id, l2.epoch, 0, lines(&["a", "b"]), at(11))
        .expect("append");
    assert_eq!(
        ack,
        LogAck {
            next_seq: 2,
            dropped: 6
        },
        "dropped counts the whole job"
    );
    let page = read_all(&store, id, None);
    assert_eq!(page.attempt, 2);
    assert_eq!(texts(&page), vec![(0, marker.as_str())]);
    assert_eq!(page.dropped, 2, "a page counts its attempt's dropped lines");
    assert_eq!(read_all(&store, id, Some(1)).lines.len(), 6);
}

/// `read_logs` returns at most `limit` lines from `from_seq`, and `next_seq` says where the
/// next page starts; out-of-range limits and attempts are `InvalidQuery`.
pub fn read_logs_pages<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let (id, epoch) = running_job(&store);
    let all: Vec<String> = (0..25).map(|n| format!("line {n}")).collect();
    store
        .append_logs(id, epoch, 0, all[..12].to_vec(), at(1))
        .expect("append");
    store
        .append_logs(id, epoch, 12, all[12..].to_vec(), at(2))
        .expect("append");

    let mut from = 0;
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let page = store
            .read_logs(
                id,
                LogQuery {
                    attempt: None,
                    from_seq: from,
                    limit: 10,
                },
            )
            .expect("read_logs");
        pages += 1;
        assert!(page.lines.len() <= 10);
        got.extend(page.lines.iter().map(|l| (l.seq, l.text.clone())));
        match page.next_seq {
            Some(next) => {
                assert_eq!(Some(next), page.lines.last().map(|l| l.seq + 1));
                from = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<(u64, String)> = (0..25u64).zip(all.iter().cloned()).collect();
    assert_eq!(got, want);

    let page = store
        .read_logs(
            id,
            LogQuery {
                attempt: Some(1),
                from_seq: 20,
                limit: 5,
            },
        )
        .expect("read_logs");
    assert_eq!(page.lines.first().map(|l| l.seq), Some(20));
    assert_eq!((page.lines.len(), page.next_seq), (5, None));
    let past = store
        .read_logs(
            id,
            LogQuery {
                attempt: None,
                from_seq: 25,
                limit: 5,
            },
        )
        .expect("read_logs");
    assert_eq!((past.lines.len(), past.next_seq), (0, None));

    for limit in [0, 10_001] {
        let q = LogQuery {
            limit,
            ..LogQuery::default()
        };
        assert!(
            matches!(store.read_logs(id, q), Err(StoreError::InvalidQuery(_))),
            "limit {limit}"
        );
    }
    for attempt in [0, 2] {
        let q = LogQuery {
            attempt: Some(attempt),
            ..LogQuery::default()
        };
        assert!(
            matches!(store.read_logs(id, q), Err(StoreError::InvalidQuery(_))),
            "attempt {attempt}"
        );
    }
}

/// Each attempt numbers its lines from 0; the lines of earlier attempts stay readable after a
/// retry starts, and the default is the latest attempt.
pub fn logs_are_kept_per_attempt<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let (id, e1) = running_job(&store);
    store
        .append_logs(id, e1, 0, lines(&["one", "two"]), at(1))
        .expect("append");
    store
        .fail(id, e1, error(FailureClass::StageError), at(2))
        .expect("fail");
    assert_eq!(
        read_all(&store, id, None).attempt,
        1,
        "still attempt 1 while queued"
    );

    let w = crate::WorkerId::new("w1").expect("id");
    let l2 = lease(&store, &w, id, at(10));
    assert_eq!(
        read_all(&store, id, None),
        LogPage {
            attempt: 2,
            ..LogPage::default()
        }
    );
    store.start(id, l2.epoch, at(10)).expect("start");
    // Attempt 2 starts at line 0 again; a gap is checked against attempt 2.
    let err = store
        .append_logs(id, l2.epoch, 2, lines(&["x"]), at(11))
        .expect_err("gap");
    assert!(
        matches!(
            err,
            StoreError::LogGap {
                attempt: 2,
                expected: 0,
                ..
            }
        ),
        "{err:?}"
    );
    store
        .append_logs(id, l2.epoch, 0, lines(&["uno"]), at(11))
        .expect("append");
    // The old epoch cannot add to either attempt.
    let err = store
        .append_logs(id, e1, 2, lines(&["three"]), at(11))
        .expect_err("stale");
    assert!(err.is_stale(), "{err:?}");

    assert_eq!(texts(&read_all(&store, id, None)), vec![(0, "uno")]);
    assert_eq!(read_all(&store, id, None).attempt, 2);
    assert_eq!(texts(&read_all(&store, id, Some(2))), vec![(0, "uno")]);
    let first = read_all(&store, id, Some(1));
    assert_eq!(first.attempt, 1);
    assert_eq!(texts(&first), vec![(0, "one"), (1, "two")]);
}
