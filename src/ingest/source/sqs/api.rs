//! SQS's JSON protocol (`X-Amz-Target: AmazonSQS.<Action>`), the four actions the
//! source needs, signed with SigV4 by `object_store`'s signer over its HTTP client,
//! with its credential chain (environment, web identity, ECS, instance metadata):
//! the crate the object-store sinks build already, so the source adds no dependency.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequestBody, ReqwestConnector};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

/// One queue, as the source talks to it.
#[derive(Debug)]
pub struct Queue {
    http: HttpClient,
    endpoint: String,
    url: String,
    region: String,
    credentials: AwsCredentialProvider,
}

/// What an SQS request came to when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the queue {0} does not exist")]
    NoQueue(String),
    #[error("SQS refused the credentials: {code}: {message}")]
    Credentials { code: String, message: String },
    #[error("SQS answered {status} to {action}: {code}: {message}")]
    Failed { action: &'static str, status: u16, code: String, message: String },
    #[error("cannot reach SQS at {endpoint}: {source}")]
    Unreachable { endpoint: String, source: HttpError },
    #[error("cannot sign a request to SQS: {0}")]
    Signing(#[from] object_store::Error),
}

impl ApiError {
    /// Whether retrying cannot help: the sidecar exits and says why.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ApiError::NoQueue(_) | ApiError::Credentials { .. })
    }
}

/// A message as ReceiveMessage hands it out.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Received {
    #[serde(deserialize_with = "shared")]
    pub message_id: Arc<str>,
    #[serde(deserialize_with = "shared")]
    pub receipt_handle: Arc<str>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attributes {
    approximate_receive_count: Option<String>,
}

impl Received {
    /// Delivered before: SQS counts every receive, and the first is 1.
    pub fn is_redelivered(&self) -> bool {
        self.attributes.approximate_receive_count.as_deref().and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 1)
    }
}

/// Error codes that mean the credentials themselves are refused.
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidSecurity",
    "ExpiredToken",
];

/// SQS's limit on entries in one batch request.
pub const BATCH: usize = 10;

impl Queue {
    /// `request_timeout` bounds every request, the long polls included.
    pub fn new(endpoint: String, url: String, region: String, request_timeout: Duration) -> Result<Self, ApiError> {
        let options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_timeout(request_timeout)
            .with_connect_timeout(Duration::from_secs(5));
        let http = ReqwestConnector::default().connect(&options)?;
        // The S3 builder's credential chain reads the standard AWS environment; the
        // bucket is a placeholder, as only the credentials are used.
        let s3 = AmazonS3Builder::from_env().with_bucket_name("sqs").with_region(&region).build()?;
        let credentials = s3.credentials().clone();
        Ok(Self { http, endpoint: format!("{endpoint}/"), url, region, credentials })
    }

    /// Checks that the queue exists and the credentials are taken.
    pub async fn check(&self) -> Result<(), ApiError> {
        let body = json!({ "QueueUrl": self.url, "AttributeNames": ["VisibilityTimeout"] });
        self.call("GetQueueAttributes", body).await.map(drop)
    }

