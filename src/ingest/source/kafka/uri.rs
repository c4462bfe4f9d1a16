//! The `kafka://` URI: brokers, topic and the options a Kafka user expects, checked
//! at start-up so that a typo exits 2 with the reason instead of reading something
//! else than meant.
//!
//! `kafka://[USER:PASS@]HOST:PORT[,HOST:PORT…]/TOPIC[?OPTIONS]`, options:
//! `partitions=0,2`, `start=earliest|latest`, `max.partition.fetch.bytes=N`,
//! `security.protocol=PLAINTEXT|SASL_PLAINTEXT|SSL|SASL_SSL`, `ssl.ca.location=PATH`,
//! `sasl.mechanism=PLAIN|SCRAM-SHA-256|SCRAM-SHA-512`.
//! Credentials come from the userinfo, else `SPOUT_KAFKA_USERNAME`/`SPOUT_KAFKA_PASSWORD`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use crate::ingest::source::BadSourceUri;

/// The environment variables the SASL credentials are read from when the URI has none.
pub const USERNAME_VAR: &str = "SPOUT_KAFKA_USERNAME";
pub const PASSWORD_VAR: &str = "SPOUT_KAFKA_PASSWORD";

/// What a `kafka://` URI says.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaUri {
    /// `host:port` of each bootstrap broker.
    pub brokers: Vec<String>,
    pub topic: String,
    /// The partitions this replica reads; `None`: every partition of the topic.
    pub partitions: Option<BTreeSet<i32>>,
    pub start: Start,
    /// The most bytes one fetch of one partition asks for: with one fetch in flight
    /// per partition, what the client holds before the buffer takes it.
    pub fetch_bytes: i32,
    pub sasl: Option<Sasl>,
    /// TLS to the brokers (`SSL`, `SASL_SSL`).
    pub tls: Option<Tls>,
    /// The query as given, for `describe`.
    query: String,
}

/// Shows the URI without credentials.
impl std::fmt::Debug for KafkaUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Where a partition with no checkpoint begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// TLS to the brokers: whom to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// `ssl.ca.location`: a PEM file of the certificates to trust; without it, the
    /// system's.
    pub ca: Option<PathBuf>,
}

/// SASL authentication: mechanism and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

/// Kafka's own default for `max.partition.fetch.bytes`.
const DEFAULT_FETCH_BYTES: i32 = 1 << 20;

