//! Curves of how cost grows: sweeps over message size, connections and a stalled
//! reader's backlog, each point a full sidecar run (read back and checked like any
//! other) beside its baseline measured in the same run, written as JSON for `plot`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::baselines;
use crate::load::Sizes;
use crate::report::{self, Report};
use crate::run;
use crate::scenario::{Harness, Scenario, Sink};
use crate::suite::Machine;

/// What a curve sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sweep {
    /// Message size, 100 B to 4 MiB, single-message POSTs into `fifo:`.
    Size,
    /// Keep-alive connections, 1 to 1024, 100 B POSTs into `fifo:`.
    Connections,
    /// Seconds the FIFO reader stalls while load goes on: peak RSS against the budget.
    Backlog,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CurvesOptions {
    /// How long each point's load lasts (a backlog point's: this long after the
    /// reader wakes).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Run only these sweeps (repeat the option for several).
    #[arg(long, value_enum)]
    pub only: Vec<Sweep>,

    /// Three points a sweep, the backlog's stalls 0 and 1 s: proves the pipeline,
    /// measures little.
    #[arg(long)]
    pub quick: bool,

    /// Connections of the size sweep, for the sidecar and the bare server alike.
    #[arg(long, default_value_t = 16)]
    pub size_connections: usize,

    /// The sidecar's --max-buffer-bytes in the backlog sweep: the line its peak RSS
    /// is drawn against.
    #[arg(long, default_value = "64MiB", value_parser = crate::scenario::size)]
    pub backlog_budget: u64,
}

/// One point: the sweep's value, the sidecar's run there and its baseline's.
#[derive(Debug, Serialize)]
pub struct Point {
    pub x: f64,
    pub sidecar: Report,
    /// The bare hyper server with the same load (none for the backlog, whose
    /// baseline is the budget).
    pub baseline: Option<Report>,
}

#[derive(Debug, Serialize)]
pub struct Curve {
    pub sweep: Sweep,
    /// `--max-buffer-bytes` of the backlog sweep.
    pub budget_bytes: Option<u64>,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct CurvesReport {
    pub machine: Machine,
    /// `/proc/loadavg` when the sweeps ended: how noisy the machine was.
    pub load_average: Option<String>,
    pub curves: Vec<Curve>,
    /// Points that failed, or lost, duplicated or damaged a message.
    pub failures: Vec<String>,
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

impl Sweep {
    fn values(self, quick: bool) -> Vec<usize> {
        match (self, quick) {
            (Sweep::Size, false) => vec![100, KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB],
            (Sweep::Size, true) => vec![100, 64 * KIB, MIB],
            (Sweep::Connections, false) => vec![1, 4, 16, 64, 256, 1024],
            (Sweep::Connections, true) => vec![1, 16, 64],
            (Sweep::Backlog, false) => vec![0, 5, 15, 30, 60],
            (Sweep::Backlog, true) => vec![0, 1],
        }
    }

    /// The sidecar's scenario at `value`; its baseline takes the same load.
    fn scenario(self, value: usize, options: &CurvesOptions) -> Scenario {
        let mut s = Scenario::named(&format!("{}-{}", self.label(), self.show(value)));
        (s.sink, s.duration) = (Sink::Fifo(None), options.duration);
        match self {
            Sweep::Size => (s.size, s.connections) = (Sizes::fixed(value), options.size_connections),
            Sweep::Connections => {
                (s.size, s.connections) = (Sizes::fixed(100), value);
                // The sidecar caps connections at 1024 by default; the sweep's load
                // and the harness's control calls need room above that.
                s.sidecar_args = vec![format!("--max-connections={}", (value + 16).max(1024))];
            }
            Sweep::Backlog => {
                let stall = Duration::from_secs(value as u64);
                (s.size, s.connections) = (Sizes::fixed(64 * KIB), 16);
                (s.reader_delay, s.duration) = (Some(stall), stall + options.duration);
                s.max_buffer_bytes = Some(options.backlog_budget);
                // Requests held at a full buffer answer 503 after a second, so
                // the load keeps knocking throughout the stall.
                s.sidecar_args = vec!["--block-timeout=1s".into()];
            }
        }
        s
    }

    fn label(self) -> &'static str {
        match self {
            Sweep::Size => "size",
            Sweep::Connections => "connections",
            Sweep::Backlog => "backlog",
        }
    }

    fn show(self, value: usize) -> String {
        match self {
            Sweep::Size => Sizes::fixed(value).to_string().replace(' ', ""),
            Sweep::Connections => value.to_string(),
            Sweep::Backlog => format!("{value}s"),
        }
    }
}

/// Runs the sweeps `options` selects, each point's baseline right before its
/// sidecar run so both see the same machine.
pub async fn run_curves(options: &CurvesOptions, harness: &Harness) -> CurvesReport {
    let sweeps = match options.only.is_empty() {
        true => vec![Sweep::Size, Sweep::Connections, Sweep::Backlog],
        false => options.only.clone(),
    };
    let (mut curves, mut failures) = (Vec::new(), Vec::new());
    for sweep in sweeps {
        let mut points = Vec::new();
        for value in sweep.values(options.quick) {
            let scenario = sweep.scenario(value, options);
            let baseline = match sweep {
                Sweep::Backlog => None,
                Sweep::Size | Sweep::Connections => {
                    let mut bare = scenario.clone();
                    bare.name = format!("{}-bare", scenario.name);
                    report::noted(&bare.name, baselines::http_ceiling(&bare, harness).await, &mut failures)
                }
            };
            if let Some(sidecar) = report::noted(&scenario.name, run::run(&scenario, harness).await, &mut failures) {
                points.push(Point { x: value as f64, sidecar, baseline });
            }
        }
        let budget_bytes = (sweep == Sweep::Backlog).then_some(options.backlog_budget);
        curves.push(Curve { sweep, budget_bytes, points });
    }
    let load_average = std::fs::read_to_string("/proc/loadavg").ok().map(|l| l.trim().to_owned());
    CurvesReport { machine: Machine::here(), load_average, curves, failures }
}
