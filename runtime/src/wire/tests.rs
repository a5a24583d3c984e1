//! Tests of the wire protocol: the golden bytes of every message, the streaming codec, and every
//! way a stream can be wrong.
//!
//! The golden constants are the protocol. A golden test that fails means the bytes of a message
//! changed: a peer built before the change would misread it. Do not edit the constant to make
//! the test pass; bump [`PROTOCOL_VERSION`] instead, so that old peers refuse the new frames
//! with [`DecodeError::UnsupportedVersion`]. The version is in every frame, so a bump changes
//! every constant: regenerate them all with
//! `cargo test -p nexa-runtime --lib wire::tests::print_goldens -- --ignored --nocapture`,
//! and check the envelope of each by hand (length prefix, `4e584647`, the new version, the
//! request id `0102030405060708`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{
    ArtifactKind, ArtifactMeta, AuditParams, DeployParams, Digest, DistillParams, EvaluateParams,
    FailureClass, GenerateParams, JobParams, LeaseToken, ModelVersion, Options, ParamValue,
    Resources, Split, Task, TrainParams,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd number of hex digits");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The request id of the golden frames: its bytes show their order.
const GOLDEN_ID: u64 = 0x0102_0304_0506_0708;

/// The lease token of the fixtures.
const TOKEN: LeaseToken = LeaseToken([0x5a; 32]);

/// `message` as one frame with [`GOLDEN_ID`].
fn frame(message: &Message) -> Vec<u8> {
    encode(GOLDEN_ID, message, DEFAULT_MAX_FRAME).expect("fixtures fit in a frame")
}

/// What a frame made by [`frame`] decodes to.
fn golden(message: &Message) -> Envelope {
    Envelope {
        id: GOLDEN_ID,
        message: message.clone(),
    }
}

/// A frame with a hand-made envelope, request id [`GOLDEN_ID`], around `payload`.
fn raw_frame(magic: &[u8; 4], version: u16, payload: &[u8]) -> Vec<u8> {
    let len = (HEADER_BYTES + payload.len()) as u32;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&GOLDEN_ID.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The request id of the `i`-th frame of a stream: different for each, all eight bytes used.
fn stream_id(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `messages` as the envelopes [`stream_of`] sends them in.
fn numbered(messages: &[Message]) -> Vec<Envelope> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| Envelope {
            id: stream_id(i),
            message: m.clone(),
        })
        .collect()
}

/// The bincode payload of `message`: its frame without prefix, magic, version and id.
fn payload(message: &Message) -> Vec<u8> {
    frame(message)[LENGTH_BYTES + HEADER_BYTES..].to_vec()
}

/// Checks that `golden` (hex of a whole frame) is a well-formed envelope of this version,
/// that `message` encodes to exactly those bytes, and that they decode back to `message`.
#[track_caller]
fn assert_golden(message: &Message, expected: &str) {
    let bytes = unhex(expected);
    assert!(
        bytes.len() >= LENGTH_BYTES + HEADER_BYTES,
        "golden too short"
    );
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - LENGTH_BYTES, "golden's length prefix");
    assert_eq!(&bytes[4..8], b"NXFG", "golden's magic");
    assert_eq!(
        &bytes[8..10],
        &PROTOCOL_VERSION.to_be_bytes(),
        "golden's version"
    );
    assert_eq!(
        &bytes[10..18],
        &GOLDEN_ID.to_be_bytes(),
        "golden's request id"
    );

    let encoded = frame(message);
    assert_eq!(
        hex(&encoded),
        expected,
        "the bytes of a {} message changed: that is a protocol change. Bump PROTOCOL_VERSION \
         (and regenerate every golden) instead of editing this constant",
        message.name()
    );
    assert_eq!(decode_body(&encoded[LENGTH_BYTES..]), Ok(golden(message)));
}

/// Takes every envelope the decoder can give now; stops at the first error.
fn drain(decoder: &mut FrameDecoder, out: &mut Vec<Envelope>) -> Result<(), DecodeError> {
    while let Some(envelope) = decoder.next_envelope()? {
        out.push(envelope);
    }
    Ok(())
}

/// Feeds `stream` to a fresh decoder in chunks of the given sizes (cycled), draining after each.
fn decode_chunked(
    stream: &[u8],
    sizes: &mut dyn FnMut() -> usize,
    max_frame: usize,
) -> (Vec<Envelope>, Result<(), DecodeError>, usize) {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes().clamp(1, rest.len());
        decoder.extend(&rest[..n]);
        rest = &rest[n..];
        if let Err(e) = drain(&mut decoder, &mut out) {
            return (out, Err(e), decoder.buffered());
        }
    }
    (out, Ok(()), decoder.buffered())
}

/// SplitMix64: a small, deterministic generator, so a failing case can be replayed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: one representative value per message, with every optional part present.

fn worker() -> WorkerId {
    WorkerId::new("gpu-node-1").unwrap()
}

fn hello() -> Message {
    Message::Hello(Hello {
        worker: worker(),
        token: "join-s3cr3t".into(),
        cpus: 32,
        memory_mb: 262_144,
        gpus: vec![
            Gpu {
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_mb: 81_559,
            },
            Gpu {
                model: "NVIDIA A10G".into(),
                memory_mb: 23_028,
            },
        ],
        labels: BTreeMap::from([
            ("region".into(), "eu-west".into()),
            ("zone".into(), "b".into()),
        ]),
        job_types: BTreeSet::from([JobType::Train, JobType::Evaluate, JobType::Deploy]),
    })
}

fn welcome() -> Message {
    Message::Welcome(Welcome {
        session: 7,
        lease_ttl_ms: 30_000,
        heartbeat_ms: 10_000,
        long_poll_ms: 25_000,
    })
}

fn ask_for_work() -> Message {
    Message::AskForWork(AskForWork {
        free_gpus: vec![81_559, 23_028],
        wait_ms: 25_000,
    })
}

