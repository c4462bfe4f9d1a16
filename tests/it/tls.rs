//! HTTPS on the TCP port (`--tls-cert`, `--tls-key`), spoken to by curl with the
//! test's own CA: HTTP/2 by ALPN and HTTP/1.1, the exposure rule (TLS is no token),
//! certificates that do not load, and a reload on SIGHUP under load that loses no
//! message, keeps open connections, and keeps the old certificate when the new one
//! is broken.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustix::process::Signal;

use crate::support::client;
use crate::support::curl::{self, Transfer};
use crate::support::sidecar::{dir_payloads, eventually, Sidecar, BIN};

/// A CA of the test's own and the server certificates it issues.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "spout test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir: dir.to_owned(), ca }
    }

    pub fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A certificate for 127.0.0.1 and localhost whose common name is `name`: the
    /// PEM texts of the certificate and its key.
    fn issue(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues `name` into cert.pem and key.pem, the files the sidecar is given,
    /// replacing each by a rename so that no reader sees half a file.
    pub fn install(&self, name: &str) -> (String, String) {
        let (cert, key) = self.issue(name);
        self.replace("cert.pem", &cert);
        self.replace("key.pem", &key);
        (self.dir.join("cert.pem").display().to_string(), self.dir.join("key.pem").display().to_string())
    }

    fn replace(&self, file: &str, text: &str) {
        let staged = self.dir.join(format!("{file}.new"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(staged, self.dir.join(file)).unwrap();
    }
}

fn start(dir: &Path, pki: &Pki, extra: &[&str]) -> Sidecar {
    let (cert, key) = pki.install("first");
    let sink = format!("dir:{}", dir.join("out").display());
    let mut args = vec!["--sink", &sink, "--max-batch-age", "50ms", "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    Sidecar::start(&args)
}

/// The common name of the certificate a new connection is served, as curl shows it.
fn served_name(sidecar: &Sidecar, pki: &Pki) -> String {
    let url = format!("https://{}/healthz", sidecar.addr);
    let out = Command::new("curl").args(["-sS", "-v", "-o", "/dev/null", "--cacert", &pki.ca_file(), &url]).output();
    let verbose = String::from_utf8_lossy(&out.expect("curl runs").stderr).into_owned();
    let subject = verbose.lines().find_map(|line| line.split("subject: ").nth(1));
    let name = subject.and_then(|s| s.split("CN=").nth(1)).map(|cn| cn.split([',', '/']).next().unwrap().trim());
    name.unwrap_or_else(|| panic!("curl -v shows no subject:\n{verbose}")).to_owned()
}

#[test]
fn https_answers_over_h2_by_alpn_and_over_http_1_1() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let sidecar = start(tmp.path(), &pki, &[]);
    let url = format!("https://{}/messages?wait=commit", sidecar.addr);
    let ca = pki.ca_file();
    let h2 = curl::one(&["--cacert", &ca, "--data-binary", "over h2", &url]);
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "ALPN picks h2: {h2:?}");
    let h1 = curl::one(&["--cacert", &ca, "--http1.1", "--data-binary", "over http/1.1", &url]);
    assert_eq!((h1.status, h1.version.as_str()), (200, "1.1"), "{h1:?}");
    let untrusted = curl::one(&["--data-binary", "refused by the client", &url]);
    assert_eq!(untrusted.status, 0, "a client without the CA does not trust the test certificate: {untrusted:?}");
    let plain = curl::one(&["--data-binary", "not TLS", &format!("http://{}/messages", sidecar.addr)]);
    assert_ne!(plain.status, 202, "plain HTTP on the TLS port is not served: {plain:?}");
    assert_eq!(dir_payloads(&tmp.path().join("out")), [b"over h2".to_vec(), b"over http/1.1".to_vec()]);
    assert_eq!(served_name(&sidecar, &pki), "first");
}

fn exits_2(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).env_remove("SPOUT_AUTH_TOKEN_FILE").output().expect("the sidecar runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?} must exit 2: {stderr}");
    stderr
}

