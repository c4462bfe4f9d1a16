//! Which cores the server under test and the harness run on. A ratio is stable only
//! when the CPU split is fixed, and honest only when the client is not starved by
//! the server it measures: so by default, on a machine with two cores or more, the
//! servers the harness starts (sidecar, bare server, Python spout) get core 1 and the
//! harness itself (its client, `wrk`, the read-back) core 0.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;
use rustix::thread::{sched_setaffinity, CpuSet};
use serde::Serialize;

/// The cores this process may use as it starts: asked once, so the answer does not
/// shrink to the client's cores once the harness has pinned itself.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A list of CPUs: `1`, `0,2`, `2-3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Cpus(Vec<usize>);

impl std::str::FromStr for Cpus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| t.trim().parse::<usize>().map_err(|e| format!("`{t}` in `{s}`: {e}"));
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((lo, hi)) => cpus.extend(number(lo)?..=number(hi)?),
                None => cpus.push(number(part)?),
            }
        }
        if cpus.is_empty() || cpus.iter().any(|&c| c >= CpuSet::MAX_CPU) {
            return Err(format!("`{s}`: expected CPU numbers such as 1, 0,2 or 2-3"));
        }
        Ok(Cpus(cpus))
    }
}

impl std::fmt::Display for Cpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&list.join(","))
    }
}

impl Cpus {
    /// How many CPUs the list names (never none).
    pub fn count(&self) -> usize {
        self.0.len()
    }

    fn set(&self) -> CpuSet {
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu);
        }
        set
    }
}

/// The pinning options every command shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PinOptions {
    /// Pin nothing: servers and harness share every core as the scheduler likes.
    #[arg(long, global = true, conflicts_with_all = ["server_cpus", "client_cpus"])]
    pub no_pin: bool,

    /// Cores for the servers the harness starts (default: 1, on 2 cores or more).
    #[arg(long, global = true, value_name = "CPUS")]
    pub server_cpus: Option<Cpus>,

    /// Cores for the harness itself: its client, `wrk`, the read-back (default: 0).
    #[arg(long, global = true, value_name = "CPUS")]
    pub client_cpus: Option<Cpus>,
}

/// How a run was pinned, as reports say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pinning {
    pub server: Option<Cpus>,
    pub client: Option<Cpus>,
}

impl Pinning {
    pub const NONE: Pinning = Pinning { server: None, client: None };

    /// The pinning `options` ask for on a machine with `cores` cores (see [`cores`]).
    pub fn chosen(options: &PinOptions, cores: usize) -> Pinning {
        if options.no_pin {
            return Pinning::NONE;
        }
        let default = |cpu: usize| (cores >= 2).then(|| Cpus(vec![cpu]));
        Pinning {
            server: options.server_cpus.clone().or_else(|| default(1)),
            client: options.client_cpus.clone().or_else(|| default(0)),
        }
    }

    /// Pins the calling thread, before it starts any other, to the client cores: every
    /// thread of the harness, and every program it starts, inherits them.
    pub fn pin_harness(&self) -> anyhow::Result<()> {
        pin_calling_thread(self.client.as_ref(), "the harness to")
    }

    /// Moves the calling thread, and no other, to the server cores: for a baseline that
    /// plays the server inside the harness's process.
    pub fn pin_thread_to_server(&self) -> anyhow::Result<()> {
        pin_calling_thread(self.server.as_ref(), "a thread to the server's")
    }

    /// Makes `command` start on the server cores.
    pub fn pin_server(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some(cpus) = &self.server {
            let set = cpus.set();
            // SAFETY: between fork and exec the closure makes one system call and
            // allocates nothing, as `pre_exec` requires.
            unsafe {
                command.pre_exec(move || sched_setaffinity(None, &set).map_err(std::io::Error::from));
            }
        }
    }
}

/// Pins the calling thread (threads it starts later inherit it) to `cpus`, if any;
/// `whose` says in the error what was pinned to them.
fn pin_calling_thread(cpus: Option<&Cpus>, whose: &str) -> anyhow::Result<()> {
    match cpus {
        Some(cpus) => sched_setaffinity(None, &cpus.set()).with_context(|| format!("pinning {whose} CPUs {cpus}")),
        None => Ok(()),
    }
}

impl std::fmt::Display for Pinning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |cpus: &Option<Cpus>| cpus.as_ref().map_or("any CPU".to_owned(), |c| format!("CPU {c}"));
        match self {
            Pinning { server: None, client: None } => f.write_str("not pinned"),
            _ => write!(f, "server on {}, harness and client on {}", side(&self.server), side(&self.client)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!("1".parse(), Ok(Cpus(vec![1])));
        assert_eq!("0,2-3".parse(), Ok(Cpus(vec![0, 2, 3])));
        assert!("".parse::<Cpus>().is_err());
        assert!("a".parse::<Cpus>().is_err());
    }

    #[test]
    fn pinned_by_default_on_two_cores_only() {
        let defaults = PinOptions::default();
        let two = Pinning::chosen(&defaults, 2);
        assert_eq!((two.server, two.client), (Some(Cpus(vec![1])), Some(Cpus(vec![0]))));
        assert_eq!(Pinning::chosen(&defaults, 1), Pinning::NONE);
        let off = PinOptions { no_pin: true, ..PinOptions::default() };
        assert_eq!(Pinning::chosen(&off, 8).to_string(), "not pinned");
    }
}
