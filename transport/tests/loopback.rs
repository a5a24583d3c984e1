//! The transport on loopback: handshakes, refusals, garbage, restarts, many connections, and
//! many requests sharing one connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexa_runtime::wire::{
    self, AskForWork, Envelope, ErrorCode, FrameDecoder, Heartbeat, HeartbeatAck, Hello, Message,
    Welcome,
};
use nexa_runtime::{Epoch, JobId, JobType, LeaseToken, WorkerId};
use nexa_transport::*;
use quinn::ConnectionError;

const TOKEN: &str = "s3cret-join-token";

/// A control plane that stores log lines the way the job store does (each line number once,
/// no gaps) in a map that outlives server restarts.
///
/// `AskForWork` is a long poll: with `wait_ms` 0 it is answered at once, otherwise it is held
/// until the test opens the gate ([`TestPlane::open_gate`]), as a real one is held until work
/// arrives. Either way the answer is `Error { NotFound, "no work for <free_gpus>" }`, so each
/// request can be told by its answer.
#[derive(Default)]
struct TestPlane {
    logs: Mutex<BTreeMap<JobId, Vec<String>>>,
    sessions: Mutex<Vec<Session>>,
    connected: AtomicUsize,
    disconnected: AtomicUsize,
    gate: Gate,
    /// Long polls being held at the gate now.
    held: AtomicUsize,
    /// Long polls the gate let through.
    released: AtomicUsize,
}

/// Holds long polls until opened.
struct Gate(tokio::sync::watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Self {
        Gate(tokio::sync::watch::Sender::new(false))
    }
}

impl TestPlane {
    fn open_gate(&self) {
        self.gate.0.send_replace(true);
    }

