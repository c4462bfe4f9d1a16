//! Reads spout-sidecar command lines found in manifests with the binary's own option
//! parser: a flag the binary does not have, or a value it would refuse, fails here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::{CommandFactory, Parser};
use spout_sidecar::config::{Listen, Options};

/// The HTTP endpoints the sidecar serves; probes and scrapers may only name these.
pub const ENDPOINTS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/status"];

/// Parses `args` as the sidecar would, with the options `env` sets through their
/// `SPOUT_*` variables. Any other `SPOUT_*` variable is a mistake and fails, since the
/// sidecar would silently ignore it.
pub fn parse(args: &[String], env: &BTreeMap<String, String>, context: &str) -> Options {
    let mut argv = vec!["spout-sidecar".to_owned()];
    for (name, value) in env.iter().filter(|(name, _)| name.starts_with("SPOUT_")) {
        argv.extend(env_as_flag(name, value, context));
    }
    argv.extend(args.iter().cloned());
    Options::try_parse_from(&argv).unwrap_or_else(|e| panic!("{context}: spout-sidecar would refuse {argv:?}:\n{e}"))
}

/// `SPOUT_X=V` as the flag clap reads it from, so that a flag given both ways is caught
/// as given twice.
fn env_as_flag(name: &str, value: &str, context: &str) -> Vec<String> {
    let command = Options::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_env().is_some_and(|env| env == name))
        .unwrap_or_else(|| panic!("{context}: {name} is not an option of spout-sidecar"));
    let flag = format!("--{}", arg.get_long().expect("options with env are long flags"));
    if arg.get_action().takes_values() {
        vec![flag, value.to_owned()]
    } else if matches!(value, "true" | "1") {
        vec![flag]
    } else {
        Vec::new()
    }
}

/// The TCP port the sidecar listens on.
pub fn port(options: &Options, context: &str) -> u16 {
    match &options.listen {
        Listen::Tcp(addr) => addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("{context}: --listen {addr} has no port")),
        Listen::None => panic!("{context}: --listen none, but the manifest expects HTTP"),
    }
}

/// Listening beyond loopback opens the API to the cluster: the sidecar refuses that
/// without a token (or --allow-unauthenticated), and the manifests always mean to set one.
pub fn assert_authenticated_if_exposed(options: &Options, context: &str) {
    let Listen::Tcp(addr) = &options.listen else {
        return;
    };
    let loopback = match addr.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => addr.starts_with("localhost:"),
    };
    assert!(loopback || options.auth_token_file.is_some(), "{context}: listens on {addr} without --auth-token-file");
}
