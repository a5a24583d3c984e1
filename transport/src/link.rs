//! The one long-lived stream of a connection, shared by every request in both directions.
//!
//! After the handshake, everything a worker and the control plane say goes over the stream
//! the worker opened for its hello: the worker's requests and their answers, the control
//! plane's pushes and theirs. Every frame carries a request id ([`nexa_runtime::wire`]), and
//! an answer carries the id of its request, so answers come back in whatever order they are
//! ready and a slow request (a long poll) holds up nothing but itself. The worker numbers its
//! requests with even ids (its hello is 0, then 2, 4, …), the control plane its pushes with
//! odd ones (1, 3, …): each side tells the peer's requests from answers to its own by the id
//! alone, as QUIC tells who opened a stream.
//!
//! A [`Link`] holds, for one connection:
//!
//! - **the calls waiting for an answer**, by id: a slot for the answer and the waker of the
//!   task waiting for it (no channel, nothing allocated per call). An answer settles its call.
//!   A call that gives up (its timeout, or its caller went away) takes its entry out again,
//!   and its answer, when it comes late, is dropped. An answer to an id this side never used
//!   is a protocol error that closes the connection. When the connection is lost, every
//!   waiting call fails at once with [`RequestError::Disconnected`].
//! - **on the worker's side, the stream's receiving half** ([`Inbound`]). A waiting request
//!   reads the stream itself, on its own task, and hands whatever else arrived (other
//!   requests' answers, the server's pushes) to whom it belongs; a background task
//!   ([`read_loop`]) reads when no request does. An answer therefore wakes its caller
//!   directly, not through a reader task: on tokio's scheduler, one task hop fewer per request
//!   keeps a request's whole round trip on one worker thread, where a longer chain of wake-ups
//!   hands it to the other thread (see `MAX_LIFO_POLLS_PER_TICK` in tokio), a context switch
//!   that costs more than the rest of the round trip. The control plane, which has many
//!   connections and few pushes, reads each connection on one task.
//! - **an outbox**: callers and answerers encode their frame straight into one buffer, so
//!   nothing is allocated per frame. How it reaches QUIC depends on what else is going on
//!   ([`Flush`]): a lone request, or a batch of answers, is handed to QUIC at once on its own
//!   task (one task hop less per round trip); a request made while others are in flight
//!   wakes the writer task ([`write_loop`]), which runs after the other ready tasks and writes
//!   all they queued in one write, so that they share packets. The writer task also waits
//!   out QUIC's flow control when QUIC cannot take everything at once.
//!
//! The stream is ordered, so one large frame (a log batch of megabytes) delays the frames
//! queued behind it by the time it takes to send; small requests are never held up by slow
//! *handlers*, which run concurrently.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use nexa_runtime::wire::{self, EncodeError, Envelope, ErrorCode, Message};
use quinn::{Connection, SendStream, VarInt, WriteError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::{ClientEvent, Pushed};
use crate::error::{RequestError, close};
use crate::frame_io::{FrameReader, ReadFailure};

/// The request id of the worker's hello, the first request of every connection.
pub(crate) const HELLO_ID: u64 = 0;

/// Outbox capacity kept between writes; a buffer grown past it by a large frame is let go.
const KEPT_CAPACITY: usize = 64 * 1024;

/// Which end of the connection a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The worker: even request ids.
    Worker,
    /// The control plane: odd request ids.
    ControlPlane,
}

impl Side {
    /// The parity of the ids this side gives its own requests.
    fn parity(self) -> u64 {
        match self {
            Side::Worker => 0,
            Side::ControlPlane => 1,
        }
    }

    /// This end, in close reasons.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Worker => "worker",
            Side::ControlPlane => "server",
        }
    }
}

/// Where a call's answer lands, and who to wake when it does.
#[derive(Default)]
struct Slot {
    answer: Option<Result<Message, RequestError>>,
    waker: Option<Waker>,
}

