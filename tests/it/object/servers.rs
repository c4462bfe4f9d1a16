//! Real local object-store servers for the object sink tests, started and stopped
//! by each test: `moto_server` (PyPI `moto[server]`, tests/requirements.txt) for
//! S3, Azurite (npm `azurite`, installed by .ci/run) for Azure, a TCP proxy that a
//! test can kill and restart, and a reader that checks what the sink committed
//! through a client of its own.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

pub const REGION: &str = "us-east-1";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `moto_server` on its own port, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// Starts it pinned to the CPUs `cpus` (as `taskset -c` takes them), for benchmarks.
    pub fn start_on(cpus: Option<&str>) -> Self {
        let port = free_port();
        let mut command = match cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus, "moto_server"]);
                taskset
            }
            None => Command::new("moto_server"),
        };
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install -r tests/requirements.txt)");
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET", "/", b"").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// The server's process id (`taskset` execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let status = http(self.port, "PUT", &format!("/{bucket}"), b"").expect("moto answers");
        assert_eq!(status, 200, "creating bucket {bucket}");
    }

    /// moto's switch for checking credentials: after `free` more requests, every
    /// request must be signed with a key moto's IAM knows.
    pub fn check_credentials_after(&self, free: u64) {
        let status = http(self.port, "POST", "/moto-api/reset-auth", free.to_string().as_bytes()).unwrap();
        assert_eq!(status, 200, "moto reset-auth");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request; the status, or None if nothing answered.
fn http(port: u16, method: &str, target: &str, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    String::from_utf8_lossy(&answer).split_whitespace().nth(1)?.parse().ok()
}

/// The environment the sidecar (and the reader) use for moto: any key is taken
/// until moto is told to check them.
pub fn s3_env(command: &mut Command) {
    command
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_ALLOW_HTTP", "true");
}

/// Azurite's blob service on its own port, in memory, killed when dropped. Its
/// account is the emulator's well-known `devstoreaccount1`.
pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("azurite-blob")
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--inMemoryPersistence"])
            // Azurite refuses API versions newer than its own; the SDKs move faster.
            .args(["--skipApiVersionCheck", "--silent"])
            // Whatever it writes besides (its debug log) stays out of the tree.
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob (npm install -g azurite)");
        let azurite = Self { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET", "/", b"").is_none() {
            assert!(Instant::now() < deadline, "azurite did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        azurite
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a container with Azure's own Python SDK (object_store cannot).
    pub fn create_container(&self, name: &str) {
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};\
             AccountKey={AZURITE_KEY};BlobEndpoint={}/{AZURITE_ACCOUNT};').create_container('{name}')\n",
            self.url()
        );
        let status = crate::support::python::command().args(["-c", &script]).status().expect("python");
        assert!(status.success(), "creating container {name} (pip install -r tests/requirements.txt)");
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `target` that can be killed (listener closed, every connection
/// cut) and restarted on the same port: to the sidecar, the server died.
pub struct Proxy {
    pub port: u16,
    target: u16,
    alive: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: u16) -> Self {
        let mut proxy = Self {
            port: free_port(),
            target,
            alive: Arc::new(AtomicBool::new(false)),
            connections: Arc::default(),
            acceptor: None,
        };
        proxy.restart();
        proxy
    }

    pub fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("rebinding the proxy port");
        listener.set_nonblocking(true).unwrap();
        self.alive.store(true, Ordering::SeqCst);
        let (alive, connections, target) = (self.alive.clone(), self.connections.clone(), self.target);
        self.acceptor = Some(std::thread::spawn(move || {
            while alive.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                        let mut kept = connections.lock().unwrap();
                        kept.push(client.try_clone().unwrap());
                        kept.push(server.try_clone().unwrap());
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Closes the port and cuts every connection, in the middle of whatever it carried.
    pub fn kill(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A commit as the store holds it: its manifest and each object's stored bytes.
#[derive(Debug)]
pub struct StoredCommit {
    pub manifest: Value,
    /// (key, stored bytes), in the manifest's order.
    pub objects: Vec<(String, Vec<u8>)>,
}

/// Reads every commit under `dir` of `bucket`, checking the rules a reader relies
/// on: each manifest's objects exist with the size and SHA-256 it names, and its
/// prefix holds exactly those objects and the manifest.
pub fn read_commits(endpoint: &str, bucket: &str, dir: &str) -> Vec<StoredCommit> {
    read_store_commits(&reader(endpoint, bucket), dir)
}

/// [`read_commits`] from any store.
pub fn read_store_commits(store: &dyn ObjectStore, dir: &str) -> Vec<StoredCommit> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let keys: Vec<String> =
            store.list(Some(&Path::from(dir))).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
        let mut commits = Vec::new();
        for manifest_key in keys.iter().filter(|k| k.ends_with("/_SPOUT_COMMIT.json")) {
            let prefix = manifest_key.strip_suffix("_SPOUT_COMMIT.json").unwrap();
            let manifest: Value = serde_json::from_slice(&get(store, manifest_key).await).unwrap();
            let mut listed: BTreeSet<&str> =
                keys.iter().map(String::as_str).filter(|k| k.starts_with(prefix) && k != manifest_key).collect();
            let mut objects = Vec::new();
            for entry in manifest["objects"].as_array().unwrap() {
                let key = entry["key"].as_str().unwrap();
                assert!(listed.remove(key), "{manifest_key} names {key}, which is not in the store (or twice)");
                let bytes = get(store, key).await;
                assert_eq!(bytes.len() as u64, entry["size"].as_u64().unwrap(), "size of {key}");
                let crc = format!("{:08x}", crc32c::crc32c(&bytes));
                assert_eq!(crc, entry["crc32c"].as_str().unwrap(), "crc32c of {key}");
                objects.push((key.to_owned(), bytes));
            }
            assert!(listed.is_empty(), "{prefix} holds objects its manifest does not name: {listed:?}");
            commits.push(StoredCommit { manifest, objects });
        }
        commits.sort_by(|a, b| a.manifest["commit"].as_str().cmp(&b.manifest["commit"].as_str()));
        commits
    })
}

/// A client of its own for reading back: not the sidecar's.
pub fn reader(endpoint: &str, bucket: &str) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_endpoint(format!("http://{endpoint}"))
        .with_allow_http(true)
        .with_region(REGION)
        .with_bucket_name(bucket)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap()
}

async fn get(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    store.get(&Path::parse(key).unwrap()).await.unwrap().bytes().await.unwrap().to_vec()
}
