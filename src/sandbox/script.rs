//! Scripted responses: a test overrides what an operation answers (errors, slow or huge bodies).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Response, StatusCode};

use super::body::{self, BoxBody, Generated};
use super::json_response;
use crate::catalog::Operation;

/// A scripted response for one operation (see [`super::Sandbox::script`]).
#[derive(Debug, Clone)]
pub struct Script {
    /// The status to answer with.
    pub status: StatusCode,
    /// Headers to send. They replace the sandbox's defaults of the same name
    /// (`content-type`, `x-amzn-RequestId`, `x-amzn-RateLimit-Limit`); repeated names are all sent.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: ScriptBody,
    /// How long to wait before sending the response head.
    pub header_delay: Duration,
    /// `None`: until [`super::Sandbox::clear_scripts`]; `Some(n)`: the next `n` requests only.
    pub times: Option<u32>,
}

impl Script {
    /// A script answering `status` with a JSON body, no extra headers, no delay, until cleared.
    pub fn json(status: StatusCode, body: serde_json::Value) -> Script {
        Script {
            status,
            headers: Vec::new(),
            body: ScriptBody::Json(body),
            header_delay: Duration::ZERO,
            times: None,
        }
    }
}

/// The body of a [`Script`].
#[derive(Debug, Clone)]
pub enum ScriptBody {
    /// A JSON document.
    Json(serde_json::Value),
    /// Exactly these bytes.
    Bytes(Bytes),
    /// `total_bytes` bytes of generated filler in frames of `chunk_bytes`, with a
    /// `content-length`; generated as sent, never held in memory whole.
    Stream {
        /// Total body size.
        total_bytes: u64,
        /// Size of each frame (the last may be shorter); 0 is treated as 1.
        chunk_bytes: usize,
    },
    /// Sends `first_bytes` bytes of filler, then never sends more and never ends.
    Stall {
        /// How many bytes to send before stalling.
        first_bytes: u64,
    },
}

/// Chunk size for [`ScriptBody::Stall`]'s first bytes.
const STALL_CHUNK: usize = 64 * 1024;

/// The response for a script.
pub(super) fn respond(script: &Script, op: &Operation) -> Response<BoxBody> {
    let (body, length) = match &script.body {
        ScriptBody::Json(value) => (
            body::full(serde_json::to_vec(value).unwrap_or_default()),
            None,
        ),
        ScriptBody::Bytes(bytes) => (body::full(bytes.clone()), None),
        ScriptBody::Stream {
            total_bytes,
            chunk_bytes,
        } => (
            BoxBody::new(Generated::new(*total_bytes, *chunk_bytes, false)),
            Some(*total_bytes),
        ),
        ScriptBody::Stall { first_bytes } => (
            BoxBody::new(Generated::new(*first_bytes, STALL_CHUNK, true)),
            None,
        ),
    };
    let mut response = json_response(script.status, body, Some(op));
    let headers = response.headers_mut();
    if let Some(length) = length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    for (name, _) in &script.headers {
        headers.remove(name);
    }
    for (name, value) in &script.headers {
        headers.append(name.clone(), value.clone());
    }
    response
}