/// A spec with every field away from its default.
fn train_spec() -> JobSpec {
    JobSpec {
        params: JobParams::Train(TrainParams {
            epochs: 3,
            hyperparameters: BTreeMap::from([
                ("lr".into(), ParamValue::Float(0.0003)),
                ("batch".into(), ParamValue::Int(-64)),
                ("fp16".into(), ParamValue::Bool(true)),
                ("sched".into(), ParamValue::Text("cosine".into())),
            ]),
            ..TrainParams::new("llama-1b", "s3://data/train.jsonl")
        }),
        resources: Resources {
            gpus: 2,
            gpu_memory_mb: 40_960,
            labels: BTreeMap::from([("region".into(), "eu-west".into())]),
        },
        priority: -5,
        max_attempts: 5,
        timeout: Duration::from_millis(7_200_500),
        idempotency_key: Some("nightly-0601".into()),
        depends_on: vec![JobId(40), JobId(41)],
    }
}

fn assignment_of(spec: JobSpec) -> Message {
    Message::Assignment(Assignment {
        job: JobId(42),
        spec,
        attempt: 2,
        epoch: Epoch(9),
        lease_token: TOKEN,
        lease_expires_at: Timestamp(1_717_200_030_000),
        deadline: Timestamp(1_717_207_200_000),
    })
}

fn assignment() -> Message {
    assignment_of(train_spec())
}

fn started() -> Message {
    Message::Started {
        job: JobId(42),
        epoch: Epoch(9),
        lease_token: TOKEN,
    }
}

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        jobs: vec![
            RunningJob {
                job: JobId(42),
                epoch: Epoch(9),
                lease_token: TOKEN,
                progress: Some(0.25),
                serving: Some("http://10.0.0.7:41234".into()),
            },
            RunningJob {
                job: JobId(300),
                epoch: Epoch(10),
                lease_token: TOKEN,
                progress: None,
                serving: None,
            },
        ],
    })
}

fn heartbeat_ack() -> Message {
    Message::HeartbeatAck(HeartbeatAck {
        cancel: vec![JobId(43)],
        lost: vec![JobId(44), JobId(45)],
    })
}

fn log_batch() -> Message {
    Message::LogBatch(LogBatch {
        job: JobId(42),
        epoch: Epoch(9),
        lease_token: TOKEN,
        first_seq: 120,
        lines: vec!["epoch 1/3".into(), String::new(), "λ=0.5".into()],
    })
}

fn log_ack() -> Message {
    Message::LogAck {
        job: JobId(42),
        next_seq: 123,
    }
}

fn complete() -> Message {
    Message::Complete {
        job: JobId(42),
        epoch: Epoch(9),
        lease_token: TOKEN,
        output: JobOutput {
            metrics: BTreeMap::from([("accuracy".into(), 0.9375), ("loss".into(), 0.125)]),
            artifacts: BTreeMap::from([("model".into(), "s3://out/job-42/model.bin".into())]),
            result_json: Some(r#"{"ok":true}"#.into()),
        },
    }
}

fn fail() -> Message {
    Message::Fail {
        job: JobId(42),
        epoch: Epoch(9),
        lease_token: TOKEN,
        error: JobError::new(FailureClass::StageError, "CUDA out of memory"),
    }
}

fn cancel() -> Message {
    Message::Cancel {
        job: JobId(42),
        epoch: Epoch(9),
        reason: "cancelled by user".into(),
    }
}

fn goodbye() -> Message {
    Message::Goodbye { drain: true }
}

fn error() -> Message {
    Message::Error {
        code: ErrorCode::Stale,
        message: "epoch 9 is not live".into(),
    }
}

fn digest() -> Digest {
    Digest(std::array::from_fn(|i| i as u8))
}

fn artifact_meta() -> ArtifactMeta {
    ArtifactMeta {
        digest: digest(),
        size: 1_048_577,
        name: "physics.parquet".into(),
        kind: ArtifactKind::Checkpoint { step: 300 },
        job: Some(JobId(42)),
        created_at: Timestamp(1_700_000_000_000),
    }
}

fn artifact_messages() -> Vec<Message> {
    vec![
        Message::ArtifactStat { digest: digest() },
        Message::ArtifactInfo(Some(artifact_meta())),
        Message::ArtifactChunk {
            digest: digest(),
            upload: 0xfeed,
            offset: 1 << 20,
            data: b"PAR1".to_vec(),
        },
        Message::ArtifactCommit {
            digest: digest(),
            upload: 0xfeed,
            name: "model.safetensors".into(),
            kind: ArtifactKind::Model,
            job: JobId(42),
            epoch: Epoch(9),
            lease_token: TOKEN,
        },
        Message::ArtifactRead {
            digest: digest(),
            offset: 4096,
            len: 65_536,
        },
        Message::ArtifactData {
            data: b"PAR1".to_vec(),
            size: 1_048_577,
        },
        Message::CheckpointSaved {
            job: JobId(42),
            epoch: Epoch(9),
            lease_token: TOKEN,
            step: 300,
            digest: digest(),
        },
        Message::CheckpointQuery {
            job: JobId(42),
            epoch: Epoch(9),
            lease_token: TOKEN,
        },
        Message::CheckpointAt(Some((300, digest()))),
        Message::ResolveModel {
            reference: "teacher:2".into(),
        },
        Message::ModelFound(ModelVersion {
            name: "teacher".into(),
            version: 2,
            job: JobId(41),
            made_by: JobType::Train,
            uri: "nexa://artifacts/00".into(),
            dataset_uri: "nexa://artifacts/01".into(),
            teacher: None,
            metrics: BTreeMap::from([("accuracy".into(), 0.9375)]),
            created_at: Timestamp(1_700_000_000_000),
            evaluations: vec![JobId(43)],
        }),
    ]
}

/// One message of every variant, in declaration order.
fn all_messages() -> Vec<Message> {
    vec![
        hello(),
        welcome(),
        ask_for_work(),
        assignment(),
        Message::NoWork,
        started(),
        heartbeat(),
        heartbeat_ack(),
        log_batch(),
        log_ack(),
        complete(),
        fail(),
        cancel(),
        goodbye(),
        Message::Ack,
        error(),
    ]
    .into_iter()
    .chain(artifact_messages())
    .collect()
}

/// The other five parameter types, each in an otherwise default spec.
fn other_params() -> Vec<JobParams> {
    vec![
        JobParams::Generate(GenerateParams {
            seed: Some(7),
            task: Task::Regression,
            classes: None,
            noise: 0.05,
            ..GenerateParams::new("biology", 10_000)
        }),
        JobParams::Audit(AuditParams {
            label_column: Some("label".into()),
            ..AuditParams::new("gs://d/x.csv")
        }),
        JobParams::Distill(DistillParams {
            epochs: 4,
            alpha: 0.25,
            prompt_template: Some("Q: {q}\nA:".into()),
            options: Options(serde_json::Map::from_iter([(
                "lora".to_owned(),
                serde_json::json!({"rank": 8, "layers": ["q", "v"]}),
            )])),
            ..DistillParams::new("big", "small", "data/d.jsonl")
        }),
        JobParams::Evaluate(EvaluateParams {
            metrics: vec!["f1".into()],
            split: Some(Split::Validation),
            suite: Some("mmlu".into()),
            ..EvaluateParams::new("small", "data/e.jsonl")
        }),
        JobParams::Deploy(DeployParams {
            replicas: 2,
            region: Some("eu-west".into()),
            ..DeployParams::new("small")
        }),
    ]
}

/// Prints the hex of every fixture, to regenerate the goldens after a version bump.
#[test]
#[ignore = "prints the goldens; run by hand after bumping PROTOCOL_VERSION"]
fn print_goldens() {
    for message in all_messages() {
        println!("{}: {}", message.name(), hex(&frame(&message)));
    }
    for params in other_params() {
        let message = assignment_of(JobSpec::new(params));
        println!("assignment/{}: {}", message.name(), hex(&frame(&message)));
    }
}

// ---------------------------------------------------------------------------------------------
// Golden bytes, one test per message. Changing these bytes changes the protocol.

/// `Message::Hello`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_hello() {
    const GOLDEN: &str = concat!(
        "000000724e58464700050102030405060708000a6770752d6e6f64652d310b6a",
        "6f696e2d73336372337420fc0000040002154e56494449412048313030203830",
        "47422048424d33fc973e01000b4e56494449412041313047fbf4590206726567",
        "696f6e0765752d77657374047a6f6e65016203030405",
    );
    assert_golden(&hello(), GOLDEN);
}