impl KafkaUri {
    /// Parses `uri`; `env` looks up the credentials' environment variables.
    pub fn parse(uri: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, BadSourceUri> {
        let bad = |why: String| BadSourceUri(format!("bad --source `{}`: {why}", redacted(uri)));
        let rest = uri.strip_prefix("kafka://").ok_or_else(|| bad("it does not start with kafka://".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, topic) = rest.split_once('/').ok_or_else(|| bad("it names no /TOPIC".into()))?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let brokers = hosts.split(',').map(|host| broker(host).map_err(&bad)).collect::<Result<Vec<_>, _>>()?;
        let topic = decode(topic);
        if !valid_topic(&topic) {
            return Err(bad(format!(
                "`{topic}` is not a Kafka topic name (1 to 249 of [A-Za-z0-9._-], not `.` or `..`)"
            )));
        }
        let mut parsed = KafkaUri {
            brokers,
            topic,
            partitions: None,
            start: Start::Earliest,
            fetch_bytes: DEFAULT_FETCH_BYTES,
            sasl: None,
            tls: None,
            query: query.to_owned(),
        };
        let mut protocol = "PLAINTEXT".to_owned();
        let mut mechanism = None;
        let mut ca = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "partitions" => parsed.partitions = Some(partitions(&value).map_err(&bad)?),
                "start" => {
                    parsed.start = match &*value {
                        "earliest" => Start::Earliest,
                        "latest" => Start::Latest,
                        other => return Err(bad(format!("start=`{other}`: expected earliest or latest"))),
                    }
                }
                "max.partition.fetch.bytes" => {
                    parsed.fetch_bytes = value.parse().ok().filter(|n| *n >= 1024).ok_or_else(|| {
                        bad(format!("max.partition.fetch.bytes=`{value}`: expected a number of bytes, at least 1024"))
                    })?
                }
                "security.protocol" => protocol = value.to_ascii_uppercase(),
                "sasl.mechanism" => mechanism = Some(value.into_owned()),
                "ssl.ca.location" => ca = Some(PathBuf::from(&*value)),
                "group" | "group.id" => {
                    return Err(bad(format!(
                        "{key}=: committing offsets to a consumer group is not supported (the client, rskafka, \
                         has no OffsetCommit); each replica reads the partitions= it is given, and the lag is \
                         exported as spout_source_lag_messages"
                    )))
                }
                other => {
                    return Err(bad(format!(
                        "unknown option `{other}`: expected partitions, start, max.partition.fetch.bytes, \
                         security.protocol, ssl.ca.location, sasl.mechanism"
                    )))
                }
            }
        }
        let (authenticated, encrypted) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SASL_PLAINTEXT" => (true, false),
            "SSL" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                return Err(bad(format!(
                    "security.protocol=`{other}`: expected PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL"
                )));
            }
        };
        if !authenticated && (mechanism.is_some() || userinfo.is_some()) {
            let with_sasl = if encrypted { "SASL_SSL" } else { "SASL_PLAINTEXT" };
            return Err(bad(format!(
                "credentials or sasl.mechanism given with security.protocol={protocol}: use {with_sasl}"
            )));
        }
        if !encrypted && ca.is_some() {
            return Err(bad(format!("ssl.ca.location given with security.protocol={protocol}: use SSL or SASL_SSL")));
        }
        parsed.sasl = authenticated.then(|| sasl(mechanism.as_deref(), userinfo, &env)).transpose().map_err(&bad)?;
        parsed.tls = encrypted.then_some(Tls { ca });
        Ok(parsed)
    }

    /// The URI without credentials.
    pub fn describe(&self) -> String {
        let query = if self.query.is_empty() { String::new() } else { format!("?{}", self.query) };
        format!("kafka://{}/{}{query}", self.brokers.join(","), self.topic)
    }
}

