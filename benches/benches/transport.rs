//! The transport benchmark: nexa-transport's QUIC against plain TCP carrying the same frames.
//!
//! ```text
//! cargo bench -p nexa-benches --bench transport
//! NEXA_BENCH_ROUND_TRIPS=2000 NEXA_BENCH_SECONDS=1 NEXA_BENCH_CONNECTIONS=100 \
//!     NEXA_BENCH_IDLE_SECONDS=3 cargo bench -p nexa-benches --bench transport
//! ```
//!
//! It measures, in one run, over loopback:
//!
//! 1. the round trip of one request at a time (a heartbeat with one running job, answered
//!    with a heartbeat ack): `Client::request` against a tokio TCP stream with `TCP_NODELAY`
//!    carrying the same frames through the same codec (`wire::encode`, `FrameDecoder`);
//! 2. requests answered per second over one connection with 64 requests in flight, and over
//!    100 connections with 4 in flight on each, QUIC and TCP alternating;
//! 3. the CPU time of `NEXA_BENCH_CONNECTIONS` QUIC connections (1,000 by default), each
//!    sending a heartbeat a second, then of the same connections silent, then of as many TCP
//!    connections with the same heartbeats;
//!
//! and ends with the targets and whether each was met. Every figure is measured in this run;
//! a missed target is printed as MISSED with its figure. Beside the times it counts the
//! packets each request cost and the datagrams dropped at full socket buffers
//! (`/proc/net/snmp`), and how much CPU the rest of the machine used meanwhile, since other
//! work on the machine moves every figure.
//!
//! Client and server share this process. For 1 and 2 they share one tokio runtime (a worker
//! thread per CPU), so each figure pays for both ends on the same cores, QUIC and TCP alike.
//! For 3 the server and the clients get runtimes of their own with named threads, so that the
//! CPU time can be split between the two sides as well as reported for the whole process.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexa_benches::{
    BenchError, BenchResult, Rates, Samples, Settings, ThreadCpu, Throughput, env_count,
    env_seconds, fmt_count, fmt_duration, fmt_rate, machine_cpu_time, process_cpu_time,
    thread_cpu_times,
};
use nexa_runtime::wire::{
    self, DEFAULT_MAX_FRAME, FrameDecoder, Heartbeat, HeartbeatAck, Hello, Message, RunningJob,
    Welcome,
};
use nexa_runtime::{Epoch, JobId, JobType, LeaseToken, WorkerId};
use nexa_transport::{
    Client, ClientConfig, Handler, Server, ServerConfig, Session, Trust, client_endpoint,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Round trips timed of each kind, by default (`NEXA_BENCH_ROUND_TRIPS`).
const ROUND_TRIPS: u64 = 20_000;
/// Untimed round trips of each kind first.
const WARM_UP: usize = 2_000;
/// Round trips of one kind before switching to the next, so that drift in the machine's
/// state falls on both alike.
const BLOCK: usize = 1_000;
/// Requests in flight on the one connection.
const ONE_CONNECTION_IN_FLIGHT: usize = 64;
/// Connections of the many-connection throughput figure.
const MANY_CONNECTIONS: usize = 100;
/// Requests in flight on each of those.
const MANY_CONNECTIONS_IN_FLIGHT: usize = 4;
/// Connections kept open for the idle figure, by default (`NEXA_BENCH_CONNECTIONS`).
const IDLE_CONNECTIONS: u64 = 1_000;
/// The length of each idle window, by default (`NEXA_BENCH_IDLE_SECONDS`).
const IDLE_SECONDS: f64 = 10.0;
/// Client endpoints (UDP sockets) the idle connections share.
const IDLE_ENDPOINTS: usize = 10;
/// Connections made at once when opening the idle connections.
const WAVE: usize = 100;
/// How often each idle connection sends a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Time for the idle connections to settle into their rhythm before a window starts.
const SETTLE: Duration = Duration::from_secs(2);
/// Thread names of the idle figure's runtimes (the kernel keeps at most 15 bytes).
const SERVER_THREADS: &str = "nexa-server";
const CLIENT_THREADS: &str = "nexa-clients";
/// The join token of the benchmark cluster.
const TOKEN: &str = "bench-join-token";

/// The targets.
const TARGET_ROUND_TRIP_RATIO: f64 = 1.5;
const TARGET_ONE_CONNECTION_RATE: f64 = 100_000.0;
const TARGET_IDLE_CORE_PERCENT: f64 = 10.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // On stdout with the rest of the report, so a failure is seen where the figures are.
            println!("\nbenchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How big and how long this run is.
struct Config {
    round_trips: usize,
    /// Throughput: the length of each run and how many runs make a figure.
    run_length: Duration,
    rounds: usize,
    seconds: Duration,
    connections: usize,
    idle: Duration,
}

impl Config {
    fn from_env() -> BenchResult<Self> {
        let settings = Settings::from_env()?;
        let round_trips = env_count("NEXA_BENCH_ROUND_TRIPS", ROUND_TRIPS, 100..=10_000_000)?;
        let connections = env_count("NEXA_BENCH_CONNECTIONS", IDLE_CONNECTIONS, 1..=10_000)?;
        let idle = env_seconds("NEXA_BENCH_IDLE_SECONDS", IDLE_SECONDS, 1.0..=600.0)?;
        Ok(Self {
            round_trips: usize::try_from(round_trips)?,
            run_length: settings.run_length(),
            rounds: settings.rounds,
            seconds: settings.seconds,
            connections: usize::try_from(connections)?,
            idle,
        })
    }
}

/// The figures the targets are judged on.
struct Targets {
    quic_round_trip: Samples,
    tcp_round_trip: Samples,
    one_connection: Rates,
    idle: Idle,
}

fn run() -> BenchResult<()> {
    let config = Config::from_env()?;
    let request_frame = wire::encode(2, &heartbeat(), DEFAULT_MAX_FRAME)?.len();
    let answer_frame = wire::encode(2, &answer(heartbeat()), DEFAULT_MAX_FRAME)?.len();
    println!("Nexa Forge transport benchmark: nexa-transport (QUIC, TLS 1.3) against plain TCP");
    println!(
        "  over loopback, {} CPUs; client and server run in this one process",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  request: a heartbeat with one running job, {request_frame}-byte frame; answer: a heartbeat ack, {answer_frame}-byte frame"
    );
    println!(
        "  TCP (TCP_NODELAY) carries the same frames through the same codec (wire::encode, FrameDecoder)"
    );
    println!(
        "  round trips: {} of each after {} untimed (NEXA_BENCH_ROUND_TRIPS)",
        fmt_count(config.round_trips as u64),
        fmt_count(WARM_UP as u64)
    );
    println!(
        "  each throughput figure: {} (NEXA_BENCH_SECONDS) as the median of {} runs (NEXA_BENCH_ROUNDS) of {}, QUIC and TCP alternating; [slowest-fastest run]",
        fmt_duration(config.seconds),
        config.rounds,
        fmt_duration(config.run_length)
    );
    println!(
        "  idle cost: {} connections (NEXA_BENCH_CONNECTIONS), windows of {} (NEXA_BENCH_IDLE_SECONDS)",
        fmt_count(config.connections as u64),
        fmt_duration(config.idle)
    );
    println!(
        "  load average at the start: {} (other work on this machine shares its CPUs; see \"rest of the machine\")",
        load_average()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nexa-bench")
        .build()?;
    let (quic_round_trip, tcp_round_trip, one_connection) = runtime.block_on(async {
        let quic = QuicServer::start().await?;
        let tcp = TcpServer::start().await?;
        let section = Contention::start();
        let (quic_rt, tcp_rt) = bench_round_trips(&config, &quic, &tcp).await?;
        section.report();
        let section = Contention::start();
        let one_connection = bench_throughput(&config, &quic, &tcp).await?;
        section.report();
        tcp.stop();
        quic.shutdown().await;
        Ok::<_, BenchError>((quic_rt, tcp_rt, one_connection))
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));

    let idle = bench_idle(&config)?;
    println!("\nload average at the end: {}", load_average());
    print_targets(
        &config,
        &Targets {
            quic_round_trip,
            tcp_round_trip,
            one_connection,
            idle,
        },
    );
    Ok(())
}

// ---- the messages and the two servers ----

/// The request every figure sends: a heartbeat with one running job.
fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        jobs: vec![RunningJob {
            job: JobId(4_242),
            epoch: Epoch(7),
            lease_token: LeaseToken::default(),
            progress: Some(0.25),
            serving: None,
        }],
    })
}