/// `Message::Welcome`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_welcome() {
    const GOLDEN: &str = "000000194e584647000501020304050607080107fb3075fb1027fba861";
    assert_golden(&welcome(), GOLDEN);
}

/// `Message::AskForWork`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_ask_for_work() {
    const GOLDEN: &str = "0000001b4e584647000501020304050607080202fc973e0100fbf459fba861";
    assert_golden(&ask_for_work(), GOLDEN);
}

/// `Message::Assignment`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_assignment() {
    const GOLDEN: &str = concat!(
        "000000c14e58464700050102030405060708032a03086c6c616d612d31621573",
        "333a2f2f646174612f747261696e2e6a736f6e6c0304056261746368017f0466",
        "7031360001026c7202613255302aa9333f0573636865640306636f73696e6502",
        "7b7d02fb00a00106726567696f6e0765752d776573740905fb201cfc0065cd1d",
        "010c6e696768746c792d3036303102282902095a5a5a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5afd300919d18f010000fd007186",
        "d18f010000",
    );
    assert_golden(&assignment(), GOLDEN);
}

/// `Message::NoWork`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_no_work() {
    const GOLDEN: &str = "0000000f4e5846470005010203040506070804";
    assert_golden(&Message::NoWork, GOLDEN);
}

/// `Message::Started`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_started() {
    const GOLDEN: &str = concat!(
        "000000314e58464700050102030405060708052a095a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
    );
    assert_golden(&started(), GOLDEN);
}

/// `Message::Heartbeat`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_heartbeat() {
    const GOLDEN: &str = concat!(
        "000000784e5846470005010203040506070806022a095a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a01000000000000d03f01",
        "15687474703a2f2f31302e302e302e373a3431323334fb2c010a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a0000",
    );
    assert_golden(&heartbeat(), GOLDEN);
}

/// `Message::HeartbeatAck`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_heartbeat_ack() {
    const GOLDEN: &str = "000000144e5846470005010203040506070807012b022c2d";
    assert_golden(&heartbeat_ack(), GOLDEN);
}

/// `Message::LogBatch`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_log_batch() {
    const GOLDEN: &str = concat!(
        "000000454e58464700050102030405060708082a095a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a78030965706f636820312f",
        "330006cebb3d302e35",
    );
    assert_golden(&log_batch(), GOLDEN);
}

/// `Message::LogAck`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_log_ack() {
    const GOLDEN: &str = "000000114e58464700050102030405060708092a7b";
    assert_golden(&log_ack(), GOLDEN);
}

/// `Message::Complete`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_complete() {
    const GOLDEN: &str = concat!(
        "0000007e4e584647000501020304050607080a2a095a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a0208616363757261637900",
        "0000000000ee3f046c6f7373000000000000c03f01056d6f64656c1973333a2f",
        "2f6f75742f6a6f622d34322f6d6f64656c2e62696e010b7b226f6b223a747275",
        "657d",
    );
    assert_golden(&complete(), GOLDEN);
}

/// `Message::Fail`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_fail() {
    const GOLDEN: &str = concat!(
        "000000454e584647000501020304050607080b2a095a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a011243554441206f757420",
        "6f66206d656d6f7279",
    );
    assert_golden(&fail(), GOLDEN);
}

/// `Message::Cancel`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_cancel() {
    const GOLDEN: &str = concat!(
        "000000234e584647000501020304050607080c2a091163616e63656c6c656420",
        "62792075736572",
    );
    assert_golden(&cancel(), GOLDEN);
}

