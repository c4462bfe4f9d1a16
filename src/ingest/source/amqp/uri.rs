//! The `amqp://` URI: where the broker is, as lapin reads it, and the source's own
//! options in the query (`queue`, `prefetch`, `window`), which lapin never sees.

use lapin::uri::AMQPUri;

use crate::ingest::source::BadSourceUri;

/// How many ids of committed messages are recalled, unless `window=` says.
pub const DEFAULT_WINDOW: usize = 10_000;

/// The query keys lapin itself reads (frame_max, heartbeat, …): passed on to it.
const LAPIN_KEYS: &[&str] = &["frame_max", "channel_max", "heartbeat", "connection_timeout", "auth_mechanism"];

/// An `amqp://` source as its URI configures it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What lapin connects to, credentials included.
    pub broker: AMQPUri,
    pub queue: String,
    /// `prefetch=`; `None`: derived from the memory budget when the source starts.
    pub prefetch: Option<u16>,
    /// `window=`: how many ids of committed messages are recalled.
    pub window: usize,
    /// The URI without its credentials.
    pub shown: String,
}

impl Settings {
    pub fn parse(uri: &str) -> Result<Self, BadSourceUri> {
        let bad = |why: String| BadSourceUri(format!("source `{}`: {why}", redacted(uri)));
        let url = url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        let mut queue = None;
        let mut prefetch = None;
        let mut window = DEFAULT_WINDOW;
        let mut passed = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url.query_pairs() {
            match &*key {
                "queue" if !value.is_empty() => queue = Some(value.into_owned()),
                "prefetch" => {
                    prefetch = Some(
                        value
                            .parse::<u16>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| bad(format!("prefetch={value} is not a count from 1 to 65535")))?,
                    )
                }
                "window" => {
                    window = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(format!("window={value} is not a positive count")))?
                }
                known if LAPIN_KEYS.contains(&known) => {
                    passed.append_pair(&key, &value);
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option `{key}` (expected queue, prefetch, window, {})",
                        LAPIN_KEYS.join(", ")
                    )))
                }
            }
        }
        let queue = queue.ok_or_else(|| bad("no queue: add ?queue=NAME".into()))?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host".into()))?;
        let mut bare = url.clone();
        let passed = passed.finish();
        bare.set_query((!passed.is_empty()).then_some(passed.as_str()));
        let mut broker: AMQPUri = bare.as_str().parse().map_err(bad)?;
        // lapin takes only a domain name as the host and would put `localhost` in
        // place of an IP address.
        broker.authority.host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let shown = format!("{}://{}:{}/{}?queue={queue}", url.scheme(), host, broker.authority.port, vhost_path(&url));
        Ok(Self { broker, queue, prefetch, window, shown })
    }

    /// The checkpoint stem: `amqp.QUEUE`, or `amqp.VHOST.QUEUE` off the default
    /// vhost, with anything but letters, digits, `-` and `_` made `_`.
    pub fn stem(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
        };
        match self.broker.vhost.as_str() {
            "/" | "" => format!("amqp.{}", clean(&self.queue)),
            vhost => format!("amqp.{}.{}", clean(vhost), clean(&self.queue)),
        }
    }
}

/// The vhost as the URI's path spells it (`%2f` for `/`).
fn vhost_path(url: &url::Url) -> &str {
    url.path().strip_prefix('/').unwrap_or("")
}

/// The URI with any password replaced, for error messages.
fn redacted(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_taken_out_and_the_rest_goes_to_lapin() {
        let s = Settings::parse("amqp://u:p%40ss@127.0.0.1:5673/%2f?queue=jobs&prefetch=50&heartbeat=10").unwrap();
        assert_eq!(s.queue, "jobs");
        assert_eq!(s.prefetch, Some(50));
        assert_eq!(s.window, DEFAULT_WINDOW);
        assert_eq!(s.broker.authority.host, "127.0.0.1");
        assert_eq!(s.broker.authority.port, 5673);
        assert_eq!(s.broker.authority.userinfo.password, "p@ss");
        assert_eq!(s.broker.vhost, "/");
        assert_eq!(s.broker.query.heartbeat, Some(10));
        assert_eq!(s.shown, "amqp://127.0.0.1:5673/%2f?queue=jobs");
        assert_eq!(s.stem(), "amqp.jobs");
    }

    #[test]
    fn defaults_and_stems() {
        let s = Settings::parse("amqp://rabbit/prod?queue=a.b/c&window=5").unwrap();
        assert_eq!(s.broker.authority.port, 5672);
        assert_eq!(s.prefetch, None);
        assert_eq!(s.window, 5);
        assert_eq!(s.stem(), "amqp.prod.a_b_c");
    }

    #[test]
    fn bad_uris_say_why_without_the_password() {
        let err = |uri: &str| Settings::parse(uri).unwrap_err().0;
        assert_eq!(err("amqp://u:secret@h/"), "source `amqp://u:***@h/`: no queue: add ?queue=NAME");
        assert!(err("amqp://h/?queue=q&prefetch=0").ends_with("prefetch=0 is not a count from 1 to 65535"));
        assert!(err("amqp://h/?queue=q&prefetch=70000").ends_with("prefetch=70000 is not a count from 1 to 65535"));
        assert!(err("amqp://h/?queue=q&window=x").ends_with("window=x is not a positive count"));
        assert!(err("amqp://h/?queue=q&durable=1").contains("unknown option `durable`"));
    }
}