/// What both servers answer: an empty ack to a heartbeat, `Ack` to anything else.
fn answer(request: Message) -> Message {
    match request {
        Message::Heartbeat(_) => Message::HeartbeatAck(HeartbeatAck {
            cancel: vec![],
            lost: vec![],
        }),
        _ => Message::Ack,
    }
}

fn expect_ack(answer: &Message) -> BenchResult<()> {
    match answer {
        Message::HeartbeatAck(_) => Ok(()),
        other => Err(format!("expected a heartbeat ack, got {}", other.name()).into()),
    }
}

/// The trivial control plane of the QUIC server.
struct Plane;

impl Handler for Plane {
    async fn connected(&self, _session: &Session, _hello: Hello) -> Result<Welcome, String> {
        Ok(Welcome {
            session: 0,
            lease_ttl_ms: 30_000,
            heartbeat_ms: HEARTBEAT_EVERY.as_millis() as u64,
            long_poll_ms: 1_000,
        })
    }

    async fn request(&self, _session: &Session, message: Message) -> Message {
        answer(message)
    }

    async fn disconnected(&self, _session: &Session, _reason: String) {}
}

struct QuicServer {
    server: Server,
    /// Holds the server's certificate; removed when dropped.
    _dir: tempfile::TempDir,
}

impl QuicServer {
    /// A server on a free loopback port, with a fresh certificate. Call within the runtime
    /// that is to run it.
    async fn start() -> BenchResult<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = ServerConfig::new(([127, 0, 0, 1], 0).into(), dir.path(), TOKEN);
        // Waves of a hundred handshakes on two cores take a while to reach the hello.
        config.handshake_timeout = Duration::from_secs(30);
        let server = Server::start(config, Arc::new(Plane)).await?;
        Ok(Self { server, _dir: dir })
    }

    fn client_config(&self, name: &str) -> BenchResult<ClientConfig> {
        let hello = Hello {
            worker: WorkerId::new(name)?,
            token: TOKEN.into(),
            cpus: 16,
            memory_mb: 65_536,
            gpus: vec![],
            labels: BTreeMap::new(),
            job_types: JobType::ALL.into_iter().collect(),
        };
        let trust = Trust::Fingerprint(self.server.fingerprint());
        let mut config = ClientConfig::new(self.server.local_addr(), trust, hello);
        config.request_timeout = Duration::from_secs(30);
        Ok(config)
    }

    /// A client on an endpoint of its own, as a worker on its own machine has.
    async fn connect(&self, name: &str) -> BenchResult<Arc<Client>> {
        let (client, _welcome, _events) = Client::connect(self.client_config(name)?).await?;
        Ok(Arc::new(client))
    }

    async fn shutdown(self) {
        // Closing waits for the peers to acknowledge; do not let a lost one hold up the run.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server.shutdown()).await;
    }
}