impl Slot {
    /// Fills the slot and wakes its caller, unless `wake` is false: the call is reading the
    /// stream itself and looks at its slot next.
    fn fill(&mut self, answer: Result<Message, RequestError>, wake: bool) {
        self.answer = Some(answer);
        if let Some(waker) = self.waker.take()
            && wake
        {
            waker.wake();
        }
    }
}

/// The calls this side made that wait for their answer.
struct Calls {
    waiting: HashMap<u64, Slot>,
    /// The id of the next call; every id of this side's parity below it has been used.
    next_id: u64,
    /// Set when the connection is gone: later calls fail at once with this.
    closed: Option<RequestError>,
}

/// The stream's sending half, with the bytes taken from the outbox that QUIC has not taken
/// yet. Those go first: whoever finds them there leaves them to the writer task.
struct Sender {
    send: SendStream,
    unsent: Vec<u8>,
    offset: usize,
}

/// When a queued frame is handed to QUIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// At once, on this task, unless someone else is writing: for a frame nothing else will
    /// join soon.
    Now,
    /// By the writer task, after the tasks ready now have queued their frames too.
    Batched,
    /// Not yet: the caller flushes with [`Link::flush_now`] once it has queued a batch.
    Later,
}

/// Which task quinn wakes when the stream has more to read (it keeps the last one that polled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    Nobody,
    Background,
    Call(u64),
}

/// The worker's end of the stream's receiving half: read by whichever task is waiting on it.
pub(crate) struct Inbound {
    reader: FrameReader,
    /// Where the server's pushes go.
    events: mpsc::Sender<ClientEvent>,
    /// The background reader's waker, handed to quinn when the last reading call leaves.
    background: Option<Waker>,
    reading: Reading,
    /// The stream failed or the connection was closed for a bad frame: read no more.
    ended: bool,
}

impl Inbound {
    pub(crate) fn new(reader: FrameReader, events: mpsc::Sender<ClientEvent>) -> Self {
        Self {
            reader,
            events,
            background: None,
            reading: Reading::Nobody,
            ended: false,
        }
    }
}

/// One connection's stream: its waiting calls and its outbox.
pub(crate) struct Link {
    /// This link, for the pushes it hands out, which answer through it.
    me: Weak<Link>,
    connection: Connection,
    side: Side,
    max_frame: usize,
    calls: Mutex<Calls>,
    outbox: Mutex<Vec<u8>>,
    /// `None` until the writer starts: the server writes its welcome first.
    sender: Mutex<Option<Sender>>,
    /// Wakes the writer task: there are frames only it can write now.
    ready: Notify,
    /// The connection is gone: frames queued now would never leave, so none are.
    closed: AtomicBool,
    /// The worker's receiving half; `None` on the control plane, which reads on one task.
    inbound: Option<Mutex<Inbound>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("remote", &self.connection.remote_address())
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// Locks `mutex`, whether or not a panicking thread poisoned it: every critical section
/// here leaves its data consistent at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call's entry in the waiting map, taken out again when the call ends without its answer
/// (a timeout, an encoding error, or its caller dropping the future).
struct Waiting<'a> {
    link: &'a Link,
    id: u64,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.link.calls).waiting.remove(&self.id);
            self.link.stop_reading(self.id);
        }
    }
}

