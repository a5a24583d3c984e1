//! How values are laid out in the file: a version byte, then bincode.
//!
//! bincode does not describe itself, so every stored value starts with [`RECORD_VERSION`]. A
//! record with a newer version is refused as written by a newer build rather than misread; one
//! with an older version is read through the layout of its version (see [`Record`]). The
//! golden tests below fail when the bytes of a record change by accident. All encoding lives
//! here so the codec can change in one place.
//!
//! Versions:
//! - 1: the first layout.
//! - 2: job params with the fields added since (see `v1`); every other record is unchanged.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use nexa_runtime::{
    ArtifactMeta, FaultKind, Job, LogLine, LogMeta, QueueClass, QueueEntry, StorageFault,
    WorkerRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod v1;

/// The version of every record this build writes.
pub(crate) const RECORD_VERSION: u8 = 2;

/// A value kept in the store, readable from every record version this build knows.
pub(crate) trait Record: DeserializeOwned {
    /// The value from the body of a version-1 record; by default its layout is unchanged.
    fn from_v1(body: &[u8], what: &str) -> Result<Self, StorageFault> {
        body_of(body, what)
    }
}

impl Record for Job {
    fn from_v1(body: &[u8], what: &str) -> Result<Self, StorageFault> {
        body_of::<v1::Job>(body, what).map(Job::from)
    }
}

impl Record for QueueEntry {}
impl Record for QueueClass {}
impl Record for LogMeta {}
impl Record for LogLine {}
impl Record for WorkerRecord {}
impl Record for ArtifactMeta {}

/// Largest record accepted when decoding, so a damaged length cannot ask for gigabytes.
const MAX_RECORD: usize = 64 << 20;

fn config() -> Configuration<LittleEndian, Varint, Limit<MAX_RECORD>> {
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

/// `value` as a stored record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageFault> {
    let mut out = Vec::with_capacity(128);
    out.push(RECORD_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| StorageFault::new(FaultKind::Io, format!("cannot encode a record: {e}")))?;
    Ok(out)
}

/// The bincode body of a record of `what` (named in errors) as a `T`, all of it.
fn body_of<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, StorageFault> {
    let (value, used) = bincode::serde::decode_from_slice(body, config()).map_err(|e| {
        StorageFault::new(
            FaultKind::Corrupt,
            format!("{what} record does not decode: {e}"),
        )
    })?;
    if used != body.len() {
        return Err(StorageFault::new(
            FaultKind::Corrupt,
            format!("{what} record has {} trailing bytes", body.len() - used),
        ));
    }
    Ok(value)
}

