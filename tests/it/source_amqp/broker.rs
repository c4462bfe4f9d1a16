//! A private RabbitMQ (Debian's `rabbitmq-server`, installed by `cargo xtask test`)
//! for the `amqp://` source tests: one for the whole test run, on free loopback
//! ports, its node, data and logs in a temporary directory, started by the first
//! test that asks; each test declares queues of its own. A watchdog shell, in a
//! process group of its own, holds a pipe from this process and, once the pipe closes
//! (the test process ended, however it ended), kills the broker and its epmd and
//! removes the directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::object::servers::free_port;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    _connection: Connection,
    /// Its stdin closes when the test process exits: it then stops the broker.
    _watchdog: Mutex<Child>,
}

/// The broker, or why it did not start: every test that asks fails with that at
/// once rather than try again.
static BROKER: OnceLock<Result<Broker, String>> = OnceLock::new();

/// The shared broker, started on first use.
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(Broker::start).as_ref().unwrap_or_else(|why| panic!("{why}"))
}

impl Broker {
    fn start() -> Result<Self, String> {
        if !Path::new(SERVER).exists() {
            return Err("the amqp:// tests run Debian's rabbitmq-server; `cargo xtask test` installs it".into());
        }
        let dir = tempfile::Builder::new().prefix("spout-rabbitmq-").tempdir().unwrap().keep();
        let port = free_port();
        let env = vec![
            ("HOME", dir.display().to_string()),
            ("RABBITMQ_NODENAME", format!("spout-{}@localhost", std::process::id())),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("ERL_EPMD_PORT", free_port().to_string()),
            ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").display().to_string()),
            ("RABBITMQ_LOG_BASE", dir.join("log").display().to_string()),
            ("RABBITMQ_PID_FILE", dir.join("pid").display().to_string()),
            ("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq").display().to_string()),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins").display().to_string()),
        ];
        std::fs::write(dir.join("rabbitmq.conf"), "").unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // epmd stays while the node it serves is alive: kill it once the node is gone.
        let script = "\"$SERVER\" >\"$HOME/server.log\" 2>&1 & cat >/dev/null; \
             node=$(cat \"$RABBITMQ_PID_FILE\" 2>/dev/null); kill -9 $node 2>/dev/null; \
             while [ -n \"$node\" ] && kill -0 $node 2>/dev/null; do sleep 0.1; done; \
             epmd -kill >/dev/null 2>&1; rm -rf \"$HOME\"";
        let mut watchdog = Command::new("sh")
            .args(["-c", script])
            // Its own process group: a signal to the test run's group (a timeout
            // killing it) must leave the watchdog to clean up after it.
            .process_group(0)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SERVER", SERVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let deadline = Instant::now() + Duration::from_secs(90);
        let connection = loop {
            match runtime.block_on(Connection::connect(&url, ConnectionProperties::default())) {
                Ok(connection) => break connection,
                Err(error) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    // Its stdin closed, the watchdog stops the broker and ends.
                    drop(watchdog.stdin.take());
                    let _ = watchdog.wait();
                    return Err(format!("rabbitmq-server did not answer on {port} in 90 s: {error}\n{log}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        let channel = runtime.block_on(connection.create_channel()).unwrap();
        runtime.block_on(channel.confirm_select(ConfirmSelectOptions::default())).unwrap();
        Ok(Self { port, dir, env, runtime, channel, _connection: connection, _watchdog: Mutex::new(watchdog) })
    }

    /// The `--source` URI of `queue`, with `options` (`&prefetch=…`) appended.
    pub fn uri(&self, queue: &str, options: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?queue={queue}{options}", self.port)
    }

    /// Declares a durable queue named after the test, empty.
    pub fn queue(&self, name: &str) -> String {
        let name = format!("{name}-{}", fastrand::u32(..));
        self.runtime
            .block_on(self.channel.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            ))
            .unwrap();
        name
    }

    /// Publishes each (message-id, body) persistently and waits for the broker's
    /// confirms.
    pub fn publish(&self, queue: &str, messages: impl IntoIterator<Item = (Option<String>, Vec<u8>)>) {
        self.runtime.block_on(async {
            let mut confirms = Vec::new();
            for (id, body) in messages {
                let mut properties = BasicProperties::default().with_delivery_mode(2);
                if let Some(id) = id {
                    properties = properties.with_message_id(id.into());
                }
                let confirm = self
                    .channel
                    .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, properties)
                    .await
                    .unwrap();
                confirms.push(confirm);
            }
            for confirm in confirms {
                assert!(confirm.await.unwrap().is_ack(), "the broker took the message");
            }
        });
    }

    /// What `rabbitmqctl ARGS` prints.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(CTL).args(args).envs(self.env.iter().map(|(k, v)| (*k, v.as_str()))).output();
        let out = out.expect("rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Closes every client connection but the tests' own, as an operator would.
    pub fn close_connections_of(&self, user_name: &str) {
        for line in self.ctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"]).lines() {
            if line.contains(user_name) {
                let pid = line.split_whitespace().next().unwrap();
                self.ctl(&["close_connection", pid, "closed by the test"]);
            }
        }
    }

    /// (ready, unacknowledged) messages of `queue`, as `rabbitmqctl` reports them.
    pub fn depth(&self, queue: &str) -> (u64, u64) {
        let text =
            self.ctl(&["list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"]);
        let line = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f.first() == Some(&queue));
        let fields = line.unwrap_or_else(|| panic!("rabbitmqctl lists no {queue}: {text}{}", self.dir.display()));
        (fields[1].parse().unwrap(), fields[2].parse().unwrap())
    }

    /// Polls until `queue` has nothing ready or unacknowledged.
    pub fn wait_empty(&self, queue: &str, timeout: Duration) {
        crate::support::sidecar::eventually(timeout, &format!("queue {queue} to empty"), || {
            (self.depth(queue) == (0, 0)).then_some(())
        });
    }
}
