//! The load harness against the debug sidecar, briefly: every transport the sidecar
//! serves, every framing, both sinks the harness reads back, with and without
//! `wait=commit`. Asserts only that every accepted message was committed exactly
//! once with its bytes unchanged; speed is the suite's business, not CI's.

use std::time::Duration;

use loadtest::body::Framing;
use loadtest::load::Sizes;
use loadtest::scenario::{Client, Harness, Layout, Scenario, Sink, Transport};

fn harness() -> Harness {
    Harness {
        sidecar: Some(env!("CARGO_BIN_EXE_spout-sidecar").into()),
        debug: true,
        work_dir: None,
        keep: false,
        json: None,
        pin: Default::default(),
    }
}

fn scenario(name: &str, transport: Transport, framing: Framing, batch: usize, sink: Sink, layout: Layout) -> Scenario {
    let mut s = Scenario::named(name);
    (s.transport, s.framing, s.batch, s.sink, s.layout) = (transport, framing, batch, sink, layout);
    (s.duration, s.connections, s.size) = (Duration::from_millis(700), 4, Sizes { min: 43, max: 3000 });
    s.max_batch_age = Some(Duration::from_millis(50));
    // An open loop bounds the count: a dir: sink with one file per message fsyncs each.
    s.rate = Some(300.0);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_is_committed_exactly_once() {
    let mut waited = scenario("wait-commit", Transport::Http, Framing::Raw, 1, Sink::Fifo(None), Layout::Message);
    (waited.wait_commit, waited.rate, waited.connections) = (true, Some(200.0), 16);
    let mut closed_loop = scenario("single", Transport::Http, Framing::Raw, 1, Sink::Fifo(None), Layout::Message);
    closed_loop.rate = None;
    // wrk as the client, its Lua-built messages checked like the harness's own.
    let mut by_wrk = closed_loop.clone();
    (by_wrk.name, by_wrk.client, by_wrk.size) = ("single-wrk".into(), Client::Wrk, Sizes::fixed(100));
    // One file per message in a dir: sink: few of them.
    let mut multipart = scenario("multipart", Transport::Http, Framing::Multipart, 5, Sink::Dir(None), Layout::Message);
    multipart.rate = Some(40.0);
    let runs = [
        closed_loop,
        by_wrk,
        scenario("ndjson-batch", Transport::Http, Framing::Ndjson, 50, Sink::Dir(None), Layout::Batch),
        scenario("frames-unix", Transport::Unix, Framing::Frames, 20, Sink::Fifo(None), Layout::Batch),
        multipart,
        scenario("raw-lines", Transport::Raw, Framing::Ndjson, 50, Sink::Fifo(None), Layout::Batch),
        scenario("raw-frames", Transport::Raw, Framing::Frames, 50, Sink::Fifo(None), Layout::Message),
        waited,
    ];
    for run in runs {
        let report = loadtest::run::run(&run, &harness()).await.unwrap_or_else(|e| panic!("{}: {e:#}", run.name));
        eprint!("{}", loadtest::report::table(std::slice::from_ref(&report)));
        let verdict = report.verify.as_ref().expect("sidecar runs are verified");
        assert!(report.ok, "{}: {:#?}", run.name, report);
        assert_eq!(verdict.found, verdict.accepted, "{}", run.name);
        assert!(verdict.commits > 0, "{}", run.name);
    }
}

/// The backlog curve, briefly: the reader stalls for a second while load goes on,
/// and every point is still checked message by message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_curve_checks_every_point() {
    use loadtest::curves::{run_curves, CurvesOptions, Sweep};
    let options = CurvesOptions {
        duration: Duration::from_millis(500),
        only: vec![Sweep::Backlog],
        quick: true,
        size_connections: 4,
        backlog_budget: 8 << 20,
    };
    let result = run_curves(&options, &harness()).await;
    assert!(result.failures.is_empty(), "{:#?}", result.failures);
    let [curve] = &result.curves[..] else { panic!("one curve: {:#?}", result.curves) };
    assert_eq!(curve.budget_bytes, Some(8 << 20));
    let stalls: Vec<f64> = curve.points.iter().map(|p| p.x).collect();
    assert_eq!(stalls, [0.0, 1.0]);
    for point in &curve.points {
        let verdict = point.sidecar.verify.as_ref().expect("sidecar runs are verified");
        assert!(point.sidecar.ok && verdict.found == verdict.accepted && verdict.found > 0, "{:#?}", point.sidecar);
        assert!(point.sidecar.peak_rss_bytes.is_some_and(|b| b > 0));
    }
    // The stalled point's load ran for its stall as well as --duration.
    assert!(curve.points[1].sidecar.seconds >= 1.4, "{}", curve.points[1].sidecar.seconds);
}