#[test]
fn tls_is_no_token_and_files_that_do_not_load_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (cert, key) = pki.install("first");
    let sink = format!("dir:{}", tmp.path().join("out").display());
    let stderr = exits_2(&["--listen", "0.0.0.0:0", "--sink", &sink, "--tls-cert", &cert, "--tls-key", &key]);
    assert!(stderr.contains("reachable from other hosts"), "{stderr}");

    let (_, other_key) = pki.issue("other");
    let mismatched = tmp.path().join("other.key");
    std::fs::write(&mismatched, other_key).unwrap();
    let mismatched = mismatched.display().to_string();
    let stderr = exits_2(&["--listen", "127.0.0.1:0", "--sink", &sink, "--tls-cert", &cert, "--tls-key", &mismatched]);
    assert!(stderr.contains(&format!("--tls-cert {cert} with --tls-key {mismatched}")), "{stderr}");
    let stderr = exits_2(&["--listen", "127.0.0.1:0", "--sink", &sink, "--tls-cert", &key, "--tls-key", &key]);
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    let stderr = exits_2(&["--listen", "127.0.0.1:0", "--sink", &sink, "--tls-cert", &cert]);
    assert!(stderr.contains("--tls-key"), "one without the other: {stderr}");
}

/// Runs `requests` wait=commit POSTs one after another on one connection (curl
/// keeps it open between transfers), each body `{tag} {n}`.
fn sequential(addr: &str, ca: &str, tag: &str, requests: usize, http1: bool) -> std::thread::JoinHandle<Vec<Transfer>> {
    let url = format!("https://{addr}/messages?wait=commit");
    let mut args: Vec<String> = Vec::new();
    for n in 0..requests {
        if n > 0 {
            args.push("--next".into());
        }
        args.extend(["--cacert".into(), ca.to_owned(), "--data-binary".into(), format!("{tag} {n}"), url.clone()]);
        if http1 {
            args.push("--http1.1".into());
        }
    }
    std::thread::spawn(move || curl::run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

#[test]
fn sighup_reloads_the_certificate_under_load_losing_nothing_and_keeping_open_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let mut sidecar = start(tmp.path(), &pki, &[]);
    let ca = pki.ca_file();
    // Each request waits for its commit (--max-batch-age 50ms): the loads run for
    // seconds, across both reloads.
    let loads: Vec<_> = [("h2-a", false), ("h2-b", false), ("h1", true)]
        .into_iter()
        .map(|(tag, http1)| (tag, sequential(&sidecar.addr, &ca, tag, 80, http1)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    pki.install("second");
    sidecar.signal(Signal::HUP);
    eventually(Duration::from_secs(10), "the reload logged", || {
        sidecar.log().contains("reloaded the TLS").then_some(())
    });
    assert_eq!(served_name(&sidecar, &pki), "second", "a new connection gets the new certificate");

    std::fs::write(tmp.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    sidecar.signal(Signal::HUP);
    eventually(Duration::from_secs(10), "the failed reload logged", || {
        sidecar.log().contains("still serving the certificate loaded before").then_some(())
    });
    assert_eq!(served_name(&sidecar, &pki), "second", "a broken pair keeps the certificate in use");

    let mut sent = Vec::new();
    for (tag, load) in loads {
        let transfers = load.join().unwrap();
        assert_eq!(transfers.len(), 80, "{tag}: {transfers:?}");
        assert!(transfers.iter().all(|t| t.status == 200), "{tag}: every request committed: {transfers:?}");
        let connects: u32 = transfers.iter().map(|t| t.connects).sum();
        assert_eq!(connects, 1, "{tag}: one connection throughout, not dropped by the reloads");
        sent.extend((0..80).map(|n| format!("{tag} {n}").into_bytes()));
    }
    sent.sort();
    assert_eq!(dir_payloads(&tmp.path().join("out")), sent, "every answered message committed, once");
    assert!(sidecar.child.try_wait().unwrap().is_none(), "SIGHUP does not stop the sidecar");
}

/// A client stuck in the TLS handshake is closed after --header-timeout, like one
/// that sends no request.
#[test]
fn a_stalled_handshake_is_closed_after_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let sidecar = start(tmp.path(), &pki, &["--header-timeout", "1s"]);
    // The 5-byte header of a TLS record announcing a ClientHello that never comes.
    let waited = client::time_until_closed(&sidecar.addr, &[0x16, 0x03, 0x01, 0x02, 0x00]);
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before --header-timeout");
}