/// `Message::Goodbye`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_goodbye() {
    const GOLDEN: &str = "000000104e584647000501020304050607080d01";
    assert_golden(&goodbye(), GOLDEN);
}

/// `Message::Ack`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_ack() {
    const GOLDEN: &str = "0000000f4e584647000501020304050607080e";
    assert_golden(&Message::Ack, GOLDEN);
}

/// `Message::Error`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead
/// of editing the constant.
#[test]
fn golden_error() {
    const GOLDEN: &str = concat!(
        "000000244e584647000501020304050607080f011365706f6368203920697320",
        "6e6f74206c697665",
    );
    assert_golden(&error(), GOLDEN);
}

/// `Message::ArtifactStat`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_artifact_stat() {
    const GOLDEN: &str = concat!(
        "0000002f4e5846470005010203040506070810000102030405060708090a0b0c",
        "0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    assert_golden(&artifact_messages()[0], GOLDEN);
}

/// `Message::ArtifactInfo`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_artifact_info() {
    const GOLDEN: &str = concat!(
        "000000544e584647000501020304050607081101000102030405060708090a0b",
        "0c0d0e0f101112131415161718191a1b1c1d1e1ffc010010000f706879736963",
        "732e7061727175657402fb2c01012afd0068e5cf8b010000",
    );
    assert_golden(&artifact_messages()[1], GOLDEN);
}

/// `Message::ArtifactChunk`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_artifact_chunk() {
    const GOLDEN: &str = concat!(
        "0000003c4e5846470005010203040506070812000102030405060708090a0b0c",
        "0d0e0f101112131415161718191a1b1c1d1e1ffbedfefc000010000450415231",
    );
    assert_golden(&artifact_messages()[2], GOLDEN);
}

/// `Message::ArtifactCommit`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_artifact_commit() {
    const GOLDEN: &str = concat!(
        "000000674e5846470005010203040506070813000102030405060708090a0b0c",
        "0d0e0f101112131415161718191a1b1c1d1e1ffbedfe116d6f64656c2e736166",
        "6574656e736f7273012a095a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a",
    );
    assert_golden(&artifact_messages()[3], GOLDEN);
}

/// `Message::ArtifactRead`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_artifact_read() {
    const GOLDEN: &str = concat!(
        "000000374e5846470005010203040506070814000102030405060708090a0b0c",
        "0d0e0f101112131415161718191a1b1c1d1e1ffb0010fc00000100",
    );
    assert_golden(&artifact_messages()[4], GOLDEN);
}

/// `Message::ArtifactData`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_artifact_data() {
    const GOLDEN: &str = "000000194e58464700050102030405060708150450415231fc01001000";
    assert_golden(&artifact_messages()[5], GOLDEN);
}

/// `Message::CheckpointSaved`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_checkpoint_saved() {
    const GOLDEN: &str = concat!(
        "000000544e58464700050102030405060708162a095a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5afb2c010001020304050607",
        "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    assert_golden(&artifact_messages()[6], GOLDEN);
}

/// `Message::CheckpointQuery`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_checkpoint_query() {
    const GOLDEN: &str = concat!(
        "000000314e58464700050102030405060708172a095a5a5a5a5a5a5a5a5a5a5a",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
    );
    assert_golden(&artifact_messages()[7], GOLDEN);
}

/// `Message::CheckpointAt`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_checkpoint_at() {
    const GOLDEN: &str = concat!(
        "000000334e584647000501020304050607081801fb2c01000102030405060708",
        "090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    assert_golden(&artifact_messages()[8], GOLDEN);
}

/// `Message::ResolveModel`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_resolve_model() {
    const GOLDEN: &str = "000000194e584647000501020304050607081909746561636865723a32";
    assert_golden(&artifact_messages()[9], GOLDEN);
}

/// `Message::ModelFound`. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constant.
#[test]
fn golden_model_found() {
    const GOLDEN: &str = concat!(
        "000000604e584647000501020304050607081a0774656163686572022903136e",
        "6578613a2f2f6172746966616374732f3030136e6578613a2f2f617274696661",
        "6374732f30310001086163637572616379000000000000ee3ffd0068e5cf8b01",
        "0000012b",
    );
    assert_golden(&artifact_messages()[10], GOLDEN);
}

/// `Message::Assignment` with each of the other five parameter types (the Train one is above),
/// in a default spec. Changing these bytes changes the protocol: bump `PROTOCOL_VERSION`
/// instead of editing the constants.
#[test]
fn golden_assignment_params() {
    const GOLDEN: [&str; 5] = [
        concat!(
            "0000006c4e58464700050102030405060708032a000762696f6c6f6779fb1027",
            "010701009a9999999999a93f027b7d0000000003fc8051010000000002095a5a",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5afd30",
            "0919d18f010000fd007186d18f010000",
        ),
        concat!(
            "0000006a4e58464700050102030405060708032a010c67733a2f2f642f782e63",
            "737601056c6162656c00027b7d0000000003fc8051010000000002095a5a5a5a",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5afd300919",
            "d18f010000fd007186d18f010000",
        ),
        concat!(
            "000000ad4e58464700050102030405060708032a020362696705736d616c6c0c",
            "646174612f642e6a736f6e6c0000000000000040000000000000d03f04000109",
            "513a207b717d0a413a267b226c6f7261223a7b226c6179657273223a5b227122",
            "2c2276225d2c2272616e6b223a387d7d0000000003fc8051010000000002095a",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5afd",
            "300919d18f010000fd007186d18f010000",
        ),
        concat!(
            "000000754e58464700050102030405060708032a0405736d616c6c010c646174",
            "612f652e6a736f6e6c010101046d6d6c7501026631027b7d0000000003fc8051",
            "010000000002095a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            "5a5a5a5a5a5a5afd300919d18f010000fd007186d18f010000",
        ),
        concat!(
            "0000006b4e58464700050102030405060708032a0505736d616c6c056c6f6361",
            "6c010765752d7765737402027b7d0000000003fc8051010000000002095a5a5a",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5afd3009",
            "19d18f010000fd007186d18f010000",
        ),
    ];
    for (params, golden) in other_params().into_iter().zip(GOLDEN) {
        assert_golden(&assignment_of(JobSpec::new(params)), golden);
    }
}