impl Link {
    /// A link for `connection`, seen from `side`; `inbound` is the worker's receiving half.
    pub(crate) fn new(
        connection: Connection,
        side: Side,
        max_frame: usize,
        inbound: Option<Inbound>,
    ) -> Arc<Self> {
        let next_id = match side {
            Side::Worker => HELLO_ID + 2,
            Side::ControlPlane => 1,
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            connection,
            side,
            max_frame,
            calls: Mutex::new(Calls {
                waiting: HashMap::new(),
                next_id,
                closed: None,
            }),
            outbox: Mutex::new(Vec::new()),
            sender: Mutex::new(None),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            inbound: inbound.map(Mutex::new),
        })
    }

    /// The QUIC connection.
    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether a frame with `id` is a request of the peer, rather than an answer to one of
    /// this side's.
    pub(crate) fn is_request(&self, id: u64) -> bool {
        id & 1 != self.side.parity()
    }

    /// Sends `message` as a request and waits for its answer until `deadline`; `timeout` is
    /// what a [`RequestError::Timeout`] reports.
    pub(crate) async fn call(
        &self,
        message: &Message,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let (id, flush) = {
            let mut calls = lock(&self.calls);
            if let Some(e) = &calls.closed {
                return Err(e.clone());
            }
            let id = calls.next_id;
            // 2^63 calls on one connection before this wraps.
            calls.next_id = id.wrapping_add(2);
            calls.waiting.insert(id, Slot::default());
            // Alone, a request goes out at once; among others in flight, it waits for the
            // requests their answers are about to set off, to share packets with them.
            let flush = if calls.waiting.len() > 1 {
                Flush::Batched
            } else {
                Flush::Now
            };
            (id, flush)
        };
        // Registered before the frame can leave, so the answer always finds its call.
        let mut waiting = Waiting {
            link: self,
            id,
            armed: true,
        };
        self.send(id, message, flush)?;
        let answer = std::future::poll_fn(|cx| self.poll_answer(id, cx));
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(result) => {
                // `poll_answer` took the entry out with the answer.
                waiting.armed = false;
                result
            }
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// The answer to call `id` if it is there; on the worker's side, reads the stream for it
    /// first.
    fn poll_answer(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<Message, RequestError>> {
        if let Some(inbound) = &self.inbound {
            let mut inbound = lock(inbound);
            if !self.has_answer(id) {
                self.pull(&mut inbound, cx.waker(), Reading::Call(id));
            }
        }
        let answer = {
            let mut calls = lock(&self.calls);
            let Some(slot) = calls.waiting.get_mut(&id) else {
                // Only `Waiting` takes an unanswered entry out, and it is still armed.
                return Poll::Ready(Err(RequestError::Disconnected(
                    "the connection was lost".into(),
                )));
            };
            match slot.answer.take() {
                Some(answer) => {
                    calls.waiting.remove(&id);
                    answer
                }
                None => {
                    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        slot.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        self.stop_reading(id);
        Poll::Ready(answer)
    }

    fn has_answer(&self, id: u64) -> bool {
        lock(&self.calls)
            .waiting
            .get(&id)
            .is_none_or(|slot| slot.answer.is_some())
    }

    /// Call `id` no longer reads: if quinn would wake it for the stream, hand the stream to
    /// the background reader instead, reading what is there already.
    fn stop_reading(&self, id: u64) {
        let Some(inbound) = &self.inbound else {
            return;
        };
        let mut inbound = lock(inbound);
        if inbound.reading != Reading::Call(id) {
            return;
        }
        match inbound.background.clone() {
            Some(background) => self.pull(&mut inbound, &background, Reading::Background),
            // Not started yet: it reads first thing when it starts.
            None => inbound.reading = Reading::Nobody,
        }
    }

    /// Reads what has arrived on the worker's stream, as `who`, with `waker` left with quinn
    /// for what comes next: answers go to their calls, pushes to the application. A frame
    /// that is not valid, or an answer to a request never sent, closes the connection.
    fn pull(&self, inbound: &mut Inbound, waker: &Waker, who: Reading) {
        if inbound.ended {
            return;
        }
        let mut cx = Context::from_waker(waker);
        loop {
            let Envelope { id, message } = match inbound.reader.poll_next(&mut cx) {
                Poll::Pending => {
                    inbound.reading = who;
                    return;
                }
                Poll::Ready(Ok(envelope)) => envelope,
                Poll::Ready(Err(failure)) => {
                    inbound.ended = true;
                    inbound.reading = Reading::Nobody;
                    let reason = self.end_for(&failure);
                    self.fail_all(RequestError::Disconnected(reason));
                    return;
                }
            };
            if self.is_request(id) {
                // Only a link being dropped has no `Arc` left; nobody would read the push.
                let Some(link) = self.me.upgrade() else {
                    continue;
                };
                let pushed = ClientEvent::Pushed(Pushed::new(message, link, id));
                // Never wait here for the application: answers read after this push must
                // not wait on it. A full queue hands the push to a task of its own.
                if let Err(mpsc::error::TrySendError::Full(pushed)) =
                    inbound.events.try_send(pushed)
                {
                    // Outside a runtime (a request dropped as it shuts down) the push is
                    // dropped, which refuses it for the worker.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let events = inbound.events.clone();
                        runtime.spawn(async move { events.send(pushed).await });
                    }
                }
            } else if let Err(reason) = self.settle_by(id, message, who) {
                warn!(reason, "protocol error from the control plane");
                self.close(close::PROTOCOL_ERROR, &reason);
                inbound.ended = true;
                inbound.reading = Reading::Nobody;
                self.fail_all(RequestError::Disconnected(reason));
                return;
            }
        }
    }

    /// Closes the connection for `failure` if the peer caused it; the reason the connection
    /// ended, either way.
    pub(crate) fn end_for(&self, failure: &ReadFailure) -> String {
        if let Some((code, reason)) = failure.refusal(self.side.name()) {
            warn!(reason, "bad frame from the peer");
            self.close(code, &reason);
            return reason;
        }
        match self.connection.close_reason() {
            Some(e) => e.to_string(),
            None => {
                // The connection is up but its stream failed: the peer reset it.
                let reason = format!("the connection's stream failed: {}", failure.describe());
                self.close(close::PROTOCOL_ERROR, &reason);
                reason
            }
        }
    }

    /// Queues one frame, to be sent as `flush` says; drops it once the connection is gone.
    fn send(&self, id: u64, message: &Message, flush: Flush) -> Result<(), EncodeError> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        wire::encode_into(id, message, &mut lock(&self.outbox), self.max_frame)?;
        match flush {
            Flush::Now => self.flush_now(),
            Flush::Batched => self.ready.notify_one(),
            Flush::Later => {}
        }
        Ok(())
    }

    /// Hands the outbox to QUIC on this task if nobody else is writing and QUIC takes it
    /// all now; otherwise leaves it to the writer task.
    pub(crate) fn flush_now(&self) {
        let mut guard = match self.sender.try_lock() {
            Ok(guard) => guard,
            // Someone is writing: whatever they took, the writer task takes the rest.
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => {
                self.ready.notify_one();
                return;
            }
        };
        // Not started yet: the writer task writes the outbox first thing when it starts.
        let Some(sender) = guard.as_mut() else {
            return;
        };
        // The writer task is waiting for QUIC to take those; it takes the outbox after them.
        if sender.offset < sender.unsent.len() {
            return;
        }
        // A waker that does nothing: when QUIC cannot take everything now, the writer task
        // takes over and waits with its own.
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(self.poll_flush(sender, &mut cx), Poll::Ready(Ok(()))) {
            self.ready.notify_one();
        }
    }

    /// Writes what is left of the last batch, then the outbox, until both are empty
    /// (`Ready(Ok)`), QUIC's flow control holds it back (`Pending`) or the stream fails.
    fn poll_flush(
        &self,
        sender: &mut Sender,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            if sender.offset == sender.unsent.len() {
                sender.unsent.clear();
                sender.offset = 0;
                if sender.unsent.capacity() > KEPT_CAPACITY {
                    sender.unsent = Vec::new();
                }
                let mut outbox = lock(&self.outbox);
                if outbox.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                std::mem::swap(&mut *outbox, &mut sender.unsent);
            }
            match Pin::new(&mut sender.send).poll_write(cx, &sender.unsent[sender.offset..]) {
                Poll::Ready(Ok(n)) => sender.offset += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Answers the peer's request `id`. An answer too large to send is replaced by an error
    /// saying so, so that the peer is not left waiting.
    pub(crate) fn answer(&self, id: u64, message: &Message, flush: Flush) {
        if let Err(e) = self.send(id, message, flush) {
            warn!(id, "answer not sent: {e}");
            let refusal = Message::Error {
                code: ErrorCode::Unavailable,
                message: e.to_string(),
            };
            if let Err(e) = self.send(id, &refusal, flush) {
                warn!(id, "refusal not sent either: {e}");
            }
        }
    }

    /// Hands the answer with `id` to its call. `Err` with a reason when this side never
    /// sent a request with that id: the peer is out of step.
    pub(crate) fn settle(&self, id: u64, message: Message) -> Result<(), String> {
        self.settle_by(id, message, Reading::Nobody)
    }

    /// [`Link::settle`], read by `by`: a call that finds its own answer is not woken for it.
    /// (Comparing wakers would not do: two calls polled by one task share one.)
    fn settle_by(&self, id: u64, message: Message, by: Reading) -> Result<(), String> {
        let mut calls = lock(&self.calls);
        if let Some(slot) = calls.waiting.get_mut(&id) {
            // A second answer to the same request is dropped like a late one.
            if slot.answer.is_none() {
                slot.fill(Ok(message), by != Reading::Call(id));
            }
            Ok(())
        } else if id < calls.next_id {
            debug!(id, "an answer to a request that gave up; dropped");
            Ok(())
        } else {
            Err(format!(
                "an answer to request {id}, which this {} never sent",
                self.side.name()
            ))
        }
    }

    /// Fails every waiting call, and every later one, with `error`.
    pub(crate) fn fail_all(&self, error: RequestError) {
        self.closed.store(true, Ordering::Relaxed);
        {
            let mut calls = lock(&self.calls);
            let error = calls.closed.get_or_insert(error).clone();
            for slot in calls.waiting.values_mut() {
                if slot.answer.is_none() {
                    slot.fill(Err(error.clone()), true);
                }
            }
        }
        // What was queued and not written stays unwritten.
        *lock(&self.outbox) = Vec::new();
    }

    /// Calls waiting for their answer now.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.calls)
            .waiting
            .values()
            .filter(|slot| slot.answer.is_none())
            .count()
    }

    /// Closes the connection with a [`close`] code and a reason.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        debug!(remote = %self.connection.remote_address(), code, reason, "closing connection");
        self.connection
            .close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// Makes `send` the link's stream to write to and writes, from then on, whatever the
/// callers could not write themselves (see [`Link::flush_now`]), until the stream fails. The
/// frames queued before it starts go first.
pub(crate) async fn write_loop(link: Arc<Link>, send: SendStream) {
    *lock(&link.sender) = Some(Sender {
        send,
        unsent: Vec::new(),
        offset: 0,
    });
    loop {
        let flushed = std::future::poll_fn(|cx| match lock(&link.sender).as_mut() {
            Some(sender) => link.poll_flush(sender, cx),
            None => Poll::Ready(Ok(())),
        })
        .await;
        if let Err(e) = flushed {
            // Either the connection is gone, or the peer stopped a stream it must keep
            // reading for the whole connection.
            if link.connection.close_reason().is_none() {
                link.close(
                    close::PROTOCOL_ERROR,
                    &format!("the connection's stream was stopped: {e}"),
                );
            }
            return;
        }
        link.ready.notified().await;
    }
}

/// Reads the worker's stream whenever no request is reading it: the server's pushes, and the
/// answers of requests whose callers are not polling just now. Ends when the stream does.
pub(crate) async fn read_loop(link: Arc<Link>) {
    std::future::poll_fn(|cx| {
        let Some(inbound) = &link.inbound else {
            return Poll::Ready(());
        };
        let mut inbound = lock(inbound);
        if !inbound
            .background
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inbound.background = Some(cx.waker().clone());
        }
        link.pull(&mut inbound, cx.waker(), Reading::Background);
        if inbound.ended {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