/// A TCP server answering every frame with the same [`answer`] as the QUIC server: one task
/// per connection that reads what has arrived, decodes every whole frame in it, and writes
/// the answers to all of them in one write, which is how a plain TCP server answers
/// pipelined requests.
struct TcpServer {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl TcpServer {
    async fn start() -> BenchResult<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_tcp(stream));
                    }
                    Err(e) => {
                        println!("   TCP accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Ok(Self { addr, accept })
    }

    async fn connect(&self) -> BenchResult<TcpStream> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Stops accepting; each connection's task ends when its client closes.
    fn stop(self) {
        self.accept.abort();
    }
}

async fn serve_tcp(mut stream: TcpStream) {
    match answer_tcp(&mut stream).await {
        Ok(()) => {}
        // A client that closes with an answer unread resets the connection: that is its end.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => println!("   TCP server: a connection failed: {e}"),
    }
}

async fn answer_tcp(stream: &mut TcpStream) -> std::io::Result<()> {
    let invalid = |e: &dyn std::error::Error| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    stream.set_nodelay(true)?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = vec![0_u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        decoder.extend(&buf[..n]);
        while let Some(request) = decoder.next_envelope().map_err(|e| invalid(&e))? {
            wire::encode_into(
                request.id,
                &answer(request.message),
                &mut out,
                DEFAULT_MAX_FRAME,
            )
            .map_err(|e| invalid(&e))?;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

// ---- the clients ----

/// A client with one request outstanding at a time.
trait RoundTrip: Send + 'static {
    fn round_trip(
        &mut self,
        message: &Message,
    ) -> impl Future<Output = BenchResult<Message>> + Send;
}

/// A client shared by many tasks, each with its own request in flight.
trait Shared: Send + Sync + 'static {
    fn exchange(&self, message: &Message) -> impl Future<Output = BenchResult<Message>> + Send;
}

impl Shared for Client {
    async fn exchange(&self, message: &Message) -> BenchResult<Message> {
        Ok(self.request(message).await?)
    }
}

impl<T: Shared> RoundTrip for Arc<T> {
    async fn round_trip(&mut self, message: &Message) -> BenchResult<Message> {
        self.exchange(message).await
    }
}

/// The plainest TCP client: write the frame, then read until the answer is whole, on the
/// caller's task. The floor for one request at a time.
struct TcpDirect {
    stream: TcpStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    next_id: u64,
}

impl TcpDirect {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
            buf: vec![0; 16 * 1024],
            next_id: 2,
        }
    }
}

impl RoundTrip for TcpDirect {
    async fn round_trip(&mut self, message: &Message) -> BenchResult<Message> {
        // Encoded afresh each time, as `Client::request` does.
        let id = self.next_id;
        self.next_id += 2;
        let frame = wire::encode(id, message, DEFAULT_MAX_FRAME)?;
        self.stream.write_all(&frame).await?;
        loop {
            if let Some(answer) = self.decoder.next_envelope()? {
                if answer.id != id {
                    return Err(format!("answer {} to request {id}", answer.id).into());
                }
                return Ok(answer.message);
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Err("the TCP server closed the connection".into());
            }
            self.decoder.extend(&self.buf[..n]);
        }
    }
}

/// What a pipelined TCP connection's callers share: the answers awaited, by request id, and
/// the frames waiting to be written.
#[derive(Default)]
struct MuxState {
    waiting: Mutex<(u64, HashMap<u64, oneshot::Sender<Message>>)>,
    outbox: Mutex<Vec<u8>>,
    ready: Notify,
}

/// A TCP connection shared by many tasks, each with a request in flight: the fair TCP
/// counterpart of many `Client::request` calls on one QUIC connection, built the same way.
///
/// A caller registers its request id and encodes its frame straight into a shared outbox; a
/// writer task writes whatever has gathered there in one write. A reader task decodes the
/// answers and hands each to the caller waiting for its id. Both tasks are the hops a QUIC
/// request also makes (caller → writer → connection driver → socket and back), so this is
/// the same shape of work with TCP's byte stream underneath instead of a QUIC stream.
struct TcpMux {
    state: Arc<MuxState>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl TcpMux {
    fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        let state = Arc::new(MuxState::default());
        Self {
            writer: tokio::spawn(write_frames(write, state.clone())),
            reader: tokio::spawn(read_answers(read, state.clone())),
            state,
        }
    }
}

impl Drop for TcpMux {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

impl Shared for TcpMux {
    async fn exchange(&self, message: &Message) -> BenchResult<Message> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut waiting = self.state.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let id = waiting.0;
            waiting.0 += 2;
            waiting.1.insert(id, reply);
            id
        };
        let was_empty = {
            let mut outbox = self.state.outbox.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = outbox.is_empty();
            wire::encode_into(id, message, &mut outbox, DEFAULT_MAX_FRAME)?;
            was_empty
        };
        if was_empty {
            self.state.ready.notify_one();
        }
        Ok(answer
            .await
            .map_err(|_| "the TCP connection closed before the answer came")?)
    }
}

