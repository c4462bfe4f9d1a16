//! The `sqs://HOST/ACCOUNT/QUEUE` source: an Amazon SQS queue read by competing
//! consumers, each message deleted only once its batch is committed.
//!
//! This file owns the URI and its options; `api` speaks SQS's JSON protocol,
//! `consume` runs the receive loop, `held` keeps the visibility of messages waiting
//! in a batch from running out, `recognised` the window of ids committed, and
//! `s3_events` turns S3 event notifications into the objects they name.

mod api;
mod consume;
mod held;
mod s3_events;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{BadSourceUri, Source, SourceContext, SourceError};
use crate::encode::checkpoint::Fold;
use crate::ingest::Transport;

/// The URI's form, for the error listing what `--source` accepts.
pub const FORM: &str =
    "sqs://HOST/ACCOUNT/QUEUE[?mode=messages|s3-events&window=N&visibility=DUR&wait=DUR&max=N&endpoint=URL]";

/// What each SQS message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Its body is one message.
    Messages,
    /// An S3 event notification: each object it says was created is one message,
    /// named by its key.
    S3Events,
}

/// A parsed `sqs://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sqs {
    uri: String,
    /// `https://HOST/ACCOUNT/QUEUE`, as SQS names the queue.
    queue_url: String,
    host: String,
    queue: String,
    mode: Mode,
    /// How many of the ids most recently committed are recognised when delivered again.
    window: usize,
    /// How long a received message stays invisible to other consumers; kept from
    /// running out while the message waits in a batch.
    visibility: Duration,
    /// How long one ReceiveMessage waits for messages (long polling).
    wait: Duration,
    /// Messages per ReceiveMessage.
    max: u8,
    /// Where requests go instead of `https://HOST` (a local server).
    endpoint: Option<String>,
}

const DEFAULT_WINDOW: usize = 10_000;
/// SQS's own limits on what one ReceiveMessage may ask.
const MAX_WAIT: Duration = Duration::from_secs(20);
const MAX_PER_RECEIVE: u8 = 10;
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

pub fn parse(uri: &str) -> Result<Arc<dyn Source>, BadSourceUri> {
    Ok(Arc::new(Sqs::parse(uri)?))
}

impl Sqs {
    fn parse(uri: &str) -> Result<Self, BadSourceUri> {
        let bad = |why: String| BadSourceUri(format!("bad source `{uri}`: {why}; expected {FORM}"));
        let rest = uri.strip_prefix("sqs://").ok_or_else(|| bad("it does not start with sqs://".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let [host, account, queue] = segments[..] else {
            return Err(bad("it must name a host, an account and a queue".into()));
        };
        if host.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) || account.is_empty() {
            return Err(bad("the host is empty or the account is not a number".into()));
        }
        if !is_queue_name(queue) {
            return Err(bad(format!("`{queue}` is not a queue name (1-80 of A-Z a-z 0-9 - _, then .fifo or not)")));
        }
        let mut sqs = Sqs {
            uri: uri.to_owned(),
            queue_url: format!("https://{host}/{account}/{queue}"),
            host: host.to_owned(),
            queue: queue.to_owned(),
            mode: Mode::Messages,
            window: DEFAULT_WINDOW,
            visibility: Duration::from_secs(30),
            wait: MAX_WAIT,
            max: MAX_PER_RECEIVE,
            endpoint: None,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            sqs.set(&key, &value).map_err(|why| bad(format!("option `{key}={value}`: {why}")))?;
        }
        Ok(sqs)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let duration = |value: &str| humantime::parse_duration(value).map_err(|e| e.to_string());
        match key {
            "mode" => {
                self.mode = match value {
                    "messages" => Mode::Messages,
                    "s3-events" => Mode::S3Events,
                    _ => return Err("the mode is messages or s3-events".into()),
                }
            }
            "window" => self.window = value.parse().map_err(|_| "not a count")?,
            "visibility" => {
                self.visibility = duration(value)?;
                if self.visibility < Duration::from_secs(2) || self.visibility > MAX_VISIBILITY {
                    return Err("the visibility timeout is 2s to 12h (whole seconds)".into());
                }
            }
            "wait" => {
                self.wait = duration(value)?;
                if self.wait > MAX_WAIT {
                    return Err("SQS waits 20s at most".into());
                }
            }
            "max" => {
                self.max = value.parse().map_err(|_| "not a count")?;
                if !(1..=MAX_PER_RECEIVE).contains(&self.max) {
                    return Err("SQS gives 1 to 10 messages per receive".into());
                }
            }
            "endpoint" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err("the endpoint is an http:// or https:// URL".into());
                }
                self.endpoint = Some(value.trim_end_matches('/').to_owned());
            }
            _ => return Err("unknown option; known: mode, window, visibility, wait, max, endpoint".into()),
        }
        Ok(())
    }

    /// Where requests go: `?endpoint=`, else the AWS environment's, else the host.
    fn endpoint(&self) -> String {
        let env = ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"].into_iter().find_map(|name| std::env::var(name).ok());
        let endpoint = self.endpoint.clone().or(env.filter(|e| !e.is_empty()));
        endpoint.map_or_else(|| format!("https://{}", self.host), |e| e.trim_end_matches('/').to_owned())
    }

    /// The region requests are signed for: the host's (`sqs.REGION.amazonaws.com`),
    /// else `AWS_REGION` or `AWS_DEFAULT_REGION`, else us-east-1.
    fn region(&self) -> String {
        let from_host = self.host.strip_prefix("sqs.").and_then(|h| h.strip_suffix(".amazonaws.com"));
        let env = || ["AWS_REGION", "AWS_DEFAULT_REGION"].into_iter().find_map(|name| std::env::var(name).ok());
        from_host.map(str::to_owned).or_else(env).unwrap_or_else(|| "us-east-1".into())
    }
}

