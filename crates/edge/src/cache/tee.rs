//! A response body streamed to the client and kept for the store at the same time.
//!
//! When the body ends, the response is stored and the fetch's waiters are told. A body larger
//! than the store takes is streamed on and not stored; a body cut short is not stored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use lockstep_proto::Generation;

use super::flight::{Leader, Outcome};
use super::policy::Timers;
use super::store::{Store, Stored};

/// What is needed to store the response once its body is complete.
pub(crate) struct Pending {
    pub store: Arc<Store>,
    pub key: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub request_headers: HeaderMap,
    pub timers: Timers,
    pub generation: Option<Generation>,
    pub received: Instant,
    /// The coalescing slot, when this fetch leads one.
    pub leader: Option<Leader>,
}

impl Pending {
    /// Stores the response with its complete body and releases the waiters.
    pub(crate) fn complete(self, body: Bytes) {
        let Pending {
            store,
            key,
            status,
            headers,
            request_headers,
            timers,
            generation,
            received,
            leader,
        } = self;
        let stored = Stored::new(
            status,
            headers,
            body,
            &request_headers,
            timers,
            generation,
            received,
        );
        let outcome = if store.insert(&key, stored) {
            Outcome::Stored
        } else {
            store.mark_uncacheable(&key);
            Outcome::Uncacheable
        };
        if let Some(leader) = leader {
            leader.finish(outcome);
        }
    }

    /// Gives up storing a body too large for the store.
    fn too_large(self) {
        tracing::debug!(key = %self.key, "response body too large to store");
        self.store.mark_uncacheable(&self.key);
        if let Some(leader) = self.leader {
            leader.finish(Outcome::Uncacheable);
        }
    }
}

pub(crate) struct Tee {
    inner: Incoming,
    buffer: BytesMut,
    limit: usize,
    pending: Option<Pending>,
}

impl Tee {
    pub(crate) fn new(inner: Incoming, limit: u64, pending: Pending) -> Tee {
        Tee {
            inner,
            buffer: BytesMut::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            pending: Some(pending),
        }
    }
}

impl Tee {
    fn complete_if_ended(&mut self) {
        if self.inner.is_end_stream()
            && let Some(pending) = self.pending.take()
        {
            pending.complete(std::mem::take(&mut self.buffer).freeze());
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.complete_if_ended();
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && this.pending.is_some()
                {
                    if this.buffer.len() + data.len() > this.limit {
                        this.buffer = BytesMut::new();
                        if let Some(pending) = this.pending.take() {
                            pending.too_large();
                        }
                    } else {
                        this.buffer.extend_from_slice(data);
                    }
                }
                // A body of known length may be dropped right after its last byte, without
                // being polled for its end: complete as soon as the last byte is in.
                this.complete_if_ended();
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                // Dropping the pending store abandons the fetch.
                this.pending = None;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some(pending) = this.pending.take() {
                    pending.complete(std::mem::take(&mut this.buffer).freeze());
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Until the store has the body, the end must be polled so that it is seen.
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