async fn write_frames(mut write: OwnedWriteHalf, state: Arc<MuxState>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let ready = {
            let mut outbox = state.outbox.lock().unwrap_or_else(|e| e.into_inner());
            let ready = !outbox.is_empty();
            if ready {
                std::mem::swap(&mut *outbox, &mut batch);
            }
            ready
        };
        if !ready {
            state.ready.notified().await;
            continue;
        }
        if write.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}

async fn read_answers(mut read: OwnedReadHalf, state: Arc<MuxState>) {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = vec![0_u8; 64 * 1024];
    'read: loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decoder.extend(&buf[..n]);
        loop {
            match decoder.next_envelope() {
                Ok(Some(answer)) => {
                    let reply = {
                        let mut waiting = state.waiting.lock().unwrap_or_else(|e| e.into_inner());
                        waiting.1.remove(&answer.id)
                    };
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(answer.message);
                        }
                        None => break 'read,
                    }
                }
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    // Dropping the replies fails the requests still waiting.
    state
        .waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .1
        .clear();
}

// ---- the machine ----

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "n/a".to_owned(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// The CPU time the rest of the machine uses over a section, which competes with it.
struct Contention {
    at: Instant,
    machine: Option<Duration>,
    process: Option<Duration>,
}

impl Contention {
    fn start() -> Self {
        Self {
            at: Instant::now(),
            machine: machine_cpu_time().ok(),
            process: process_cpu_time().ok(),
        }
    }

    fn report(&self) {
        let (Some(machine), Some(process), Ok(machine_now), Ok(process_now)) = (
            self.machine,
            self.process,
            machine_cpu_time(),
            process_cpu_time(),
        ) else {
            return;
        };
        let elapsed = self.at.elapsed();
        let rest = machine_now
            .saturating_sub(machine)
            .saturating_sub(process_now.saturating_sub(process));
        println!(
            "   meanwhile ({}): this process used {:.0}% of one core, the rest of the machine {:.0}%",
            fmt_duration(elapsed),
            process_now.saturating_sub(process).as_secs_f64() / elapsed.as_secs_f64() * 100.0,
            rest.as_secs_f64() / elapsed.as_secs_f64() * 100.0
        );
    }
}

// ---- packet counters ----

/// Packet counters of this network namespace, from `/proc/net/snmp`. Other traffic in the
/// namespace counts too; on a quiet machine that is next to nothing.
#[derive(Clone, Copy, Debug, Default)]
struct Net {
    /// UDP datagrams sent.
    udp_out: u64,
    /// UDP datagrams dropped because the receiving socket's buffer was full.
    udp_drops: u64,
    /// TCP segments sent, ACK-only ones included.
    tcp_out: u64,
}

impl Net {
    /// The counters now; `None` where `/proc/net/snmp` cannot be read.
    fn read() -> Option<Net> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
        // Each protocol has two lines: the names of its counters, then their values.
        let field = |protocol: &str, name: &str| -> Option<u64> {
            let mut lines = snmp.lines().filter(|l| l.starts_with(protocol));
            let (names, values) = (lines.next()?, lines.next()?);
            let at = names.split_whitespace().position(|n| n == name)?;
            values.split_whitespace().nth(at)?.parse().ok()
        };
        Some(Net {
            udp_out: field("Udp:", "OutDatagrams")?,
            udp_drops: field("Udp:", "RcvbufErrors")?,
            tcp_out: field("Tcp:", "OutSegs")?,
        })
    }
}

/// Packets counted over the spans of one measurement, and the requests answered in them.
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    net: Net,
    requests: u64,
    /// Some span could not be counted.
    unknown: bool,
}

impl Traffic {
    fn add(&mut self, before: Option<Net>, after: Option<Net>, requests: u64) {
        match (before, after) {
            (Some(b), Some(a)) => {
                self.net.udp_out += a.udp_out.saturating_sub(b.udp_out);
                self.net.udp_drops += a.udp_drops.saturating_sub(b.udp_drops);
                self.net.tcp_out += a.tcp_out.saturating_sub(b.tcp_out);
            }
            _ => self.unknown = true,
        }
        self.requests += requests;
    }

    fn per_request(&self, counter: fn(&Net) -> u64) -> String {
        if self.unknown || self.requests == 0 {
            return "n/a".to_owned();
        }
        format!("{:.2}", counter(&self.net) as f64 / self.requests as f64)
    }

    fn count(&self, counter: fn(&Net) -> u64) -> String {
        if self.unknown {
            return "n/a".to_owned();
        }
        fmt_count(counter(&self.net))
    }

    /// The counter per connection per second.
    fn rate(&self, counter: fn(&Net) -> u64, elapsed: Duration, connections: usize) -> String {
        if self.unknown {
            return "n/a".to_owned();
        }
        let per = counter(&self.net) as f64 / elapsed.as_secs_f64().max(1e-9);
        format!("{:.2}", per / connections.max(1) as f64)
    }

    fn udp(&self) -> String {
        self.per_request(|n| n.udp_out)
    }

    fn tcp(&self) -> String {
        self.per_request(|n| n.tcp_out)
    }

    /// `, N dropped at a full socket receive buffer` when any were.
    fn drops(&self) -> String {
        if self.net.udp_drops == 0 {
            return String::new();
        }
        format!(
            ", {} dropped at a full socket receive buffer",
            fmt_count(self.net.udp_drops)
        )
    }
}

// ---- 1. round trips ----