/// SQS's rule for queue names: what keeps the checkpoint's file name valid too.
fn is_queue_name(name: &str) -> bool {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    (1..=80).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Source for Sqs {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn checkpoint_stem(&self) -> String {
        format!("sqs.{}", self.queue)
    }

    fn fold(&self) -> Fold {
        Fold::Ids { window: self.window }
    }

    fn transport(&self) -> Transport {
        Transport::Sqs
    }

    fn run(self: Arc<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(consume::run(self, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_names_the_queue_and_takes_its_options() {
        let sqs = Sqs::parse("sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders").unwrap();
        assert_eq!(sqs.queue_url, "https://sqs.eu-west-1.amazonaws.com/123456789012/orders");
        assert_eq!((sqs.mode, sqs.window, sqs.max), (Mode::Messages, 10_000, 10));
        assert_eq!((sqs.visibility, sqs.wait), (Duration::from_secs(30), Duration::from_secs(20)));
        assert_eq!(sqs.region(), "eu-west-1");
        assert_eq!(sqs.checkpoint_stem(), "sqs.orders");

        let uri = "sqs://h/1/q.fifo?mode=s3-events&window=5&visibility=1m&wait=2s&max=3&endpoint=http://127.0.0.1:9/";
        let sqs = Sqs::parse(uri).unwrap();
        assert_eq!((sqs.mode, sqs.window, sqs.max), (Mode::S3Events, 5, 3));
        assert_eq!((sqs.visibility, sqs.wait), (Duration::from_secs(60), Duration::from_secs(2)));
        assert_eq!(sqs.endpoint(), "http://127.0.0.1:9");
        assert_eq!(sqs.describe(), uri);
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        let error = |uri: &str| Sqs::parse(uri).unwrap_err().0;
        assert!(error("sqs://h/q").contains("it must name a host, an account and a queue"));
        assert!(error("sqs://h/acct/q").contains("the account is not a number"));
        assert!(error("sqs://h/1/a.b").contains("`a.b` is not a queue name"));
        assert!(error("sqs://h/1/q?mode=x").contains("option `mode=x`: the mode is messages or s3-events"));
        assert!(error("sqs://h/1/q?wait=21s").contains("SQS waits 20s at most"));
        assert!(error("sqs://h/1/q?max=11").contains("1 to 10"));
        assert!(error("sqs://h/1/q?visibility=1s").contains("2s to 12h"));
        assert!(error("sqs://h/1/q?endpoint=localhost").contains("http:// or https://"));
        assert!(error("sqs://h/1/q?colour=red").contains("unknown option"));
    }
}