    pub async fn receive(&self, max: u8, wait: Duration, visibility: Duration) -> Result<Vec<Received>, ApiError> {
        let body = json!({
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max,
            "WaitTimeSeconds": wait.as_secs(),
            "VisibilityTimeout": seconds(visibility),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        });
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            #[serde(default)]
            messages: Vec<Received>,
        }
        let answer = self.call("ReceiveMessage", body).await?;
        let answer: Answer = serde_json::from_value(answer).map_err(|e| self.malformed("ReceiveMessage", &e))?;
        Ok(answer.messages)
    }

    /// Deletes up to [`BATCH`] messages; returns how many SQS did not delete (a
    /// handle no longer valid: the message is back in the queue, to be recognised).
    pub async fn delete(&self, handles: &[Arc<str>]) -> Result<usize, ApiError> {
        let entries: Vec<Value> =
            handles.iter().enumerate().map(|(i, h)| json!({ "Id": i.to_string(), "ReceiptHandle": &**h })).collect();
        self.batch("DeleteMessageBatch", json!({ "QueueUrl": self.url, "Entries": entries })).await
    }

    /// Sets the visibility timeout of up to [`BATCH`] messages (0: visible again now);
    /// returns how many SQS did not change.
    pub async fn set_visibility(&self, handles: &[Arc<str>], timeout: Duration) -> Result<usize, ApiError> {
        let entries: Vec<Value> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| json!({ "Id": i.to_string(), "ReceiptHandle": &**h, "VisibilityTimeout": seconds(timeout) }))
            .collect();
        self.batch("ChangeMessageVisibilityBatch", json!({ "QueueUrl": self.url, "Entries": entries })).await
    }

    async fn batch(&self, action: &'static str, body: Value) -> Result<usize, ApiError> {
        let answer = self.call(action, body).await?;
        Ok(answer.get("Failed").and_then(Value::as_array).map_or(0, Vec::len))
    }

    async fn call(&self, action: &'static str, body: Value) -> Result<Value, ApiError> {
        let mut request = http::Request::post(&self.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .body(HttpRequestBody::from(Bytes::from(body.to_string())))
            .expect("a request built from a valid URL and headers");
        let credential = self.credentials.get_credential().await?;
        AwsAuthorizer::new(&credential, "sqs", &self.region).try_authorize(&mut request, None)?;
        let unreachable = |source| ApiError::Unreachable { endpoint: self.endpoint.clone(), source };
        let response = self.http.execute(request).await.map_err(unreachable)?;
        let status = response.status();
        let query_error = response.headers().get("x-amzn-query-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.into_body().bytes().await.map_err(unreachable)?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(answer);
        }
        let text = String::from_utf8_lossy(&bytes);
        let (code, message) = error_of(&answer, query_error.as_deref(), &text);
        Err(match code.as_str() {
            "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue" => ApiError::NoQueue(self.url.clone()),
            _ if status == http::StatusCode::FORBIDDEN || CREDENTIAL_CODES.contains(&code.as_str()) => {
                ApiError::Credentials { code, message }
            }
            _ => ApiError::Failed { action, status: status.as_u16(), code, message },
        })
    }

    fn malformed(&self, action: &'static str, error: &serde_json::Error) -> ApiError {
        ApiError::Failed { action, status: 200, code: "Malformed".into(), message: error.to_string() }
    }
}

/// An error's code and message: from the JSON protocol's `__type` (such as
/// `com.amazonaws.sqs#QueueDoesNotExist`) and `message`, else the query protocol's
/// `x-amzn-query-error` header or XML `<Code>`, which some answers still use.
fn error_of(answer: &Value, query_error: Option<&str>, text: &str) -> (String, String) {
    let between = |open: &str, close: &str| Some(text.split_once(open)?.1.split_once(close)?.0.to_owned());
    let typed = answer.get("__type").and_then(Value::as_str).and_then(|kind| kind.rsplit('#').next());
    let code = typed
        .map(str::to_owned)
        .or_else(|| query_error.and_then(|header| header.split(';').next()).map(str::to_owned))
        .or_else(|| between("<Code>", "</Code>"))
        .unwrap_or_default();
    let message = ["message", "Message"]
        .iter()
        .find_map(|key| answer.get(key).and_then(Value::as_str).map(str::to_owned))
        .or_else(|| between("<Message>", "</Message>"))
        .unwrap_or_else(|| text.to_owned());
    (code, message)
}

/// Ids and handles are shared by the held messages, the batches and the window.
fn shared<'de, D: Deserializer<'de>>(text: D) -> Result<Arc<str>, D::Error> {
    String::deserialize(text).map(Arc::from)
}

/// SQS takes whole seconds; a part second counts as one more.
fn seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_from_json_headers_or_xml() {
        let json = json!({ "__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "gone" });
        assert_eq!(error_of(&json, None, ""), ("QueueDoesNotExist".into(), "gone".into()));
        let header = error_of(&Value::Null, Some("AWS.SimpleQueueService.NonExistentQueue;Sender"), "x");
        assert_eq!(header, ("AWS.SimpleQueueService.NonExistentQueue".into(), "x".into()));
        let xml =
            "<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>bad</Message></Error></ErrorResponse>";
        assert_eq!(error_of(&Value::Null, None, xml), ("InvalidClientTokenId".into(), "bad".into()));
    }
}