/// `n` round trips on a task of the runtime, each timed and added to `samples`, their packets
/// to `traffic`; hands the client back.
async fn time_round_trips<R: RoundTrip>(
    mut client: R,
    n: usize,
    mut samples: Vec<Duration>,
    traffic: &mut Traffic,
) -> BenchResult<(R, Vec<Duration>)> {
    let before = Net::read();
    let done = tokio::spawn(async move {
        let request = heartbeat();
        for _ in 0..n {
            let start = Instant::now();
            let answer = client.round_trip(&request).await?;
            let took = start.elapsed();
            expect_ack(&answer)?;
            samples.push(took);
        }
        Ok::<_, BenchError>((client, samples))
    })
    .await??;
    traffic.add(before, Net::read(), n as u64);
    Ok(done)
}

async fn bench_round_trips(
    config: &Config,
    quic: &QuicServer,
    tcp: &TcpServer,
) -> BenchResult<(Samples, Samples)> {
    let n = config.round_trips;
    println!(
        "\n1. Round trip, one request outstanding on one connection ({} of each, in alternating blocks of {})",
        fmt_count(n as u64),
        fmt_count(BLOCK as u64)
    );
    let mut quic_client = quic.connect("bench-round-trip").await?;
    let mut direct = TcpDirect::new(tcp.connect().await?);
    let mut mux = Arc::new(TcpMux::new(tcp.connect().await?));
    let (mut q, mut d, mut m) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut warm_up = Traffic::default();
    (quic_client, _) = time_round_trips(quic_client, WARM_UP, Vec::new(), &mut warm_up).await?;
    (direct, _) = time_round_trips(direct, WARM_UP, Vec::new(), &mut warm_up).await?;
    (mux, _) = time_round_trips(mux, WARM_UP, Vec::new(), &mut warm_up).await?;
    let [mut qt, mut dt, mut mt] = [Traffic::default(); 3];
    let mut done = 0;
    while done < n {
        let block = BLOCK.min(n - done);
        (quic_client, q) = time_round_trips(quic_client, block, q, &mut qt).await?;
        (direct, d) = time_round_trips(direct, block, d, &mut dt).await?;
        (mux, m) = time_round_trips(mux, block, m, &mut mt).await?;
        done += block;
    }
    let (quic_samples, direct_samples, mux_samples): (Samples, Samples, Samples) = (
        q.into_iter().collect(),
        d.into_iter().collect(),
        m.into_iter().collect(),
    );
    println!(
        "   {:<58} {:>9}  {:>9}  {:>9}  {:>9}",
        "", "p50", "p99", "min", "max"
    );
    print_samples(
        "QUIC: Client::request (one shared stream, ids)",
        &quic_samples,
    );
    print_samples("TCP: write the frame, read the answer", &direct_samples);
    print_samples(
        "TCP: shared-connection client of 2 (writer, reader tasks)",
        &mux_samples,
    );
    println!(
        "   {:<58} {:>8.2}x  {:>8.2}x",
        "QUIC / TCP (write, read)",
        duration_ratio(quic_samples.median(), direct_samples.median()),
        duration_ratio(quic_samples.p99(), direct_samples.p99()),
    );
    println!(
        "   {:<58} {:>8.2}x  {:>8.2}x",
        "QUIC / TCP (shared-connection client)",
        duration_ratio(quic_samples.median(), mux_samples.median()),
        duration_ratio(quic_samples.p99(), mux_samples.p99()),
    );
    println!(
        "   packets per round trip: QUIC {} UDP datagrams{}; TCP (write, read) {} segments; TCP (shared) {} segments",
        qt.udp(),
        qt.drops(),
        dt.tcp(),
        mt.tcp()
    );
    Ok((quic_samples, direct_samples))
}

fn print_samples(what: &str, samples: &Samples) {
    println!(
        "   {what:<58} {:>9}  {:>9}  {:>9}  {:>9}",
        fmt_duration(samples.median()),
        fmt_duration(samples.p99()),
        fmt_duration(samples.min()),
        fmt_duration(samples.max()),
    );
}

// ---- 2. throughput ----

/// Runs `in_flight` tasks per client for `duration`, each sending a request as soon as its
/// last was answered; requests in flight when the time is up are finished and counted.
async fn requests_for<C: Shared>(
    clients: &[Arc<C>],
    in_flight: usize,
    duration: Duration,
) -> BenchResult<Throughput> {
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let deadline = start + duration;
    for client in clients {
        for _ in 0..in_flight {
            let client = client.clone();
            tasks.spawn(async move {
                let request = heartbeat();
                let mut answered = 0_u64;
                while Instant::now() < deadline {
                    expect_ack(&client.exchange(&request).await?)?;
                    answered += 1;
                }
                Ok::<_, BenchError>(answered)
            });
        }
    }
    let mut ops = 0;
    while let Some(answered) = tasks.join_next().await {
        ops += answered??;
    }
    Ok(Throughput {
        ops,
        elapsed: start.elapsed(),
        ran_dry: false,
    })
}

/// One line of the throughput table.
struct Row {
    what: String,
    quic: Rates,
    tcp: Rates,
    quic_traffic: Traffic,
    tcp_traffic: Traffic,
}

