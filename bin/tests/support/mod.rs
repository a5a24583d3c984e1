//! What the `nexa` process tests share: the binary, child processes killed when a test ends,
//! free ports, and an HTTP client that answers error statuses rather than failing on them.
//! Each test file uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

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