/// The unit enums inside messages encode as their declaration index (one varint byte).
/// Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead of editing the
/// expected bytes.
#[test]
fn golden_unit_enums() {
    let codes = [
        ErrorCode::BadRequest,
        ErrorCode::Stale,
        ErrorCode::NotFound,
        ErrorCode::Unavailable,
    ];
    for (i, code) in codes.into_iter().enumerate() {
        let message = Message::Error {
            code,
            message: String::new(),
        };
        assert_eq!(payload(&message), [0x0f, i as u8, 0x00], "{code:?}");
        assert_eq!(
            decode_body(&frame(&message)[LENGTH_BYTES..]),
            Ok(golden(&message))
        );
    }

    let classes = [
        FailureClass::InvalidInput,
        FailureClass::StageError,
        FailureClass::WorkerLost,
        FailureClass::Timeout,
        FailureClass::Cancelled,
        FailureClass::Platform,
    ];
    for (i, class) in classes.into_iter().enumerate() {
        let message = Message::Fail {
            job: JobId(1),
            epoch: Epoch(2),
            lease_token: TOKEN,
            error: JobError::new(class, ""),
        };
        let mut expected = vec![0x0b, 1, 2];
        expected.extend(TOKEN.0);
        expected.extend([i as u8, 0x00]);
        assert_eq!(payload(&message), expected, "{class:?}");
        assert_eq!(
            decode_body(&frame(&message)[LENGTH_BYTES..]),
            Ok(golden(&message))
        );
    }

    let Message::Hello(mut hello) = hello() else {
        unreachable!()
    };
    hello.job_types = JobType::ALL.into_iter().collect();
    let message = Message::Hello(hello);
    let bytes = payload(&message);
    assert_eq!(bytes[bytes.len() - 7..], [6, 0, 1, 2, 3, 4, 5]);
    assert_eq!(
        decode_body(&frame(&message)[LENGTH_BYTES..]),
        Ok(golden(&message))
    );
}

// ---------------------------------------------------------------------------------------------
// The streaming codec

/// `messages` back to back, the `i`-th as request [`stream_id`]`(i)`.
fn stream_of(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        encode_into(stream_id(i), message, &mut out, DEFAULT_MAX_FRAME).expect("fits");
    }
    out
}

/// Chunk sizes taken from `sizes` in turn, round and round.
fn cycle(sizes: &[usize]) -> impl FnMut() -> usize + '_ {
    let mut i = 0;
    move || {
        let n = sizes[i % sizes.len()];
        i += 1;
        n
    }
}

#[test]
fn frames_fed_one_byte_at_a_time_come_out_as_each_completes() {
    let messages = all_messages();
    let stream = stream_of(&messages);
    // Where each frame ends in the stream.
    let ends: Vec<usize> = messages
        .iter()
        .scan(0, |end, m| {
            *end += frame(m).len();
            Some(*end)
        })
        .collect();

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut out = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        decoder.extend(std::slice::from_ref(byte));
        drain(&mut decoder, &mut out).unwrap();
        let fed = i + 1;
        let complete = ends.iter().take_while(|&&end| end <= fed).count();
        assert_eq!(out.len(), complete, "after {fed} bytes");
        let last_end = if complete == 0 { 0 } else { ends[complete - 1] };
        assert_eq!(decoder.buffered(), fed - last_end, "after {fed} bytes");
    }
    assert_eq!(out, numbered(&messages));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn frames_fed_in_random_chunks_come_out_in_order() {
    let all = all_messages();
    for seed in 0..200 {
        let mut rng = SplitMix(seed);
        let messages: Vec<Message> = (0..1 + rng.below(40))
            .map(|_| all[rng.below(all.len())].clone())
            .collect();
        let stream = stream_of(&messages);
        let max_chunk = 1 + rng.below(300);
        let (out, result, buffered) =
            decode_chunked(&stream, &mut || 1 + rng.below(max_chunk), DEFAULT_MAX_FRAME);
        assert_eq!(result, Ok(()), "seed {seed}");
        assert_eq!(out, numbered(&messages), "seed {seed}");
        assert_eq!(buffered, 0, "seed {seed}");
    }
}

#[test]
fn several_frames_in_one_chunk_all_come_out() {
    let messages = all_messages();
    let stream = stream_of(&messages);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    // Two whole streams buffered before anything is taken out.
    decoder.extend(&stream);
    decoder.extend(&stream);
    assert_eq!(decoder.buffered(), 2 * stream.len());
    let mut out = Vec::new();
    drain(&mut decoder, &mut out).unwrap();
    assert_eq!(out.len(), 2 * messages.len());
    assert_eq!(out[..messages.len()], numbered(&messages)[..]);
    assert_eq!(out[messages.len()..], numbered(&messages)[..]);
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.next_envelope(), Ok(None));
}

#[test]
fn a_frame_split_across_chunks_with_the_next_frames_start() {
    let messages = all_messages();
    for (i, a) in messages.iter().enumerate() {
        let b = &messages[(i + 1) % messages.len()];
        let (fa, fb) = (frame(a), frame(b));
        for k in 1..fa.len() {
            for j in [1, 4, 9, fb.len() - 1] {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
                let mut out = Vec::new();

                decoder.extend(&fa[..k]);
                drain(&mut decoder, &mut out).unwrap();
                assert!(out.is_empty(), "{} split at {k}", a.name());
                assert_eq!(decoder.buffered(), k);

                // The rest of `a` and the beginning of `b` in one chunk.
                decoder.extend(&[&fa[k..], &fb[..j]].concat());
                drain(&mut decoder, &mut out).unwrap();
                assert_eq!(out, [golden(a)], "{} split at {k}, then {j}", a.name());
                assert_eq!(decoder.buffered(), j);

                decoder.extend(&fb[j..]);
                drain(&mut decoder, &mut out).unwrap();
                assert_eq!(out, [golden(a), golden(b)]);
                assert_eq!(decoder.buffered(), 0);
            }
        }
    }
}