    /// Waits until `n` long polls are held at the gate.
    async fn until_held(&self, n: usize) {
        while self.held.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A long poll tagged `tag`, held at the gate when `held`.
fn ask(tag: u64, held: bool) -> Message {
    Message::AskForWork(AskForWork {
        free_gpus: vec![tag],
        wait_ms: if held { 30_000 } else { 0 },
    })
}

/// The answer to [`ask`]`(tag, _)`.
fn no_work(tag: u64) -> Message {
    Message::Error {
        code: ErrorCode::NotFound,
        message: format!("no work for {:?}", [tag]),
    }
}

impl Handler for TestPlane {
    async fn connected(&self, session: &Session, hello: Hello) -> Result<Welcome, String> {
        if hello.worker.as_str() == "refused-worker" {
            return Err("this worker is banned".into());
        }
        self.sessions.lock().unwrap().push(session.clone());
        self.connected.fetch_add(1, Ordering::SeqCst);
        Ok(Welcome {
            session: 0,
            lease_ttl_ms: 30_000,
            heartbeat_ms: 1_000,
            long_poll_ms: 1_000,
        })
    }

    async fn request(&self, _session: &Session, message: Message) -> Message {
        match message {
            Message::AskForWork(ask) => {
                if ask.wait_ms > 0 {
                    let mut gate = self.gate.0.subscribe();
                    self.held.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    self.held.fetch_sub(1, Ordering::SeqCst);
                    self.released.fetch_add(1, Ordering::SeqCst);
                }
                Message::Error {
                    code: ErrorCode::NotFound,
                    message: format!("no work for {:?}", ask.free_gpus),
                }
            }
            Message::Heartbeat(hb) => Message::HeartbeatAck(HeartbeatAck {
                cancel: hb.jobs.iter().map(|j| j.job).collect(),
                lost: vec![],
            }),
            Message::LogBatch(batch) => {
                let mut logs = self.logs.lock().unwrap();
                let stored = logs.entry(batch.job).or_default();
                let next = stored.len() as u64;
                if batch.first_seq > next {
                    return Message::Error {
                        code: ErrorCode::BadRequest,
                        message: format!("gap: expected {next}"),
                    };
                }
                let skip = (next - batch.first_seq) as usize;
                stored.extend(batch.lines.into_iter().skip(skip));
                Message::LogAck {
                    job: batch.job,
                    next_seq: stored.len() as u64,
                }
            }
            _ => Message::Ack,
        }
    }

    async fn disconnected(&self, _session: &Session, _reason: String) {
        self.disconnected.fetch_add(1, Ordering::SeqCst);
    }
}

fn hello(name: &str, token: &str) -> Hello {
    Hello {
        worker: WorkerId::new(name).unwrap(),
        token: token.into(),
        cpus: 4,
        memory_mb: 8192,
        gpus: vec![],
        labels: BTreeMap::new(),
        job_types: JobType::ALL.into_iter().collect::<BTreeSet<_>>(),
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    plane: Arc<TestPlane>,
    server: Server,
}

fn server_config(dir: &std::path::Path, addr: SocketAddr) -> ServerConfig {
    let mut config = ServerConfig::new(addr, dir, TOKEN);
    config.handshake_timeout = Duration::from_secs(20);
    config.max_frame = 64 * 1024;
    config
}

async fn cluster() -> Cluster {
    cluster_with(|_| {}).await
}

async fn cluster_with(adjust: impl FnOnce(&mut ServerConfig)) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let plane = Arc::new(TestPlane::default());
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = server_config(dir.path(), addr);
    adjust(&mut config);
    let server = Server::start(config, plane.clone()).await.unwrap();
    Cluster { dir, plane, server }
}

impl Cluster {
    fn client_config(&self, name: &str) -> ClientConfig {
        let trust = Trust::Fingerprint(self.server.fingerprint());
        let mut config = ClientConfig::new(self.server.local_addr(), trust, hello(name, TOKEN));
        config.request_timeout = Duration::from_secs(10);
        config.max_frame = 64 * 1024;
        config.reconnect.base = Duration::from_millis(20);
        config.reconnect.max = Duration::from_millis(200);
        config
    }

    /// A raw QUIC connection that said hello as `name` and was welcomed, with its stream.
    async fn raw_welcomed(&self, name: &str) -> (quinn::Connection, quinn::SendStream, RawReader) {
        let connection = self.raw().await;
        let (mut send, recv) = connection.open_bi().await.unwrap();
        let hello = wire::encode(0, &Message::Hello(hello(name, TOKEN)), 1 << 20).unwrap();
        send.write_all(&hello).await.unwrap();
        let mut reader = RawReader::new(recv);
        let welcome = reader.next().await.expect("a welcome");
        assert_eq!(welcome.id, 0);
        assert!(matches!(welcome.message, Message::Welcome(_)));
        (connection, send, reader)
    }

    /// A raw QUIC connection that has not said hello.
    async fn raw(&self) -> quinn::Connection {
        let quic = self.client_config("raw").quic().unwrap();
        let endpoint = client_endpoint(self.server.local_addr()).unwrap();
        endpoint
            .connect_with(quic, self.server.local_addr(), CERT_NAMES[0])
            .unwrap()
            .await
            .unwrap()
    }
}

/// Reads envelopes off a raw stream, as the transport does.
struct RawReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl RawReader {
    fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    /// The next envelope; `None` when the stream ends or fails.
    async fn next(&mut self) -> Option<Envelope> {
        loop {
            if let Some(envelope) = self.decoder.next_envelope().unwrap() {
                return Some(envelope);
            }
            let chunk = self.recv.read_chunk(1 << 16, true).await.ok()??;
            self.decoder.extend(&chunk.bytes);
        }
    }
}

fn closed_with(err: &ConnectionError) -> Option<(u64, String)> {
    match err {
        ConnectionError::ApplicationClosed(c) => Some((
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn a_worker_with_the_right_token_is_welcomed_and_served() {
    let c = cluster().await;
    let (client, welcome, _events) = Client::connect(c.client_config("w1")).await.unwrap();
    assert!(welcome.session >= 1);
    assert_eq!(welcome.heartbeat_ms, 1_000);
    let hb = Message::Heartbeat(Heartbeat {
        jobs: vec![wire::RunningJob {
            job: JobId(7),
            epoch: Epoch(3),
            lease_token: LeaseToken::default(),
            progress: Some(0.5),
            serving: None,
        }],
    });
    let answer = client.request(&hb).await.unwrap();
    assert_eq!(
        answer,
        Message::HeartbeatAck(HeartbeatAck {
            cancel: vec![JobId(7)],
            lost: vec![]
        })
    );
    assert_eq!(c.plane.connected.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_server_carries_on() {
    let c = cluster().await;
    let mut config = c.client_config("w1");
    config.hello.token = "guess".into();
    let err = Client::connect(config).await.unwrap_err();
    match &err {
        ConnectError::Refused { code, reason } => {
            assert_eq!(*code, u64::from(close::BAD_TOKEN));
            assert_eq!(reason, "wrong join token");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(err.to_string().contains("wrong join token"), "{err}");
    let (client, _, _) = Client::connect(c.client_config("w2")).await.unwrap();
    assert_eq!(client.request(&Message::Ack).await.unwrap(), Message::Ack);
}

#[tokio::test]
async fn a_worker_the_handler_refuses_gets_its_reason() {
    let c = cluster().await;
    let err = Client::connect(c.client_config("refused-worker"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { code, reason } if *code == u64::from(close::REJECTED) && reason == "this worker is banned"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_fingerprint_names_both_fingerprints() {
    let c = cluster().await;
    let mut config = c.client_config("w1");
    let wrong = Fingerprint([7; 32]);
    config.trust = Trust::Fingerprint(wrong);
    let err = Client::connect(config).await.unwrap_err();
    match &err {
        ConnectError::FingerprintMismatch { expected, seen } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*seen, c.server.fingerprint());
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&wrong.to_string()) && text.contains(&c.server.fingerprint().to_string())
    );
}

#[tokio::test]
async fn a_ca_file_that_holds_the_servers_certificate_is_trusted() {
    let c = cluster().await;
    let mut config = c.client_config("w1");
    config.trust = Trust::CaFile(ServerIdentity::cert_path(c.dir.path()));
    config.server_name = "localhost".into();
    let (client, _, _) = Client::connect(config).await.unwrap();
    assert_eq!(client.request(&Message::Ack).await.unwrap(), Message::Ack);
}

#[tokio::test]
async fn another_protocol_version_is_refused_with_a_reason() {
    let c = cluster().await;
    let connection = c.raw().await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    let mut frame = wire::encode(0, &Message::Hello(hello("w1", TOKEN)), 1 << 20).unwrap();
    frame[8..10].copy_from_slice(&1u16.to_be_bytes());
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    let (code, reason) = closed_with(&connection.closed().await).expect("closed by the server");
    assert_eq!(code, u64::from(close::VERSION_MISMATCH));
    assert_eq!(
        reason,
        format!(
            "protocol version 1 is not supported; this server speaks version {}",
            wire::PROTOCOL_VERSION
        )
    );
}

#[tokio::test]
async fn a_client_that_says_nothing_is_closed() {
    let c = cluster_with(|config| config.handshake_timeout = Duration::from_millis(300)).await;
    let connection = c.raw().await;
    let (code, reason) = closed_with(&connection.closed().await).expect("closed by the server");
    assert_eq!(code, u64::from(close::HANDSHAKE_TIMEOUT));
    assert!(reason.starts_with("no hello within"), "{reason}");
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let c = cluster().await;
    let (bystander, _, _) = Client::connect(c.client_config("bystander")).await.unwrap();

    let (connection, mut send, _recv) = c.raw_welcomed("big").await;
    send.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap();
    let (code, reason) = closed_with(&connection.closed().await).expect("closed by the server");
    assert_eq!(code, u64::from(close::FRAME_TOO_LARGE));
    assert_eq!(
        reason,
        "frame of 104857600 bytes exceeds the limit of 65536 bytes"
    );

    // The sender's side refuses to encode one, too.
    let huge = Message::Error {
        code: ErrorCode::BadRequest,
        message: "x".repeat(100_000),
    };
    assert!(matches!(
        bystander.request(&huge).await,
        Err(RequestError::Encode(_))
    ));
    assert_eq!(
        bystander.request(&Message::Ack).await.unwrap(),
        Message::Ack
    );
}

#[tokio::test]
async fn garbage_datagrams_do_not_disturb_the_server() {
    let c = cluster().await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2000usize {
        let len = 1 + (i * 37) % 1400;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        socket.send_to(&bytes, c.server.local_addr()).unwrap();
    }
    // Garbage inside a real QUIC stream, too.
    let connection = c.raw().await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(b"\x00\x00\x00\x10this is not it!!")
        .await
        .unwrap();
    send.finish().unwrap();
    let (code, _) = closed_with(&connection.closed().await).expect("closed by the server");
    assert_eq!(code, u64::from(close::PROTOCOL_ERROR));
    // And after a welcome, on the connection's stream.
    let (connection, mut send, _reader) = c.raw_welcomed("garbage").await;
    send.write_all(b"\x00\x00\x00\x10this is not it!!")
        .await
        .unwrap();
    let (code, reason) = closed_with(&connection.closed().await).expect("closed by the server");
    assert_eq!(code, u64::from(close::PROTOCOL_ERROR));
    assert!(reason.starts_with("not a Nexa Forge frame"), "{reason}");

    let (client, _, _) = Client::connect(c.client_config("after-garbage"))
        .await
        .unwrap();
    assert_eq!(client.request(&Message::Ack).await.unwrap(), Message::Ack);
}

#[tokio::test]
async fn server_pushes_reach_the_worker_and_its_answer_comes_back() {
    let c = cluster().await;
    let (_client, welcome, mut events) = Client::connect(c.client_config("w1")).await.unwrap();
    let session = c.plane.sessions.lock().unwrap()[0].clone();
    assert_eq!(
        (session.id(), session.worker().as_str()),
        (welcome.session, "w1")
    );
    let worker = tokio::spawn(async move {
        match events.recv().await {
            Some(ClientEvent::Pushed(pushed)) => {
                let got = pushed.message.clone();
                pushed.reply(Message::Ack);
                got
            }
            other => panic!("expected a push, got {other:?}"),
        }
    });
    let cancel = Message::Cancel {
        job: JobId(4),
        epoch: Epoch(9),
        reason: "user asked".into(),
    };
    assert_eq!(session.push(&cancel).await.unwrap(), Message::Ack);
    assert_eq!(worker.await.unwrap(), cancel);
}

/// Clients streaming logs while the server is restarted: each reconnects, and the stored
/// log of every job is exactly its lines, in order, none lost and none doubled.
#[tokio::test]
async fn logs_resume_after_a_server_restart_without_loss_or_duplicates() {
    let c = cluster().await;
    let addr = c.server.local_addr();
    let plane = c.plane.clone();
    const JOBS: u64 = 3;
    const LINES: u64 = 600;
    const BEFORE_RESTART: u64 = 200;
    let mut tasks = Vec::new();
    for j in 0..JOBS {
        let (client, _, mut events) = Client::connect(c.client_config(&format!("w{j}")))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut stream = LogStream::new(JobId(j + 1), Epoch(j + 1), LeaseToken::default());
            let (mut disconnected, mut reconnected) = (false, false);
            for i in 0..LINES {
                stream.push(format!("job {j} line {i}"));
                if i % 10 == 9 {
                    // A flush cut off by the restart keeps its lines for the next one.
                    let _ = stream.flush(&client).await;
                }
                // Half-way, hold on until the restart has been seen, so it lands mid-stream.
                while i == LINES / 2 && !reconnected {
                    match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                        Ok(Some(ClientEvent::Disconnected { reason })) => {
                            assert!(reason.contains("server shutting down"), "{reason}");
                            disconnected = true;
                        }
                        Ok(Some(ClientEvent::Reconnected { .. })) => {
                            assert!(disconnected, "job {j}: reconnected before a disconnect");
                            reconnected = true;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => panic!("job {j}: no reconnect"),
                    }
                }
            }
            while let Err(e) = stream.flush(&client).await {
                assert!(matches!(e, FlushError::Request(_)), "{e}");
            }
            assert_eq!((stream.pending(), stream.acked()), (0, LINES));
        }));
    }
    // Restart once every job has some lines stored.
    loop {
        let stored: Vec<usize> = {
            let logs = plane.logs.lock().unwrap();
            (1..=JOBS)
                .map(|j| logs.get(&JobId(j)).map_or(0, Vec::len))
                .collect()
        };
        if stored.iter().all(|&n| n as u64 >= BEFORE_RESTART) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.server.shutdown().await;
    // The sessions hold the old connections, and with them the old socket.
    plane.sessions.lock().unwrap().clear();
    let restarted = restart(c.dir.path(), addr, &plane).await;
    for t in tasks {
        t.await.unwrap();
    }
    {
        let logs = plane.logs.lock().unwrap();
        for j in 0..JOBS {
            let expected: Vec<String> = (0..LINES).map(|i| format!("job {j} line {i}")).collect();
            assert_eq!(logs[&JobId(j + 1)], expected, "job {}", j + 1);
        }
    }
    restarted.shutdown().await;
}

/// Starts a server on `addr` again, waiting for the old socket to be released.
async fn restart(dir: &std::path::Path, addr: SocketAddr, plane: &Arc<TestPlane>) -> Server {
    for _ in 0..200 {
        match Server::start(server_config(dir, addr), plane.clone()).await {
            Ok(server) => return server,
            Err(ServerError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{addr} was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_workers_connect_at_once() {
    let c = cluster().await;
    let endpoints: Vec<_> = (0..10)
        .map(|_| client_endpoint(c.server.local_addr()).unwrap())
        .collect();
    // Connect in waves (a UDP socket's receive buffer holds a few hundred handshakes at a
    // time), keeping every connection open: all 1,000 are connected at once at the end.
    let mut clients = Vec::new();
    let mut sessions = BTreeSet::new();
    for wave in 0..10 {
        let mut joins = Vec::new();
        for i in wave * 100..(wave + 1) * 100 {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let config = c.client_config(&format!("worker-{i}"));
            joins.push(tokio::spawn(Client::connect_on(endpoint, config)));
        }
        for j in joins {
            let (client, welcome, events) = j.await.unwrap().unwrap();
            sessions.insert(welcome.session);
            clients.push((client, events));
        }
    }
    assert_eq!(sessions.len(), 1000, "sessions must be distinct");
    assert_eq!(c.plane.connected.load(Ordering::SeqCst), 1000);
    // Every connection is still up and answers, all at once.
    let clients = Arc::new(clients);
    let mut joins = Vec::new();
    for i in 0..clients.len() {
        let clients = clients.clone();
        joins.push(tokio::spawn(async move {
            clients[i].0.request(&Message::Ack).await
        }));
    }
    for j in joins {
        assert_eq!(j.await.unwrap().unwrap(), Message::Ack);
    }
    assert!(clients.iter().all(|(client, _)| client.is_connected()));
    assert_eq!(c.plane.disconnected.load(Ordering::SeqCst), 0);
}

/// Many requests in flight on one connection, the first ones held by the control plane while
/// the later ones are answered: each gets its own answer, whatever the order they come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_connection_each_get_their_own_answer_in_any_order() {
    let c = cluster().await;
    let (client, _, _events) = Client::connect(c.client_config("w1")).await.unwrap();
    let client = Arc::new(client);
    const HELD: u64 = 50;
    const QUICK: u64 = 200;
    let mut held = tokio::task::JoinSet::new();
    for tag in 0..HELD {
        let client = client.clone();
        held.spawn(async move { (tag, client.request(&ask(tag, true)).await) });
    }
    c.plane.until_held(HELD as usize).await;
    // Sent after the held ones, answered before them.
    let mut quick = tokio::task::JoinSet::new();
    for tag in HELD..HELD + QUICK {
        let client = client.clone();
        quick.spawn(async move { (tag, client.request(&ask(tag, false)).await) });
    }
    while let Some(joined) = quick.join_next().await {
        let (tag, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), no_work(tag));
    }
    assert_eq!(c.plane.released.load(Ordering::SeqCst), 0);
    assert_eq!(client.requests_in_flight(), HELD as usize);
    c.plane.open_gate();
    while let Some(joined) = held.join_next().await {
        let (tag, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), no_work(tag));
    }
    assert_eq!(client.requests_in_flight(), 0);
    assert_eq!(c.plane.released.load(Ordering::SeqCst), HELD as usize);
}

/// A long poll held by the control plane does not hold up the worker's heartbeats.
#[tokio::test]
async fn a_long_poll_does_not_hold_up_a_heartbeat() {
    let c = cluster().await;
    let (client, _, _events) = Client::connect(c.client_config("w1")).await.unwrap();
    let client = Arc::new(client);
    let poll = tokio::spawn({
        let client = client.clone();
        async move { client.request(&ask(1, true)).await }
    });
    c.plane.until_held(1).await;
    for _ in 0..3 {
        let answer = client
            .request(&Message::Heartbeat(Heartbeat { jobs: vec![] }))
            .await
            .unwrap();
        assert!(matches!(answer, Message::HeartbeatAck(_)), "{answer:?}");
    }
    assert!(!poll.is_finished());
    c.plane.open_gate();
    assert_eq!(poll.await.unwrap().unwrap(), no_work(1));
}

/// A request that times out leaves nothing behind: the connection carries on, and the
/// answer that comes after the timeout is dropped without harm.
#[tokio::test]
async fn a_request_that_times_out_leaves_the_connection_usable() {
    let c = cluster().await;
    let mut config = c.client_config("w1");
    config.request_timeout = Duration::from_millis(300);
    let (client, _, mut events) = Client::connect(config).await.unwrap();
    let err = client.request(&ask(7, true)).await.unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)), "{err:?}");
    assert_eq!(client.requests_in_flight(), 0);
    assert_eq!(client.request(&Message::Ack).await.unwrap(), Message::Ack);

    // The late answer: the held request is let through and its answer sent.
    c.plane.until_held(1).await;
    c.plane.open_gate();
    while c.plane.released.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // This runtime has one thread: the late answer was queued before this request was read,
    // so it reached the client first.
    assert_eq!(client.request(&ask(8, false)).await.unwrap(), no_work(8));
    assert_eq!(client.requests_in_flight(), 0);
    assert!(client.is_connected());
    assert!(events.try_recv().is_err(), "no disconnect, no other event");
    assert_eq!(c.plane.disconnected.load(Ordering::SeqCst), 0);
}

/// A worker that answers a push the server never sent loses its connection with a protocol
/// error; the server carries on.
#[tokio::test]
async fn an_answer_to_a_push_never_sent_closes_the_connection() {
    let c = cluster().await;
    let (connection, mut send, _reader) = c.raw_welcomed("liar").await;
    // Odd ids are the server's; it has sent none.
    let frame = wire::encode(1, &Message::Ack, 1 << 20).unwrap();
    send.write_all(&frame).await.unwrap();
    let (code, reason) = closed_with(&connection.closed().await).expect("closed by the server");
    assert_eq!(code, u64::from(close::PROTOCOL_ERROR));
    assert_eq!(
        reason,
        "an answer to request 1, which this server never sent"
    );

    let (client, _, _) = Client::connect(c.client_config("honest")).await.unwrap();
    assert_eq!(client.request(&Message::Ack).await.unwrap(), Message::Ack);
}

/// Requests pipelined on the raw stream are answered with their own ids, and a push and the
/// worker's answer to it share the stream with them.
#[tokio::test]
async fn pushes_and_requests_share_the_stream_with_their_own_ids() {
    let c = cluster().await;
    let (_connection, mut send, mut reader) = c.raw_welcomed("raw").await;
    let mut frames = Vec::new();
    for id in [2, 4, 6] {
        wire::encode_into(id, &ask(id, false), &mut frames, 1 << 20).unwrap();
    }
    send.write_all(&frames).await.unwrap();
    let mut answered = BTreeMap::new();
    for _ in 0..3 {
        let Envelope { id, message } = reader.next().await.unwrap();
        answered.insert(id, message);
    }
    assert_eq!(
        answered,
        [2, 4, 6].map(|id| (id, no_work(id))).into_iter().collect()
    );

    let session = c.plane.sessions.lock().unwrap()[0].clone();
    let cancel = Message::Cancel {
        job: JobId(4),
        epoch: Epoch(9),
        reason: "user asked".into(),
    };
    let push = tokio::spawn(async move { session.push(&cancel).await });
    let Envelope { id, message } = reader.next().await.unwrap();
    assert_eq!(id % 2, 1, "the server's requests have odd ids");
    assert!(matches!(message, Message::Cancel { .. }), "{message:?}");
    send.write_all(&wire::encode(id, &Message::Ack, 1 << 20).unwrap())
        .await
        .unwrap();
    assert_eq!(push.await.unwrap().unwrap(), Message::Ack);
}

/// A push the application drops without answering is answered for it, so the server does
/// not wait out its push timeout.
#[tokio::test]
async fn a_push_dropped_unanswered_is_refused_for_the_worker() {
    let c = cluster().await;
    let (_client, _, mut events) = Client::connect(c.client_config("w1")).await.unwrap();
    let session = c.plane.sessions.lock().unwrap()[0].clone();
    let worker = tokio::spawn(async move {
        match events.recv().await {
            Some(ClientEvent::Pushed(pushed)) => drop(pushed),
            other => panic!("expected a push, got {other:?}"),
        }
    });
    let answer = session.push(&Message::NoWork).await.unwrap();
    assert!(
        matches!(&answer, Message::Error { code: ErrorCode::Unavailable, message } if message.contains("unanswered")),
        "{answer:?}"
    );
    worker.await.unwrap();
}

/// Requests waiting when the connection is lost fail at once as disconnected, not at their
/// timeout; the client reconnects and serves the next ones.
#[tokio::test]
async fn requests_waiting_when_the_connection_drops_fail_as_disconnected() {
    let c = cluster().await;
    let mut config = c.client_config("w1");
    config.request_timeout = Duration::from_secs(60);
    let (client, _, mut events) = Client::connect(config).await.unwrap();
    let client = Arc::new(client);
    let mut waiting = tokio::task::JoinSet::new();
    for tag in 0..5 {
        let client = client.clone();
        waiting.spawn(async move { client.request(&ask(tag, true)).await });
    }
    c.plane.until_held(5).await;
    let session = c.plane.sessions.lock().unwrap()[0].clone();
    session.close(close::NORMAL, "goodbye");
    while let Some(joined) = waiting.join_next().await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, RequestError::Disconnected(_)), "{err:?}");
    }
    assert_eq!(client.requests_in_flight(), 0);
    loop {
        match events.recv().await {
            Some(ClientEvent::Reconnected { .. }) => break,
            Some(_) => {}
            None => panic!("no reconnect"),
        }
    }
    assert_eq!(client.request(&Message::Ack).await.unwrap(), Message::Ack);
}

/// A control plane that answers a request the worker never sent: the worker closes the
/// connection with a protocol error.
#[tokio::test]
async fn an_answer_to_a_request_never_sent_closes_the_workers_connection() {
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::load_or_create(dir.path()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let quic = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(quic, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    // The scripted control plane: welcomes, then answers request 2 before it was sent.
    let script = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, recv) = connection.accept_bi().await.unwrap();
        let mut reader = RawReader::new(recv);
        let hello = reader.next().await.unwrap();
        assert_eq!(hello.id, 0);
        let welcome = Message::Welcome(Welcome {
            session: 1,
            lease_ttl_ms: 30_000,
            heartbeat_ms: 1_000,
            long_poll_ms: 1_000,
        });
        let mut frames = wire::encode(0, &welcome, 1 << 20).unwrap();
        wire::encode_into(2, &Message::Ack, &mut frames, 1 << 20).unwrap();
        send.write_all(&frames).await.unwrap();
        closed_with(&connection.closed().await)
    });
    let mut config = ClientConfig::new(
        addr,
        Trust::Fingerprint(identity.fingerprint),
        hello("w1", TOKEN),
    );
    config.reconnect.base = Duration::from_secs(60);
    let (_client, _, mut events) = Client::connect(config).await.unwrap();
    let (code, reason) = script.await.unwrap().expect("closed by the worker");
    assert_eq!(code, u64::from(close::PROTOCOL_ERROR));
    assert_eq!(
        reason,
        "an answer to request 2, which this worker never sent"
    );
    assert!(matches!(
        events.recv().await,
        Some(ClientEvent::Disconnected { .. })
    ));
}

/// Requests polled together by one task (which share its waker) each get their answer,
/// whichever of them reads the stream.
#[tokio::test]
async fn requests_awaited_together_in_one_task_each_get_their_answer() {
    let c = cluster().await;
    let (client, _, _events) = Client::connect(c.client_config("w1")).await.unwrap();
    for round in 0..50 {
        let tags = [3 * round, 3 * round + 1, 3 * round + 2];
        let asks = tags.map(|tag| ask(tag, false));
        let (a, b, d) = tokio::join!(
            client.request(&asks[0]),
            client.request(&asks[1]),
            client.request(&asks[2]),
        );
        assert_eq!(
            [a.unwrap(), b.unwrap(), d.unwrap()],
            tags.map(no_work),
            "round {round}"
        );
    }
    assert_eq!(client.requests_in_flight(), 0);
}
