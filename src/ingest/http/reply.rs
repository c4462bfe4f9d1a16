//! JSON answers: every response of the API, success or error, is a JSON object.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(body).expect("replies serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
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
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
