//! `cargo xtask bench [--save] [ARGS]`: the criterion benches, tracked against a
//! saved baseline.
//!
//! - `--save` runs them and saves the results as the baseline `saved` (criterion's
//!   `--save-baseline`), replacing the last one.
//! - Without it, they run against `saved` (criterion's `--baseline-lenient`: a bench
//!   new since then is measured and reported as new), criterion prints its own
//!   verdict per bench, and a table at the end gives each bench's mean before and
//!   now and the change: new benches first, then the largest slow-down.
//!
//! ARGS go to `cargo bench` (`--bench tar_encode`, a filter, ...); without a
//! `--bench`, every criterion bench in `benches/` runs (not `object_s3`, which
//! measures a ratio in one run and keeps no baseline). The benches run with the same
//! tools as the tests.
//! Timings on a shared machine move by several per cent from run to run: read the
//! change against criterion's noise band, not as a gate.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The name of the saved baseline.
const BASELINE: &str = "saved";

pub fn run(args: Vec<OsString>) -> Result<ExitCode, String> {
    let save = args.iter().any(|a| a == "--save");
    let cargo_args: Vec<OsString> = args.into_iter().filter(|a| a != "--save").collect();
    let criterion = super::target_dir(&super::workspace_root()).join("criterion");
    let (flag, verb) = match save {
        true => ("--save-baseline", "saving the results as"),
        false => ("--baseline-lenient", "comparing with"),
    };
    super::progress(&format!("{verb} the baseline `{BASELINE}` in {}", criterion.display()));
    let mut cargo = super::cargo_with_test_tools(&["bench", "--workspace", "--locked"])?;
    if !cargo_args.iter().any(|a| a.to_str().is_some_and(|a| a.starts_with("--bench"))) {
        // Only criterion's benches take its flags: the libraries' test harnesses and
        // the object_s3 ratio bench would refuse or misread them.
        let benches = criterion_benches(&super::workspace_root().join("benches"))?;
        cargo.args(benches.iter().flat_map(|name| ["--bench", name.as_str()]));
    }
    let code = super::exit_code(cargo.args(&cargo_args).args(["--", flag, BASELINE]).status())?;
    if !save && code == ExitCode::SUCCESS {
        print!("{}", table(&changes(&criterion)?));
    }
    Ok(code)
}

/// The benches in `dir` that run on criterion (they call `criterion_main!`), by name.
fn criterion_benches(dir: &Path) -> Result<Vec<String>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", dir.display());
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let is_criterion = fs::read_to_string(&path).is_ok_and(|text| text.contains("criterion_main!"));
        if let (Some(stem), true) = (path.file_stem().and_then(|s| s.to_str()), is_criterion) {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// One bench's mean time in the baseline (if it was there) and now, in nanoseconds.
#[derive(Debug, PartialEq)]
struct Change {
    bench: String,
    before: Option<f64>,
    now: f64,
}

/// Every bench criterion measured in this run (`new/`), with its baseline's mean.
fn changes(criterion: &Path) -> Result<Vec<Change>, String> {
    let mut found = Vec::new();
    for dir in bench_dirs(criterion).map_err(|e| format!("cannot read {}: {e}", criterion.display()))? {
        let read = |name: &str| fs::read_to_string(dir.join(name).join("estimates.json")).ok();
        let Some(now) = read("new").as_deref().and_then(mean) else { continue };
        let before = read(BASELINE).as_deref().and_then(mean);
        let bench = dir.strip_prefix(criterion).unwrap_or(&dir).display().to_string();
        found.push(Change { bench, before, now });
    }
    Ok(found)
}

/// The directories under `root` that hold a bench's results (a `new/` inside).
fn bench_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "new") {
                dirs.push(dir.clone());
            } else if path.is_dir() && path.file_name().is_some_and(|n| n != "report" && n != BASELINE) {
                pending.push(path);
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The mean's point estimate in criterion's `estimates.json`: the first number
/// after `"mean"` and `"point_estimate"` (no JSON parser, so that xtask builds in
/// seconds with the standard library alone).
fn mean(json: &str) -> Option<f64> {
    let after_mean = &json[json.find("\"mean\"")?..];
    let after_key = &after_mean[after_mean.find("\"point_estimate\"")? + "\"point_estimate\"".len()..];
    let number = after_key.trim_start().strip_prefix(':')?.trim_start();
    let end = number
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))
        .unwrap_or(number.len());
    number[..end].parse().ok()
}

/// The changes as a table: new benches first, then the largest slow-down.
fn table(changes: &[Change]) -> String {
    let ratio = |c: &Change| c.before.map(|b| c.now / b);
    let mut rows: Vec<&Change> = changes.iter().collect();
    rows.sort_by(|a, b| ratio(b).unwrap_or(f64::INFINITY).total_cmp(&ratio(a).unwrap_or(f64::INFINITY)));
    let width = rows.iter().map(|c| c.bench.len()).max().unwrap_or(5).max(5);
    let mut out = format!("\n{:width$}  {:>12}  {:>12}  {:>8}\n", "bench", BASELINE, "now", "change");
    for change in rows {
        let before = change.before.map_or("-".into(), duration);
        let delta = ratio(change).map_or("new".into(), |r| format!("{:+.1}%", (r - 1.0) * 100.0));
        out += &format!("{:width$}  {before:>12}  {:>12}  {delta:>8}\n", change.bench, duration(change.now));
    }
    out
}

/// Nanoseconds as criterion shows them.
fn duration(nanos: f64) -> String {
    match nanos {
        n if n < 1e3 => format!("{n:.1} ns"),
        n if n < 1e6 => format!("{:.2} µs", n / 1e3),
        n if n < 1e9 => format!("{:.2} ms", n / 1e6),
        n => format!("{:.3} s", n / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESTIMATES: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":10.5,"upper_bound":12.0},"point_estimate":11.25,"standard_error":0.3},"median":{"point_estimate":9.0}}"#;

    #[test]
    fn the_criterion_benches_are_those_that_call_criterion_main() {
        let benches = criterion_benches(&super::super::workspace_root().join("benches")).unwrap();
        assert!(benches.contains(&"tar_encode".to_owned()), "{benches:?}");
        assert!(!benches.contains(&"object_s3".to_owned()), "{benches:?}");
    }

    #[test]
    fn reads_the_mean_not_another_estimate() {
        assert_eq!(mean(ESTIMATES), Some(11.25));
        assert_eq!(mean(r#"{"mean":{"point_estimate":2.5e6}}"#), Some(2.5e6));
        assert_eq!(mean(r#"{"median":{"point_estimate":1}}"#), None);
    }

    #[test]
    fn finds_the_benches_of_this_run_and_their_baseline() {
        let root = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let put = |path: &str, text: &str| {
            let file = root.join(path).join("estimates.json");
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        };
        put("tar/100B/new", r#"{"mean":{"point_estimate":1100.0}}"#);
        put("tar/100B/saved", r#"{"mean":{"point_estimate":1000.0}}"#);
        put("batcher/new", r#"{"mean":{"point_estimate":2000000.0}}"#);
        put("tar/report/new", r#"{"mean":{"point_estimate":1.0}}"#);
        let found = changes(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            found,
            [
                Change { bench: "batcher".into(), before: None, now: 2e6 },
                Change { bench: "tar/100B".into(), before: Some(1000.0), now: 1100.0 },
            ]
        );
        let table = table(&found);
        assert!(table.contains("tar/100B       1.00 µs       1.10 µs    +10.0%"), "{table}");
        assert!(table.contains("batcher              -       2.00 ms       new"), "{table}");
    }
}