/// Untimed runs first, then `config.rounds` runs of each, QUIC and TCP alternating.
async fn side_by_side(
    config: &Config,
    what: &str,
    in_flight: usize,
    quic: &[Arc<Client>],
    tcp: &[Arc<TcpMux>],
) -> BenchResult<Row> {
    let warm_up = (config.run_length / 4).min(Duration::from_millis(500));
    requests_for(quic, in_flight, warm_up).await?;
    requests_for(tcp, in_flight, warm_up).await?;
    let mut row = Row {
        what: what.to_owned(),
        quic: Rates::default(),
        tcp: Rates::default(),
        quic_traffic: Traffic::default(),
        tcp_traffic: Traffic::default(),
    };
    for _ in 0..config.rounds {
        let before = Net::read();
        let run = requests_for(quic, in_flight, config.run_length).await?;
        row.quic_traffic.add(before, Net::read(), run.ops);
        row.quic.push(run);
        let before = Net::read();
        let run = requests_for(tcp, in_flight, config.run_length).await?;
        row.tcp_traffic.add(before, Net::read(), run.ops);
        row.tcp.push(run);
    }
    println!(
        "   {what:<36} {:>30}  {:>30}  {:>8.2}x",
        row.quic.to_string(),
        row.tcp.to_string(),
        rate_ratio(row.quic.median(), row.tcp.median())
    );
    Ok(row)
}

async fn bench_throughput(
    config: &Config,
    quic: &QuicServer,
    tcp: &TcpServer,
) -> BenchResult<Rates> {
    println!("\n2. Requests answered per second (each a heartbeat answered with an ack)");
    println!(
        "   QUIC: Client::request, requests tagged with ids on the connection's one long-lived stream"
    );
    println!("   TCP: the same client design on a TCP connection: callers encode into a shared");
    println!(
        "   outbox, a writer task writes what gathered in one write, a reader task hands each"
    );
    println!("   answer to the request with its id; the server answers all the frames of one read");
    println!("   with one write");
    println!(
        "   {:<36} {:>30}  {:>30}  {:>9}",
        "", "QUIC", "TCP", "QUIC/TCP"
    );

    let quic_one = [quic.connect("bench-one").await?];
    let tcp_one = [Arc::new(TcpMux::new(tcp.connect().await?))];
    let one = side_by_side(
        config,
        &format!("1 connection, {ONE_CONNECTION_IN_FLIGHT} in flight"),
        ONE_CONNECTION_IN_FLIGHT,
        &quic_one,
        &tcp_one,
    )
    .await?;
    drop((quic_one, tcp_one));

    let mut quic_many = Vec::with_capacity(MANY_CONNECTIONS);
    let mut tcp_many = Vec::with_capacity(MANY_CONNECTIONS);
    for i in 0..MANY_CONNECTIONS {
        quic_many.push(quic.connect(&format!("bench-many-{i}")).await?);
        tcp_many.push(Arc::new(TcpMux::new(tcp.connect().await?)));
    }
    let many = side_by_side(
        config,
        &format!("{MANY_CONNECTIONS} connections, {MANY_CONNECTIONS_IN_FLIGHT} in flight on each"),
        MANY_CONNECTIONS_IN_FLIGHT,
        &quic_many,
        &tcp_many,
    )
    .await?;
    for row in [&one, &many] {
        println!(
            "   {}: QUIC {} UDP datagrams per request{}; TCP {} segments per request",
            row.what,
            row.quic_traffic.udp(),
            row.quic_traffic.drops(),
            row.tcp_traffic.tcp()
        );
    }
    println!(
        "   (QUIC: each of the {MANY_CONNECTIONS} clients on an endpoint of its own, as workers on their own machines)"
    );
    Ok(one.quic)
}

// ---- 3. idle cost ----

/// What the idle measurement found.
struct Idle {
    connections: usize,
    heartbeats: Window,
    silent: Window,
    tcp: Window,
}

/// CPU used during one window.
struct Window {
    elapsed: Duration,
    process: Duration,
    server: Duration,
    clients: Duration,
    /// CPU time of every other process of the machine, where `/proc/stat` can be read.
    rest_of_machine: Option<Duration>,
    answered: u64,
    failed: u64,
    traffic: Traffic,
}

impl Window {
    fn percent(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9) * 100.0
    }
}

/// Counters shared by the heartbeat tasks.
#[derive(Default)]
struct Beats {
    answered: AtomicU64,
    failed: AtomicU64,
}

/// CPU time and counters at one instant.
struct Snapshot {
    at: Instant,
    machine: Option<Duration>,
    process: Duration,
    threads: Vec<ThreadCpu>,
    answered: u64,
    failed: u64,
}

fn snapshot(beats: &Beats) -> BenchResult<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        machine: machine_cpu_time().ok(),
        process: process_cpu_time()?,
        threads: thread_cpu_times()?,
        answered: beats.answered.load(Ordering::Relaxed),
        failed: beats.failed.load(Ordering::Relaxed),
    })
}

/// Sleeps for `length` and reports the CPU used meanwhile, split by the runtime whose
/// threads used it.
fn measure_window(beats: &Beats, length: Duration) -> BenchResult<Window> {
    let net_before = Net::read();
    let before = snapshot(beats)?;
    std::thread::sleep(length);
    let after = snapshot(beats)?;
    let mut traffic = Traffic::default();
    traffic.add(net_before, Net::read(), after.answered - before.answered);
    let (mut server, mut clients) = (Duration::ZERO, Duration::ZERO);
    for thread in &after.threads {
        let earlier = before
            .threads
            .iter()
            .find(|t| t.tid == thread.tid)
            .map_or(Duration::ZERO, |t| t.cpu);
        let used = thread.cpu.saturating_sub(earlier);
        match thread.name.as_str() {
            SERVER_THREADS => server += used,
            CLIENT_THREADS => clients += used,
            _ => {}
        }
    }
    let process = after.process.saturating_sub(before.process);
    Ok(Window {
        elapsed: after.at - before.at,
        process,
        server,
        clients,
        rest_of_machine: after
            .machine
            .zip(before.machine)
            .map(|(a, b)| a.saturating_sub(b).saturating_sub(process)),
        answered: after.answered - before.answered,
        failed: after.failed - before.failed,
        traffic,
    })
}

