//! How a worker asks its control plane: [`Uplink`], answered over QUIC by a [`Client`], or
//! over any other link that carries the same messages (the `nexa` binary's HTTP link).

use std::future::Future;
use std::pin::Pin;

use nexa_runtime::wire::Message;

use crate::client::Client;
use crate::error::RequestError;

/// The answer to one request, on its way.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<Message, RequestError>> + Send + 'a>>;

/// A link from a worker to its control plane: every request is a [`Message`] answered by one.
///
/// A link rides out the control plane going away within its request timeout where it can, and
/// says so with [`RequestError::Disconnected`], [`RequestError::Timeout`] or
/// [`RequestError::Stream`] where it cannot: callers retry those. Pushes from the control
/// plane (a cancel) are not part of it; a link that cannot push relies on heartbeats, whose
/// answers name the jobs to cancel.
pub trait Uplink: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `message` and waits for the answer.
    fn request<'a>(&'a self, message: &'a Message) -> Answer<'a>;

    /// Stops the link now: requests in flight fail, and the control plane sees the worker
    /// leave as soon as it can tell.
    fn shutdown(&self);
}

impl Uplink for Client {
    fn request<'a>(&'a self, message: &'a Message) -> Answer<'a> {
        Box::pin(Client::request(self, message))
    }

    fn shutdown(&self) {
        Client::shutdown(self);
    }
}
