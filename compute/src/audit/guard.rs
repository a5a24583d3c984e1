//! [`LineGuard`]: a reader that refuses to go on inside a line longer than a limit.

use std::io::{self, Read};

/// The error a [`LineGuard`] stops with, inside an `io::Error` of kind `InvalidData`.
#[derive(Debug, thiserror::Error)]
#[error(
    "a line runs past {max} bytes (line {line}); the audit reads lines of at most that \
     many bytes (AuditLimits::max_line_bytes)"
)]
pub(crate) struct LineTooLong {
    /// The limit.
    pub(crate) max: u64,
    /// The line, from 1.
    pub(crate) line: u64,
}

impl LineTooLong {
    /// The guard's error inside `e`, if that is what `e` is.
    pub(crate) fn within(e: &io::Error) -> Option<&LineTooLong> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

/// Reads from `inner`, and fails once a line has run longer than `max` bytes, so that a
/// parser above it never has to hold such a line (a 3 GB file without a newline took 1.5 GB
/// of memory, and a cancel waited for it).
pub(crate) struct LineGuard<R> {
    inner: R,
    max: u64,
    /// Bytes since the last newline.
    run: u64,
    /// Newlines seen.
    lines: u64,
}

impl<R> LineGuard<R> {
    pub(crate) fn new(inner: R, max: u64) -> Self {
        Self {
            inner,
            max,
            run: 0,
            lines: 0,
        }
    }

    /// The reader inside, for formats that are not read by lines.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for LineGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = &buf[..n];
        match read.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                self.lines += read.iter().filter(|&&b| b == b'\n').count() as u64;
                // A line wholly inside this read is at most as long as the read, far below
                // any sensible limit; the runs that matter cross reads.
                self.run = (n - last - 1) as u64;
            }
            None => self.run += n as u64,
        }
        if self.run > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                LineTooLong {
                    max: self.max,
                    line: self.lines + 1,
                },
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_stops_the_read_before_it_is_held() {
        // An endless line: the guard stops after about `max` bytes.
        let endless = io::repeat(b'x');
        let mut guard = LineGuard::new(endless, 1 << 20);
        let mut sink = Vec::new();
        let err = io::copy(&mut guard, &mut sink).unwrap_err();
        let too_long = LineTooLong::within(&err).unwrap();
        assert_eq!((too_long.max, too_long.line), (1 << 20, 1));
        assert!(sink.len() as u64 <= (1 << 20) + 64 * 1024, "{}", sink.len());

        // Lines under the limit pass, however many.
        let text = "a,b\n".repeat(100_000);
        let mut out = String::new();
        LineGuard::new(text.as_bytes(), 16)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
    }
}
