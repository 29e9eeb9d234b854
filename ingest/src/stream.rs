//! Forwarding a provider's event stream to the client while metering it.
//!
//! [`MeteredStream`] wraps the upstream body. It cuts the bytes into whole events
//! ([`crate::sse::SseFramer`]), reads each event's usage and text, drops the usage chunk
//! the gateway requested on a client's behalf, and passes everything else on unchanged.
//! The call is recorded when the upstream ends the stream, when the upstream connection
//! breaks or stays silent longer than its request timeout, or, if the client goes away
//! first, when the server drops the body: then the event carries the tokens delivered so
//! far, counted with the tokenizer.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::Value;
use tollgate_schemas::OutcomeStatus;

use crate::draft::{Draft, Ending, ResponseTap};
use crate::error::Dialect;
use crate::sse::{SseFramer, frame_data};
use crate::usage::StreamTally;

type UpstreamBody = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An upstream event stream on its way to the client.
pub struct MeteredStream {
    upstream: UpstreamBody,
    dialect: Dialect,
    /// Drop the usage-only chunk: the client did not ask for it.
    strip_usage_chunk: bool,
    framer: SseFramer,
    tally: StreamTally,
    /// The request, for estimating input tokens if the upstream reports no usage.
    request_body: serde_json::Map<String, Value>,
    tap: Option<ResponseTap>,
    /// When the upstream's headers arrived: from then on the time is the stream's.
    stream_started: Instant,
    first_byte: Option<Instant>,
    http_status: u16,
    /// The longest the upstream may stay silent mid-stream.
    idle_timeout: std::time::Duration,
    idle_deadline: Pin<Box<tokio::time::Sleep>>,
    draft: Option<Draft>,
}

impl std::fmt::Debug for MeteredStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStream").field("dialect", &self.dialect).field("tally", &self.tally).finish()
    }
}

impl MeteredStream {
    pub fn new(
        response: reqwest::Response,
        dialect: Dialect,
        strip_usage_chunk: bool,
        request_body: serde_json::Map<String, Value>,
        idle_timeout: std::time::Duration,
        draft: Draft,
    ) -> Self {
        MeteredStream {
            http_status: response.status().as_u16(),
            upstream: Box::pin(response.bytes_stream()),
            dialect,
            strip_usage_chunk,
            framer: SseFramer::default(),
            tally: StreamTally::default(),
            request_body,
            tap: Some(draft.response_tap()),
            stream_started: Instant::now(),
            first_byte: None,
            idle_timeout,
            idle_deadline: Box::pin(tokio::time::sleep(idle_timeout)),
            draft: Some(draft),
        }
    }

    /// The frames of `chunk` to send on, after metering them.
    fn process(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        for frame in self.framer.push(chunk) {
            if self.observe(&frame) {
                out.extend_from_slice(&frame);
            }
        }
        out.freeze()
    }

    /// Meters one frame; false when it is to be dropped.
    fn observe(&mut self, frame: &[u8]) -> bool {
        let Some(data) = frame_data(frame) else { return true };
        match self.dialect {
            Dialect::OpenAi => {
                if data.trim() == "[DONE]" {
                    self.tally.finished = true;
                    return true;
                }
                let Ok(chunk) = serde_json::from_str::<Value>(&data) else { return true };
                self.tally.observe_openai_chunk(&chunk);
                let usage_only = chunk.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty)
                    && chunk.get("usage").is_some_and(Value::is_object);
                !(self.strip_usage_chunk && usage_only)
            }
            Dialect::Anthropic => {
                if let Ok(event) = serde_json::from_str::<Value>(&data) {
                    self.tally.observe_anthropic_event(&event);
                }
                true
            }
        }
    }

    fn send(&mut self, bytes: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
        if let Some(tap) = &mut self.tap {
            tap.sent(&bytes);
        }
        Poll::Ready(Some(Ok(bytes)))
    }

    /// Records the call, once.
    fn finish(&mut self, status: OutcomeStatus, error: Option<String>) {
        let Some(mut draft) = self.draft.take() else { return };
        let complete = status == OutcomeStatus::Ok;
        draft.waited += self.stream_started.elapsed();
        let mut ending = Ending::new(status, Some(self.http_status));
        if let Some(message) = error {
            ending = ending.with_error(status.as_str(), message);
        }
        ending.usage = self.tally.usage_or_estimate(|| crate::usage::prompt_text(&self.request_body), complete);
        ending.response_model = self.tally.response_model.clone();
        ending.time_to_first_token = self.first_byte.map(|first| first.duration_since(draft.started));
        let tap = self.tap.take().unwrap_or_else(|| draft.response_tap());
        draft.finish(ending, tap);
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.draft.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Pending => {
                    if this.idle_deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let message =
                        format!("the upstream sent nothing for {} s mid-stream", this.idle_timeout.as_secs_f64());
                    tracing::warn!(timeout = ?this.idle_timeout, "upstream stream stalled");
                    this.finish(OutcomeStatus::Timeout, Some(message.clone()));
                    return Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, message))));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle_deadline.as_mut().reset(deadline);
                    let out = this.process(&chunk);
                    if !out.is_empty() {
                        return this.send(out);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let message = format!("the upstream stream broke: {error}");
                    tracing::warn!(%error, "upstream stream broke mid-response");
                    this.finish(OutcomeStatus::UpstreamError, Some(message.clone()));
                    // Ending with an error aborts the response, so the client sees an
                    // incomplete stream rather than a clean end.
                    return Poll::Ready(Some(Err(std::io::Error::other(message))));
                }
                Poll::Ready(None) => {
                    if let Some(tail) = this.framer.finish() {
                        // An unterminated last event: pass it on as it came.
                        this.observe(&tail);
                        let poll = this.send(tail);
                        this.end_of_upstream();
                        return poll;
                    }
                    this.end_of_upstream();
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl MeteredStream {
    fn end_of_upstream(&mut self) {
        if self.tally.finished {
            self.finish(OutcomeStatus::Ok, None);
        } else {
            let message = "the upstream ended the stream before its final event".to_owned();
            self.finish(OutcomeStatus::UpstreamError, Some(message));
        }
    }
}

impl Drop for MeteredStream {
    /// The server drops the body when the client goes away: record what was delivered.
    fn drop(&mut self) {
        if self.draft.is_some() {
            self.finish(OutcomeStatus::ClientDisconnected, Some("the client closed the connection mid-stream".into()));
        }
    }
}
