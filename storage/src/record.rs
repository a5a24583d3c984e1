//! How values are laid out in the file: a version byte, then bincode.
//!
//! bincode does not describe itself, so every stored value starts with [`RECORD_VERSION`]. A
//! record with a newer version is refused as written by a newer build rather than misread;
//! the golden tests below fail when the bytes of a record change by accident. All encoding
//! lives here so the codec can change in one place.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use nexa_runtime::{FaultKind, StorageFault};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version of every record this build writes.
pub(crate) const RECORD_VERSION: u8 = 1;

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

/// A stored record of `what` (named in errors) back as a value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StorageFault> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
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
            model_id: "m".into(),
            dataset_uri: "d".into(),
            epochs: 2,
            hyperparameters: hp,
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
    fn log_line_record_bytes_are_stable() {
        let line = LogLine {
            seq: 300,
            at: Timestamp(1_795_700_000_000),
            text: "epoch 1 loss 0.5".into(),
        };
        assert_eq!(
            hex(&encode(&line).unwrap()),
            "01fb2c01fd00850f18a20100001065706f63682031206c6f737320302e35"
        );
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

    const GOLDEN_JOB: &str = concat!(
        "010703016d01640201026c7202000000000000e03f010001017202657500033c0001016b010304fb",
        "e803fbb80b0101017709fbd00700fb007dfb30f201fbb80b010003fbe8030001097375626d697474",
        "6564fbd007010102206c656173656420746f20772028617474656d707420312c2065706f63682039",
        "29fbb80b0102040973756363656564656401000000000000f03f00010103616363000000000000d0",
        "3f000000"
    );
}