fn named_runtime(name: &str) -> BenchResult<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()?)
}

/// Opens `n` connections on [`IDLE_ENDPOINTS`] shared endpoints, [`WAVE`] at a time.
async fn connect_idle(
    quic: &QuicServer,
    n: usize,
) -> BenchResult<(Vec<quinn::Endpoint>, Vec<Arc<Client>>)> {
    let server = quic.server.local_addr();
    let endpoints = (0..IDLE_ENDPOINTS.min(n))
        .map(|_| client_endpoint(server))
        .collect::<Result<Vec<_>, _>>()?;
    let mut clients = Vec::with_capacity(n);
    let started = Instant::now();
    while clients.len() < n {
        let mut wave = JoinSet::new();
        for i in clients.len()..(clients.len() + WAVE).min(n) {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let config = quic.client_config(&format!("idle-{i}"))?;
            wave.spawn(async move { Client::connect_on(endpoint, config).await });
        }
        while let Some(connected) = wave.join_next().await {
            let (client, _welcome, _events) = connected??;
            clients.push(Arc::new(client));
        }
        if clients.len() % 500 == 0 || clients.len() == n {
            println!(
                "     connected {:>6} / {} ({})",
                fmt_count(clients.len() as u64),
                fmt_count(n as u64),
                fmt_duration(started.elapsed())
            );
        }
    }
    Ok((endpoints, clients))
}

