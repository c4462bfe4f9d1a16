//! The request options of the API, from the query string or their header twins.

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName};

use crate::ingest::framing::Named;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `?file=` or `Spout-File:`: the file name of the request's messages.
    pub file: Option<String>,
    /// `?wait=` or `Spout-Wait:`.
    pub wait: Wait,
    /// `?timeout=`: how long `wait=downstream` may wait.
    pub timeout: Option<Duration>,
    /// `?framing=` or `Spout-Framing:`: how to cut the body, whatever its `Content-Type`.
    pub framing: Option<Named>,
}

/// What the answer waits for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// 202 once the messages are held.
    #[default]
    None,
    /// 200 once they are committed.
    Commit,
    /// 200 once they are committed and every commit downstream of theirs is finished.
    Downstream,
}

impl RequestOptions {
    /// Whether the answer waits for the commit (and maybe more).
    pub fn wait_commit(&self) -> bool {
        self.wait != Wait::None
    }
}

/// A request option that cannot be understood (answered 400 `bad_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOption {
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("wait must be `commit`, `downstream` (or `none`), not `{0}`")]
    Wait(String),
    #[error("timeout must be a duration such as `30s` or `500ms`, not `{0}`")]
    Timeout(String),
    #[error("framing must be one of raw, ndjson, frames, multipart, json-array, not `{0}`")]
    Framing(String),
}

// Named once: looking a header up by a string parses the name on every request.
const SPOUT_FILE: HeaderName = HeaderName::from_static("spout-file");
const SPOUT_WAIT: HeaderName = HeaderName::from_static("spout-wait");
const SPOUT_FRAMING: HeaderName = HeaderName::from_static("spout-framing");

impl RequestOptions {
    /// The query wins over a header when both are given. Unknown parameters are
    /// ignored, as curl users expect; a header that is not UTF-8 is an error.
    pub fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, BadOption> {
        let mut options = RequestOptions::default();
        let header = |name: &HeaderName, shown: &'static str| {
            headers.get(name).map(|value| value.to_str().map_err(|_| BadOption::NotUtf8(shown))).transpose()
        };
        if let Some(value) = header(&SPOUT_FILE, "Spout-File")? {
            options.file = Some(value.to_owned());
        }
        if let Some(value) = header(&SPOUT_WAIT, "Spout-Wait")? {
            options.wait = wait_value(value)?;
        }
        if let Some(value) = header(&SPOUT_FRAMING, "Spout-Framing")? {
            options.framing = Some(framing_value(value)?);
        }
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "file" => options.file = Some(value.into_owned()),
                "wait" => options.wait = wait_value(&value)?,
                "timeout" => {
                    let timeout = humantime::parse_duration(&value).map_err(|_| BadOption::Timeout(value.into()))?;
                    options.timeout = Some(timeout);
                }
                "framing" => options.framing = Some(framing_value(&value)?),
                _ => {}
            }
        }
        Ok(options)
    }
}

fn wait_value(value: &str) -> Result<Wait, BadOption> {
    match value {
        "commit" => Ok(Wait::Commit),
        "downstream" => Ok(Wait::Downstream),
        "" | "none" => Ok(Wait::None),
        other => Err(BadOption::Wait(other.to_owned())),
    }
}

fn framing_value(value: &str) -> Result<Named, BadOption> {
    value.trim().parse().map_err(|_| BadOption::Framing(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("spout-file", "from/header.txt".parse().unwrap());
        let options = RequestOptions::parse(Some("wait=commit&file=a%2Fb.json&x=1"), &headers).unwrap();
        assert_eq!(
            options,
            RequestOptions { file: Some("a/b.json".into()), wait: Wait::Commit, timeout: None, framing: None }
        );
        let options = RequestOptions::parse(Some("wait=downstream&timeout=1m30s"), &headers).unwrap();
        assert_eq!((options.wait, options.timeout), (Wait::Downstream, Some(Duration::from_secs(90))));
        assert_eq!(
            RequestOptions::parse(Some("timeout=soon"), &HeaderMap::new()).unwrap_err().to_string(),
            "timeout must be a duration such as `30s` or `500ms`, not `soon`"
        );
        let options = RequestOptions::parse(None, &headers).unwrap();
        assert_eq!(options.file.as_deref(), Some("from/header.txt"));
        assert_eq!(
            RequestOptions::parse(Some("wait=soon"), &HeaderMap::new()).unwrap_err().to_string(),
            "wait must be `commit`, `downstream` (or `none`), not `soon`"
        );
        let mut latin1 = HeaderMap::new();
        latin1.insert("spout-wait", hyper::header::HeaderValue::from_bytes(b"comm\xe9t").unwrap());
        assert_eq!(RequestOptions::parse(None, &latin1), Err(BadOption::NotUtf8("Spout-Wait")));
    }

    #[test]
    fn framing_by_query_or_header() {
        let mut headers = HeaderMap::new();
        headers.insert("spout-framing", "ndjson".parse().unwrap());
        assert_eq!(RequestOptions::parse(None, &headers).unwrap().framing, Some(Named::Ndjson));
        let options = RequestOptions::parse(Some("framing=json-array"), &headers).unwrap();
        assert_eq!(options.framing, Some(Named::JsonArray), "the query wins");
        for (name, named) in [("raw", Named::Raw), ("frames", Named::Frames), ("multipart", Named::Multipart)] {
            let options = RequestOptions::parse(Some(&format!("framing={name}")), &HeaderMap::new()).unwrap();
            assert_eq!(options.framing, Some(named));
        }
        assert_eq!(
            RequestOptions::parse(Some("framing=json"), &HeaderMap::new()).unwrap_err().to_string(),
            "framing must be one of raw, ndjson, frames, multipart, json-array, not `json`"
        );
    }
}