#[test]
fn frames_larger_than_the_compaction_threshold_stream_through() {
    // Frames of ~50 KiB in chunks that never line up with them, so the decoder's buffer is
    // compacted with a partial frame left in it.
    let messages: Vec<Message> = (0..12)
        .map(|i| {
            Message::LogBatch(LogBatch {
                job: JobId(7),
                epoch: Epoch(1),
                lease_token: TOKEN,
                first_seq: i,
                lines: vec![format!("{i}").repeat(50_000 + i as usize)],
            })
        })
        .collect();
    let stream = stream_of(&messages);
    for chunk in [70_001, 33_333, 150_000] {
        let (out, result, buffered) =
            decode_chunked(&stream, &mut cycle(&[chunk]), DEFAULT_MAX_FRAME);
        assert_eq!(result, Ok(()));
        assert_eq!(out, numbered(&messages), "chunks of {chunk}");
        assert_eq!(buffered, 0);
    }
}

#[test]
fn an_empty_or_partial_prefix_waits_for_more() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    assert_eq!(decoder.next_envelope(), Ok(None));
    decoder.extend(&[]);
    assert_eq!(decoder.next_envelope(), Ok(None));
    // Three bytes of a prefix that will be far over the limit: not judged yet.
    decoder.extend(&[0xff, 0xff, 0xff]);
    assert_eq!(decoder.next_envelope(), Ok(None));
    assert_eq!(decoder.buffered(), 3);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn a_length_over_the_limit_is_refused_from_the_prefix_alone() {
    let mut decoder = FrameDecoder::new(1024);
    decoder.extend(&1025u32.to_be_bytes());
    assert_eq!(decoder.buffered(), LENGTH_BYTES);
    assert_eq!(
        decoder.next_envelope(),
        Err(DecodeError::TooLarge {
            len: 1025,
            max: 1024
        })
    );

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.extend(&u32::MAX.to_be_bytes());
    let err = decoder.next_envelope().unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            len: u32::MAX as usize,
            max: DEFAULT_MAX_FRAME
        }
    );
    assert_eq!(
        err.to_string(),
        "frame of 4294967295 bytes exceeds the limit of 8388608 bytes"
    );
}

#[test]
fn the_frame_limit_is_inclusive() {
    let f = frame(&hello());
    let len = f.len() - LENGTH_BYTES;

    let mut decoder = FrameDecoder::new(len);
    decoder.extend(&f);
    assert_eq!(decoder.next_envelope(), Ok(Some(golden(&hello()))));

    let mut decoder = FrameDecoder::new(len - 1);
    decoder.extend(&f);
    assert_eq!(
        decoder.next_envelope(),
        Err(DecodeError::TooLarge { len, max: len - 1 })
    );
}

#[test]
fn an_http_request_is_refused_at_once() {
    // Someone points curl at the worker port: "GET " read as a length is about 1.2 GB.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.extend(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        decoder.next_envelope(),
        Err(DecodeError::TooLarge {
            len: u32::from_be_bytes(*b"GET ") as usize,
            max: DEFAULT_MAX_FRAME
        })
    );
}

#[test]
fn a_wrong_magic_is_refused_as_soon_as_the_header_is_buffered() {
    let f = raw_frame(b"NXFH", PROTOCOL_VERSION, &[0; 100]);
    assert_eq!(
        decode_body(&f[LENGTH_BYTES..]),
        Err(DecodeError::BadMagic(*b"NXFH"))
    );

    // Only the prefix and the header of a 106-byte frame have arrived.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.extend(&f[..LENGTH_BYTES + HEADER_BYTES]);
    let err = decoder.next_envelope().unwrap_err();
    assert_eq!(err, DecodeError::BadMagic(*b"NXFH"));
    assert_eq!(
        err.to_string(),
        "not a Nexa Forge frame (magic [4e, 58, 46, 48])"
    );

    // The same with the right magic: a partial frame, not an error.
    let good = frame(&hello());
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.extend(&good[..LENGTH_BYTES + HEADER_BYTES]);
    assert_eq!(decoder.next_envelope(), Ok(None));

    // And a whole frame with a wrong magic.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.extend(&raw_frame(
        b"\0\0\0\0",
        PROTOCOL_VERSION,
        &payload(&hello()),
    ));
    assert_eq!(decoder.next_envelope(), Err(DecodeError::BadMagic([0; 4])));
}

#[test]
fn another_protocol_version_is_unsupported() {
    for version in [0, 1, 2, 3, 4, 6, u16::MAX] {
        let f = raw_frame(&MAGIC, version, &payload(&hello()));
        let expected = DecodeError::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        };
        assert_eq!(decode_body(&f[LENGTH_BYTES..]), Err(expected.clone()));

        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.extend(&f);
        assert_eq!(decoder.next_envelope(), Err(expected));
    }
    let err = decode_body(&raw_frame(&MAGIC, 1, &[])[LENGTH_BYTES..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol version 1 is not supported (this build speaks version 5)"
    );
}

/// Frames of version 1, which had no request id (these are its goldens of `Ack` and
/// `Started`), are refused as another version, not misread as a short or malformed frame.
#[test]
fn a_version_1_frame_is_refused_as_another_version() {
    let expected = DecodeError::UnsupportedVersion {
        got: 1,
        supported: PROTOCOL_VERSION,
    };
    for old in ["000000074e58464700010e", "000000094e5846470001052a09"] {
        let old = unhex(old);
        assert_eq!(decode_body(&old[LENGTH_BYTES..]), Err(expected.clone()));
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.extend(&old);
        assert_eq!(decoder.next_envelope(), Err(expected.clone()));
    }
}