/// A stored record of `what` (named in errors) back as a value.
pub(crate) fn decode<T: Record>(bytes: &[u8], what: &str) -> Result<T, StorageFault> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => body_of(body, what),
        Some((1, body)) => T::from_v1(body, what),
        Some((&v, _)) if v > RECORD_VERSION => Err(StorageFault::new(
            FaultKind::Corrupt,
            format!(
                "{what} record has version {v}, newer than this build's {RECORD_VERSION}; upgrade nexa"
            ),
        )),
        Some((&v, _)) => Err(StorageFault::new(
            FaultKind::Corrupt,
            format!("{what} record has unknown version {v}"),
        )),
        None => Err(StorageFault::new(
            FaultKind::Corrupt,
            format!("{what} record is empty"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use nexa_runtime::*;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A job touching every part of the record: params, resources, an attempt, events, output.
    fn sample_job() -> Job {
        let mut hp = BTreeMap::new();
        hp.insert("lr".to_owned(), ParamValue::Float(0.5));
        let mut spec = JobSpec::new(JobParams::Train(TrainParams {
            epochs: 2,
            hyperparameters: hp,
            ..TrainParams::new("m", "d")
        }));
        spec.resources.gpus = 1;
        spec.resources.labels.insert("r".into(), "eu".into());
        spec.idempotency_key = Some("k".into());
        spec.depends_on = vec![JobId(3)];
        spec.timeout = Duration::from_secs(60);
        let mut job = Job::new(JobId(7), spec, true, Timestamp(1000));
        let retry = RetryPolicy::default();
        let lease = Transition::Lease {
            worker: WorkerId::new("w").unwrap(),
            epoch: Epoch(9),
            ttl: Duration::from_secs(30),
        };
        job.apply(lease, Timestamp(2000), &retry).unwrap();
        let mut output = JobOutput::default();
        output.metrics.insert("acc".into(), 0.25);
        job.apply(
            Transition::Succeed {
                epoch: Epoch(9),
                output,
            },
            Timestamp(3000),
            &retry,
        )
        .unwrap();
        // As stores hold it from before an outcome started an assigned job: succeeded
        // straight from assigned, with no start. The golden bytes are of that record.
        job.events.retain(|e| e.message != "started");
        if let Some(last) = job.events.last_mut() {
            last.from = Some(nexa_runtime::JobState::Assigned);
        }
        job.attempts[0].started_at = None;
        job
    }

    #[test]
    fn records_round_trip() {
        let job = sample_job();
        let bytes = encode(&job).unwrap();
        assert_eq!(decode::<Job>(&bytes, "job").unwrap(), job);
    }

    #[test]
    fn job_record_bytes_are_stable() {
        // Changing these bytes changes the file format: bump RECORD_VERSION (and teach
        // `decode` the old layout) instead of editing the expectation.
        let bytes = encode(&sample_job()).unwrap();
        assert_eq!(hex(&bytes), GOLDEN_JOB);
    }

    #[test]
    fn version_1_jobs_read_with_the_defaults_they_ran_with() {
        let bytes: Vec<u8> = (0..GOLDEN_JOB_V1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN_JOB_V1[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(bytes[0], 1);
        assert_eq!(decode::<Job>(&bytes, "job").unwrap(), sample_job());
        // Read back and written again, it is a version-2 record.
        let again = encode(&decode::<Job>(&bytes, "job").unwrap()).unwrap();
        assert_eq!(hex(&again), GOLDEN_JOB);
    }

    #[test]
    fn every_param_type_reads_back_from_version_1() {
        // A version-1 body of each type's params, and what it reads as.
        let cases: [(&str, JobParams); 3] = [
            (
                "0001780a0107",
                JobParams::Generate(GenerateParams {
                    seed: Some(7),
                    ..GenerateParams::new("x", 10)
                }),
            ),
            (
                "02017401730164000000000000004003",
                JobParams::Distill(DistillParams::new("t", "s", "d")),
            ),
            (
                "04016d0164010161",
                JobParams::Evaluate(EvaluateParams {
                    metrics: vec!["a".into()],
                    ..EvaluateParams::new("m", "d")
                }),
            ),
        ];
        for (params_hex, expected) in cases {
            let mut job = sample_job();
            job.spec.params = expected.clone();
            // Swap the sample's params (a train job's) for these in the version-1 bytes.
            let train_v1 = "03016d01640201026c7202000000000000e03f";
            let v1 = GOLDEN_JOB_V1.replacen(train_v1, params_hex, 1);
            let bytes: Vec<u8> = (0..v1.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(decode::<Job>(&bytes, "job").unwrap(), job);
        }
    }

    #[test]
    fn log_line_record_bytes_are_stable() {
        let line = LogLine {
            seq: 300,
            at: Timestamp(1_795_700_000_000),
            text: "epoch 1 loss 0.5".into(),
        };
        let bytes = encode(&line).unwrap();
        assert_eq!(
            hex(&bytes),
            "02fb2c01fd00850f18a20100001065706f63682031206c6f737320302e35"
        );
        // Its layout did not change in version 2: a version-1 record reads the same.
        let mut v1 = bytes;
        v1[0] = 1;
        assert_eq!(decode::<LogLine>(&v1, "log line").unwrap(), line);
    }

    #[test]
    fn damaged_records_are_refused_with_a_reason() {
        let bytes = encode(&sample_job()).unwrap();
        let err = decode::<Job>(&bytes[..bytes.len() / 2], "job").unwrap_err();
        assert_eq!(err.kind, FaultKind::Corrupt);
        let mut newer = bytes.clone();
        newer[0] = RECORD_VERSION + 1;
        let err = decode::<Job>(&newer, "job").unwrap_err();
        assert!(err.message.contains("newer than this build"), "{err}");
        assert!(decode::<Job>(&[], "job").is_err());
        let mut long = bytes;
        long.push(0);
        assert!(
            decode::<Job>(&long, "job")
                .unwrap_err()
                .message
                .contains("trailing")
        );
    }

    /// [`sample_job`] as version 1 wrote it.
    const GOLDEN_JOB_V1: &str = concat!(
        "010703016d01640201026c7202000000000000e03f010001017202657500033c0001016b010304fb",
        "e803fbb80b0101017709fbd00700fb007dfb30f201fbb80b010003fbe8030001097375626d697474",
        "6564fbd007010102206c656173656420746f20772028617474656d707420312c2065706f63682039",
        "29fbb80b0102040973756363656564656401000000000000f03f00010103616363000000000000d0",
        "3f000000"
    );

    /// [`sample_job`] as this build writes it.
    const GOLDEN_JOB: &str = concat!(
        "020703016d01640201026c7202000000000000e03f027b7d010001017202657500033c0001016b01",
        "0304fbe803fbb80b0101017709fbd00700fb007dfb30f201fbb80b010003fbe8030001097375626d",
        "6974746564fbd007010102206c656173656420746f20772028617474656d707420312c2065706f63",
        "68203929fbb80b0102040973756363656564656401000000000000f03f0001010361636300000000",
        "0000d03f000000",
    );
}
