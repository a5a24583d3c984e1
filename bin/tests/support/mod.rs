//! What the `nexa` process tests share: the binary, child processes killed when a test ends,
//! free ports, and an HTTP client that answers error statuses rather than failing on them.
//! Each test file uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `nexa` binary under test.
pub(crate) const NEXA: &str = env!("CARGO_BIN_EXE_nexa");

/// A child process, killed (SIGKILL) when the test ends, however it ends.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    /// Kills it at once and reaps it.
    pub(crate) fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Asks it to stop (SIGTERM) and waits until it has.
    pub(crate) fn sigterm(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }

    /// Its process id.
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Whether process `pid` runs (and is not a zombie).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// A port free on loopback now, for UDP (QUIC) or TCP.
pub(crate) fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// An HTTP client whose error statuses are answers, giving up after `timeout`.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// A `nexa` node process, killed when the test ends, and its HTTP address.
pub(crate) struct Node {
    pub(crate) child: Proc,
    pub(crate) base: String,
}

/// Starts `nexa <args>` and waits for its banner's HTTP address.
pub(crate) fn start(args: &[&str], data: &Path) -> Node {
    let mut child = Command::new(NEXA)
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.join("node.stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the node exited before printing its address")
            .unwrap();
        if let Some(at) = line.find("http://") {
            let url = line[at..].split_whitespace().next().unwrap();
            break url.trim_end_matches('/').to_owned();
        }
    };
    // Keep draining stdout so the node never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Node {
        child: Proc(child),
        base,
    }
}

/// An HTTP client for the API calls of the tests (40 s at most a call).
pub(crate) fn api_agent() -> ureq::Agent {
    agent(Duration::from_secs(40))
}

/// Status and JSON body (Null when empty or not JSON).
pub(crate) fn call(
    method: &str,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let agent = api_agent();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut res = match body {
        Some(b) => agent
            .run(
                req.header("Content-Type", "application/json")
                    .body(b.to_owned())
                    .unwrap(),
            )
            .unwrap(),
        None => agent.run(req.body(()).unwrap()).unwrap(),
    };
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Status and JSON body of a call with the headers `headers`.
pub(crate) fn call_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut res = api_agent()
        .run(req.body(body.unwrap_or_default().to_owned()).unwrap())
        .unwrap();
    let text = res.body_mut().read_to_string().unwrap_or_default();
    (
        res.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// `GET` a path of `node`.
pub(crate) fn get(node: &Node, path: &str) -> (u16, Value) {
    call("GET", &format!("{}{path}", node.base), None, None)
}

/// `POST` JSON to a path of `node`.
pub(crate) fn post(node: &Node, path: &str, body: Value) -> (u16, Value) {
    call(
        "POST",
        &format!("{}{path}", node.base),
        Some(&body.to_string()),
        None,
    )
}