/// A frame of another version is refused as soon as its version has arrived, before the rest.
#[test]
fn another_version_is_refused_as_soon_as_it_is_buffered() {
    let f = raw_frame(&MAGIC, 7, &payload(&hello()));
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.extend(&f[..LENGTH_BYTES + VERSIONED_BYTES - 1]);
    assert_eq!(decoder.next_envelope(), Ok(None));
    decoder.extend(&f[LENGTH_BYTES + VERSIONED_BYTES - 1..LENGTH_BYTES + VERSIONED_BYTES]);
    assert_eq!(
        decoder.next_envelope(),
        Err(DecodeError::UnsupportedVersion {
            got: 7,
            supported: PROTOCOL_VERSION
        })
    );
}

/// The request id is eight bytes, big-endian, after the version; every value comes back.
/// Changing these bytes changes the protocol: bump `PROTOCOL_VERSION` instead.
#[test]
fn golden_request_ids() {
    for (id, golden) in [
        (0, "0000000f4e584647000500000000000000000e"),
        (1, "0000000f4e584647000500000000000000010e"),
        (GOLDEN_ID, "0000000f4e584647000501020304050607080e"),
        (u64::MAX, "0000000f4e5846470005ffffffffffffffff0e"),
    ] {
        let f = encode(id, &Message::Ack, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(hex(&f), golden, "request id {id:#x}");
        assert_eq!(
            decode_body(&f[LENGTH_BYTES..]),
            Ok(Envelope {
                id,
                message: Message::Ack
            })
        );
    }
}

#[test]
fn a_truncated_payload_is_malformed() {
    for message in all_messages() {
        let full = payload(&message);
        for cut in 0..full.len() {
            let f = raw_frame(&MAGIC, PROTOCOL_VERSION, &full[..cut]);
            let result = decode_body(&f[LENGTH_BYTES..]);
            assert!(
                matches!(result, Err(DecodeError::Malformed(_))),
                "{} cut to {cut} bytes: {result:?}",
                message.name()
            );
        }
    }
    // Through the decoder: the frame's length covers only what was sent.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let full = payload(&assignment());
    decoder.extend(&raw_frame(
        &MAGIC,
        PROTOCOL_VERSION,
        &full[..full.len() / 2],
    ));
    assert!(matches!(
        decoder.next_envelope(),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn trailing_bytes_after_the_message_are_malformed() {
    for message in all_messages() {
        for extra in [&[0u8][..], &[1, 2, 3]] {
            let f = raw_frame(
                &MAGIC,
                PROTOCOL_VERSION,
                &[payload(&message), extra.to_vec()].concat(),
            );
            assert_eq!(
                decode_body(&f[LENGTH_BYTES..]),
                Err(DecodeError::Malformed(format!(
                    "{} bytes left over after the message",
                    extra.len()
                ))),
                "{}",
                message.name()
            );
        }
    }
}

/// `haystack` with its one occurrence of `needle` replaced by `with`.
fn replace_once(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let at: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "{needle:02x?} occurs {} times", at.len());
    [&haystack[..at[0]], with, &haystack[at[0] + needle.len()..]].concat()
}

#[test]
fn payloads_that_are_not_a_message_are_malformed() {
    let hello = payload(&hello());
    let default_assignment = payload(&assignment_of(JobSpec::new(other_params().remove(0))));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown variant 27", vec![0x1b]),
        ("unknown variant, wide", vec![0xfb, 0x00, 0x01]),
        ("invalid varint marker", vec![0xff]),
        ("bool that is 2", vec![0x0d, 0x02]),
        ("unknown error code", vec![0x0f, 0x04, 0x00]),
        ("invalid UTF-8", vec![0x0f, 0x00, 0x02, 0xc3, 0x28]),
        ("option tag 2", vec![0x06, 0x01, 0x2a, 0x09, 0x02]),
        (
            "empty worker id",
            replace_once(&hello, b"\x0agpu-node-1", b"\x00"),
        ),
        (
            "worker id with a space",
            replace_once(&hello, b"gpu-node-1", b"gpu node 1"),
        ),
        (
            "u32 field holding 2^32",
            replace_once(
                &hello,
                &[0x20, 0xfc, 0x00, 0x00, 0x04, 0x00],
                &[0xfd, 0, 0, 0, 0, 1, 0, 0, 0, 0xfc, 0x00, 0x00, 0x04, 0x00],
            ),
        ),
        (
            "duration past u64 seconds",
            replace_once(
                &default_assignment,
                &[0xfc, 0x80, 0x51, 0x01, 0x00, 0x00],
                &[
                    0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc, 0x00, 0xca, 0x9a,
                    0x3b,
                ],
            ),
        ),
    ];
    for (what, bytes) in cases {
        let f = raw_frame(&MAGIC, PROTOCOL_VERSION, &bytes);
        let result = decode_body(&f[LENGTH_BYTES..]);
        assert!(
            matches!(result, Err(DecodeError::Malformed(_))),
            "{what}: {result:?}"
        );
    }
}

#[test]
fn a_body_shorter_than_the_header_is_too_short() {
    let header = &raw_frame(&MAGIC, PROTOCOL_VERSION, &[])[LENGTH_BYTES..];
    assert_eq!(header.len(), HEADER_BYTES);
    for n in 0..HEADER_BYTES {
        assert_eq!(decode_body(&header[..n]), Err(DecodeError::TooShort(n)));
    }
    // A whole header and nothing after it is a header without a message.
    assert!(matches!(
        decode_body(header),
        Err(DecodeError::Malformed(_))
    ));

    for len in [0, 5, VERSIONED_BYTES, HEADER_BYTES - 1] {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.extend(&(len as u32).to_be_bytes());
        decoder.extend(&header[..len]);
        assert_eq!(decoder.next_envelope(), Err(DecodeError::TooShort(len)));
    }
}

#[test]
fn a_message_over_the_limit_is_not_encoded() {
    let big = Message::LogBatch(LogBatch {
        job: JobId(42),
        epoch: Epoch(9),
        lease_token: TOKEN,
        first_seq: 0,
        lines: vec!["x".repeat(100)],
    });
    let len = frame(&big).len() - LENGTH_BYTES;

    let err = encode(GOLDEN_ID, &big, len - 1).unwrap_err();
    assert_eq!(
        err,
        EncodeError::TooLarge {
            message: "log_batch",
            len,
            max: len - 1
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "log_batch message of {len} bytes exceeds the frame limit of {} bytes",
            len - 1
        )
    );

    // `encode_into` leaves what was already in `out` as it was.
    let before = frame(&Message::Ack);
    let mut out = before.clone();
    assert_eq!(
        encode_into(GOLDEN_ID, &big, &mut out, 64),
        Err(EncodeError::TooLarge {
            message: "log_batch",
            len,
            max: 64
        })
    );
    assert_eq!(out, before);

    // Exactly at the limit it fits, after what was there.
    encode_into(GOLDEN_ID, &big, &mut out, len).unwrap();
    assert_eq!(out, [before, frame(&big)].concat());
}

/// A string whose announced length is beyond its frame is malformed, and decoding it
/// allocates no more than the frame holds.
///
/// Open bug, pinned here: bincode's `standard()` configuration has no limit, and bincode
/// decodes a `String` by allocating the announced length (`vec![0u8; len]`) before reading the
/// bytes. The 21-byte frame `000000114e58464700010f00fd0000000000010000` (an `Error` message
/// whose text claims 2^40 bytes) makes that allocation fail, which aborts the whole process;
/// 2^64 - 1 panics with "capacity overflow"; 2^32 passes only because the kernel hands out
/// zeroed pages lazily. Any peer can send such a frame: it is far under the frame limit.
/// Regression (found by the fuzzer): a string announcing more bytes than its frame holds was
/// allocated before it was read, so a 21-byte frame could abort the process.
#[test]
fn a_string_longer_than_its_frame_is_malformed() {
    for len in [u64::MAX, 1 << 40, 1 << 32] {
        let mut bytes = vec![0x0f, 0x00, 0xfd];
        bytes.extend_from_slice(&len.to_le_bytes());
        let f = raw_frame(&MAGIC, PROTOCOL_VERSION, &bytes);
        let result = decode_body(&f[LENGTH_BYTES..]);
        assert!(
            matches!(result, Err(DecodeError::Malformed(_))),
            "length {len}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Bytes for random payloads, the varint markers of long lengths (0xfc, 0xfd) included.
fn payload_byte() -> impl Strategy<Value = u8> {
    any::<u8>()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes, in any chunks, under any limit: the decoder answers, it never panics.
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunks in proptest::collection::vec(1usize..300, 1..16),
        max_frame in 0usize..4096,
    ) {
        let (_, result, buffered) = decode_chunked(&bytes, &mut cycle(&chunks), max_frame);
        prop_assert!(buffered <= bytes.len());
        let _ = result;
    }

    /// A random payload behind a valid header either is malformed or decodes to a message that
    /// encodes and decodes to itself. (Compared as bytes, as a decoded float may be NaN.)
    #[test]
    fn random_payloads_are_messages_or_malformed(
        bytes in proptest::collection::vec(payload_byte(), 0..512),
    ) {
        let f = raw_frame(&MAGIC, PROTOCOL_VERSION, &bytes);
        match decode_body(&f[LENGTH_BYTES..]) {
            Ok(envelope) => {
                prop_assert_eq!(envelope.id, GOLDEN_ID);
                let again = frame(&envelope.message);
                let decoded = decode_body(&again[LENGTH_BYTES..]);
                prop_assert!(decoded.is_ok(), "{decoded:?}");
                prop_assert_eq!(frame(&decoded.unwrap().message), again);
            }
            Err(DecodeError::Malformed(_)) => {}
            Err(e) => prop_assert!(false, "{e:?} for a payload behind a valid header"),
        }
    }

    /// Valid frames in any chunks all come out, in order, and nothing stays buffered.
    #[test]
    fn valid_frames_in_any_chunks_come_out_in_order(
        picks in proptest::collection::vec(0usize..16, 0..24),
        chunks in proptest::collection::vec(1usize..200, 1..16),
    ) {
        let all = all_messages();
        let messages: Vec<Message> = picks.iter().map(|&i| all[i].clone()).collect();
        let (out, result, buffered) =
            decode_chunked(&stream_of(&messages), &mut cycle(&chunks), DEFAULT_MAX_FRAME);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(out, numbered(&messages));
        prop_assert_eq!(buffered, 0);
    }

    /// Valid frames followed by garbage: every valid message is returned before the first
    /// error (or before the decoder waits for bytes the garbage promised).
    #[test]
    fn valid_frames_come_out_before_any_error(
        picks in proptest::collection::vec(0usize..16, 0..12),
        garbage in proptest::collection::vec(any::<u8>(), 1..512),
        chunks in proptest::collection::vec(1usize..200, 1..16),
        max_frame in prop_oneof![Just(DEFAULT_MAX_FRAME), 200usize..4096],
    ) {
        let all = all_messages();
        let messages: Vec<Message> = picks.iter().map(|&i| all[i].clone()).collect();
        let stream = [stream_of(&messages), garbage].concat();
        let (out, _, _) = decode_chunked(&stream, &mut cycle(&chunks), max_frame);
        prop_assert!(out.len() >= messages.len(), "{} of {} came out", out.len(), messages.len());
        prop_assert_eq!(&out[..messages.len()], &numbered(&messages)[..]);
    }

    /// Any request id on any message comes back as it went, through the streaming decoder.
    #[test]
    fn any_request_id_comes_back(
        frames in proptest::collection::vec((any::<u64>(), 0usize..16), 1..24),
        chunks in proptest::collection::vec(1usize..200, 1..16),
    ) {
        let all = all_messages();
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for (id, pick) in frames {
            encode_into(id, &all[pick], &mut stream, DEFAULT_MAX_FRAME).expect("fits");
            sent.push(Envelope { id, message: all[pick].clone() });
        }
        let (out, result, buffered) = decode_chunked(&stream, &mut cycle(&chunks), DEFAULT_MAX_FRAME);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(out, sent);
        prop_assert_eq!(buffered, 0);
    }
}