/// Each client sends a heartbeat every [`HEARTBEAT_EVERY`], the clients' first ones spread
/// evenly over one period so that they do not all beat at once.
fn start_heartbeats<R: RoundTrip>(
    runtime: &Runtime,
    clients: Vec<R>,
    beats: &Arc<Beats>,
) -> Vec<JoinHandle<()>> {
    let first = tokio::time::Instant::now() + Duration::from_millis(100);
    let n = u32::try_from(clients.len()).unwrap_or(u32::MAX).max(1);
    clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let beats = beats.clone();
            let at = first + HEARTBEAT_EVERY * u32::try_from(i).unwrap_or(0) / n;
            runtime.spawn(async move {
                let mut every = tokio::time::interval_at(at, HEARTBEAT_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let request = heartbeat();
                loop {
                    every.tick().await;
                    match client.round_trip(&request).await {
                        Ok(Message::HeartbeatAck(_)) => {
                            beats.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            beats.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Lets heartbeats settle into their rhythm, measures one window, and stops them.
fn heartbeat_window<R: RoundTrip>(
    runtime: &Runtime,
    clients: Vec<R>,
    length: Duration,
) -> BenchResult<Window> {
    let beats = Arc::new(Beats::default());
    let tasks = start_heartbeats(runtime, clients, &beats);
    std::thread::sleep(SETTLE);
    let window = measure_window(&beats, length);
    for task in &tasks {
        task.abort();
    }
    window
}

fn bench_idle(config: &Config) -> BenchResult<Idle> {
    let n = config.connections;
    println!(
        "\n3. Idle cost: {} connections, each sending a heartbeat every {}",
        fmt_count(n as u64),
        fmt_duration(HEARTBEAT_EVERY)
    );
    println!(
        "   QUIC: {} shared client endpoints, connected {WAVE} at a time; TCP, the baseline: the same server",
        IDLE_ENDPOINTS.min(n)
    );
    println!(
        "   task as in 1 and 2, a client per connection. Server and clients are in this process, each side"
    );
    println!(
        "   on a runtime of its own (threads \"{SERVER_THREADS}\", \"{CLIENT_THREADS}\"), so their CPU time is told apart"
    );
    let server_runtime = named_runtime(SERVER_THREADS)?;
    let client_runtime = named_runtime(CLIENT_THREADS)?;
    let quic_server = server_runtime.block_on(QuicServer::start())?;
    let tcp_server = server_runtime.block_on(TcpServer::start())?;

    let (endpoints, clients) = client_runtime.block_on(connect_idle(&quic_server, n))?;
    let quic = heartbeat_window(&client_runtime, clients.clone(), config.idle)?;
    std::thread::sleep(SETTLE);
    let silent = measure_window(&Beats::default(), config.idle)?;
    drop(clients);
    client_runtime.block_on(async {
        for endpoint in &endpoints {
            endpoint.close(0_u32.into(), b"benchmark done");
        }
        for endpoint in &endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    });
    server_runtime.block_on(quic_server.shutdown());

    let tcp_clients = client_runtime.block_on(async {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(TcpDirect::new(tcp_server.connect().await?));
        }
        Ok::<_, BenchError>(clients)
    })?;
    let tcp = heartbeat_window(&client_runtime, tcp_clients, config.idle)?;
    tcp_server.stop();
    client_runtime.shutdown_timeout(Duration::from_secs(2));
    server_runtime.shutdown_timeout(Duration::from_secs(2));

    println!(
        "   CPU time over each window of {}, in % of one core (CPU seconds):",
        fmt_duration(config.idle)
    );
    println!(
        "   {:<32} {:>16} {:>16} {:>16} {:>16}   requests answered",
        "", "whole process", "server threads", "client threads", "rest of machine",
    );
    for (what, w) in [
        ("QUIC, heartbeat every 1 s", &quic),
        ("QUIC, silent (keep-alive only)", &silent),
        ("TCP, heartbeat every 1 s", &tcp),
    ] {
        println!(
            "   {what:<32} {:>16} {:>16} {:>16} {:>16}   {} ({} failed)",
            cpu_cell(w, Some(w.process)),
            cpu_cell(w, Some(w.server)),
            cpu_cell(w, Some(w.clients)),
            cpu_cell(w, w.rest_of_machine),
            fmt_count(w.answered),
            fmt_count(w.failed),
        );
    }
    for (what, w, packets) in [
        ("QUIC", &quic, "UDP datagrams"),
        ("TCP", &tcp, "TCP segments"),
    ] {
        let Ok(answered) = u32::try_from(w.answered) else {
            continue;
        };
        if answered == 0 {
            continue;
        }
        let traffic = if what == "QUIC" {
            format!("{}{}", w.traffic.udp(), w.traffic.drops())
        } else {
            w.traffic.tcp()
        };
        println!(
            "   {what}: per heartbeat {} of CPU in all, {} of it on the server's threads; {traffic} {packets}",
            fmt_duration(w.process / answered),
            fmt_duration(w.server / answered),
        );
    }
    println!(
        "   QUIC silent: {} UDP datagrams in the window, {} per connection per second",
        silent.traffic.count(|n| n.udp_out),
        silent.traffic.rate(|n| n.udp_out, silent.elapsed, n),
    );
    println!(
        "   whole process: /proc/self/stat (10 ms ticks), ended threads included; threads: /proc/self/task/*/"
    );
    println!(
        "   schedstat; rest of machine: /proc/stat less this process. The kernel's loopback delivery is"
    );
    println!(
        "   charged mostly to the sending thread, so each side's figure holds part of the other's receiving."
    );
    Ok(Idle {
        connections: n,
        heartbeats: quic,
        silent,
        tcp,
    })
}

fn cpu_cell(window: &Window, cpu: Option<Duration>) -> String {
    match cpu {
        Some(cpu) => format!("{:.2}% ({:.2} s)", window.percent(cpu), cpu.as_secs_f64()),
        None => "n/a".to_owned(),
    }
}

// ---- summary ----

fn duration_ratio(a: Duration, b: Duration) -> f64 {
    rate_ratio(a.as_secs_f64(), b.as_secs_f64())
}

fn rate_ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_targets(config: &Config, t: &Targets) {
    println!("\nTargets");
    println!("   {:<62} {:<44} verdict", "target", "measured");
    let row = |target: String, measured: String, met: bool| {
        println!("   {target:<62} {measured:<44} {}", verdict(met));
    };
    let ratio = duration_ratio(t.quic_round_trip.median(), t.tcp_round_trip.median());
    row(
        format!("QUIC round trip within {TARGET_ROUND_TRIP_RATIO}x of TCP at p50"),
        format!(
            "{ratio:.2}x (QUIC {}, TCP {})",
            fmt_duration(t.quic_round_trip.median()),
            fmt_duration(t.tcp_round_trip.median())
        ),
        ratio <= TARGET_ROUND_TRIP_RATIO,
    );
    let rate = t.one_connection.median();
    row(
        format!(
            ">= {} small messages/s over one QUIC connection",
            fmt_count(TARGET_ONE_CONNECTION_RATE as u64)
        ),
        format!("{} ({ONE_CONNECTION_IN_FLIGHT} in flight)", fmt_rate(rate)),
        rate >= TARGET_ONE_CONNECTION_RATE,
    );
    let idle = &t.idle;
    let scale = if idle.connections as u64 == IDLE_CONNECTIONS {
        fmt_count(IDLE_CONNECTIONS)
    } else {
        format!("{}*", fmt_count(idle.connections as u64))
    };
    let w = &idle.heartbeats;
    let server = w.percent(w.server);
    row(
        format!(
            "{scale} connections, heartbeat each 1 s: < {TARGET_IDLE_CORE_PERCENT}% of a core (server)"
        ),
        format!("{server:.2}% (server threads)"),
        server < TARGET_IDLE_CORE_PERCENT,
    );
    let process = w.percent(w.process);
    row(
        format!(
            "{scale} connections, heartbeat each 1 s: < {TARGET_IDLE_CORE_PERCENT}% of a core (all)"
        ),
        format!("{process:.2}% (whole process: server and clients)"),
        process < TARGET_IDLE_CORE_PERCENT,
    );
    println!(
        "   (QUIC silent, keep-alive only: {:.2}% whole process, {:.2}% server threads; TCP with the same heartbeats: {:.2}% whole process, {:.2}% server threads)",
        idle.silent.percent(idle.silent.process),
        idle.silent.percent(idle.silent.server),
        idle.tcp.percent(idle.tcp.process),
        idle.tcp.percent(idle.tcp.server)
    );
    if idle.connections as u64 != IDLE_CONNECTIONS {
        println!(
            "   * a reduced run ({} connections, not {}): these rows say nothing about the target",
            fmt_count(idle.connections as u64),
            fmt_count(IDLE_CONNECTIONS)
        );
    }
    if config.round_trips < ROUND_TRIPS as usize {
        println!(
            "   (a reduced run: {} round trips of each, not {})",
            fmt_count(config.round_trips as u64),
            fmt_count(ROUND_TRIPS)
        );
    }
}