/// What the userinfo would show, hidden: for errors about a URI that may hold a password.
fn redacted(uri: &str) -> String {
    let Some(rest) = uri.strip_prefix("kafka://") else { return uri.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("kafka://***@{}", &rest[at + 1..]),
        None => uri.to_owned(),
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn broker(host: &str) -> Result<String, String> {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(host.to_owned()),
        _ => Err(format!("broker `{host}` is not HOST:PORT")),
    }
}

/// Kafka's rule for topic names (`Topic.validate`).
fn valid_topic(topic: &str) -> bool {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !topic.is_empty() && topic.len() <= 249 && topic != "." && topic != ".." && topic.chars().all(legal)
}

fn partitions(list: &str) -> Result<BTreeSet<i32>, String> {
    let set: BTreeSet<i32> = list
        .split(',')
        .map(|p| p.trim().parse::<i32>().ok().filter(|p| *p >= 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("partitions=`{list}`: expected partition numbers separated by commas"))?;
    Ok(set)
}

fn sasl(mechanism: Option<&str>, userinfo: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Sasl, String> {
    let mechanism = match mechanism.unwrap_or("PLAIN").to_ascii_uppercase().as_str() {
        "PLAIN" => Mechanism::Plain,
        "SCRAM-SHA-256" => Mechanism::ScramSha256,
        "SCRAM-SHA-512" => Mechanism::ScramSha512,
        other => return Err(format!("sasl.mechanism=`{other}`: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")),
    };
    let (username, password) = match userinfo {
        Some(userinfo) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (decode(user), decode(pass))
        }
        None => (env(USERNAME_VAR).unwrap_or_default(), env(PASSWORD_VAR).unwrap_or_default()),
    };
    if username.is_empty() || password.is_empty() {
        return Err(format!(
            "SASL needs a user name and a password: in the URI (kafka://USER:PASS@HOST:PORT/TOPIC) or in \
             {USERNAME_VAR} and {PASSWORD_VAR}"
        ));
    }
    Ok(Sasl { mechanism, username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<KafkaUri, String> {
        KafkaUri::parse(uri, |_| None).map_err(|e| e.0)
    }

    #[test]
    fn brokers_topic_and_defaults() {
        let uri = parse("kafka://k1:9092,k2:9093/orders").unwrap();
        assert_eq!(uri.brokers, ["k1:9092", "k2:9093"]);
        assert_eq!(uri.topic, "orders");
        assert_eq!((&uri.partitions, uri.start, uri.fetch_bytes), (&None, Start::Earliest, 1 << 20));
        assert!(uri.sasl.is_none());
        assert_eq!(uri.describe(), "kafka://k1:9092,k2:9093/orders");
    }

    #[test]
    fn options() {
        let uri = parse("kafka://k:9092/t?partitions=2,0&start=latest&max.partition.fetch.bytes=4096").unwrap();
        assert_eq!(uri.partitions, Some(BTreeSet::from([0, 2])));
        assert_eq!((uri.start, uri.fetch_bytes), (Start::Latest, 4096));
        assert_eq!(uri.describe(), "kafka://k:9092/t?partitions=2,0&start=latest&max.partition.fetch.bytes=4096");
    }

    #[test]
    fn sasl_from_the_userinfo_or_the_environment_and_never_shown() {
        let uri = parse("kafka://me:s%40cret@k:9092/t?security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-512");
        let uri = uri.unwrap();
        let sasl = uri.sasl.clone().unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str(), sasl.password.as_str()),
            (Mechanism::ScramSha512, "me", "s@cret")
        );
        assert!(!uri.describe().contains("me:") && !uri.describe().contains("cret"), "{}", uri.describe());
        let env = |var: &str| Some(format!("from-{var}"));
        let uri = KafkaUri::parse("kafka://k:9092/t?security.protocol=SASL_PLAINTEXT", env).unwrap();
        let sasl = uri.sasl.unwrap();
        assert_eq!((sasl.mechanism, sasl.username.as_str()), (Mechanism::Plain, "from-SPOUT_KAFKA_USERNAME"));
        let missing = parse("kafka://k:9092/t?security.protocol=SASL_PLAINTEXT").unwrap_err();
        assert!(missing.contains("SASL needs a user name and a password"), "{missing}");
    }

    #[test]
    fn tls_with_or_without_sasl() {
        let uri = parse("kafka://k:9093/t?security.protocol=SSL&ssl.ca.location=/etc/ca.pem").unwrap();
        assert_eq!(uri.tls, Some(Tls { ca: Some("/etc/ca.pem".into()) }));
        assert!(uri.sasl.is_none());
        let uri = parse("kafka://u:p@k:9093/t?security.protocol=sasl_ssl").unwrap();
        assert_eq!(uri.tls, Some(Tls { ca: None }));
        assert_eq!(uri.sasl.map(|s| (s.mechanism, s.username)), Some((Mechanism::Plain, "u".into())));
        assert!(parse("kafka://k:9092/t").unwrap().tls.is_none());
    }

    #[test]
    fn refusals_say_why_and_hide_the_password() {
        let cases = [
            ("kafka://k:9092", "names no /TOPIC"),
            ("kafka://k/t", "broker `k` is not HOST:PORT"),
            ("kafka://k:9092/a b", "is not a Kafka topic name"),
            ("kafka://k:9092/t?partitions=a", "partitions=`a`"),
            ("kafka://k:9092/t?start=now", "start=`now`"),
            ("kafka://k:9092/t?group=g", "group=: committing offsets to a consumer group is not supported"),
            ("kafka://u:p@k:9092/t?security.protocol=SSL", "use SASL_SSL"),
            ("kafka://k:9092/t?ssl.ca.location=/ca.pem", "use SSL or SASL_SSL"),
            ("kafka://k:9092/t?security.protocol=TLS", "expected PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL"),
            ("kafka://k:9092/t?sasl.mechanism=GSSAPI&security.protocol=SASL_PLAINTEXT", "sasl.mechanism=`GSSAPI`"),
            ("kafka://u:pw@k:9092/t", "use SASL_PLAINTEXT"),
            ("kafka://k:9092/t?linger=1", "unknown option `linger`"),
        ];
        for (uri, why) in cases {
            let error = parse(uri).unwrap_err();
            assert!(error.contains(why), "{uri}: {error}");
            assert!(!error.contains("pw@"), "{error}");
        }
    }
}
