//! JSON answers: every response of the API, success or error, is a JSON object.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// An error in the middle of a streamed body: the connection is cut, so the client
/// sees a truncated answer, never a short one passed off as whole.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub type Reply = Response<UnsyncBoxBody<Bytes, BodyError>>;

pub fn whole(bytes: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, BodyError> {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// 200 with a body that is sent as `chunks` yield it, at the pace the client reads.
pub fn stream<S, E>(content_type: &'static str, chunks: S) -> Reply
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BodyError> + 'static,
{
    let frames = chunks.map_ok(Frame::data).map_err(Into::into);
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(body).expect("replies serialize");
    let mut response = Response::new(whole(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"error": kind, "message": message}` with `status`.
pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Reply {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
        message: String,
    }
    json(status, &Error { error: kind, message: message.into() })
}

/// 503 with `Retry-After`, for a full buffer or a draining sidecar.
pub fn unavailable(kind: &str, message: impl Into<String>, retry_after_secs: u32) -> Reply {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, kind, message);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut response = Response::new(whole(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
