//! Section 5: N sandboxes started at once (`runv run -i --rm -- cat`, each held running by its
//! open stdin until all run): the time until all N run, p50 and p99 of the time each took to
//! its container's start, and a check that nothing of any of them is left afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use runv_tests::{mounts_mentioning, processes_mentioning};

use crate::report::Report;
use crate::startup::RunTimings;
use crate::Options;

const SECTION: &str = "5 density";
/// Rounds per count.
const ROUNDS: usize = 2;
/// How long all N may take to run (a TCG boot each, on few host cores).
const LIMIT: Duration = Duration::from_secs(180);
const STATE_DIR: &str = "/run/runv";

/// A runv config for this section: RUNV_CONFIG's, with boot and request timeouts long enough
/// for N guests booting at once on this host.
fn write_config(dir: &Path) -> Result<PathBuf> {
    let mut table: toml::Table = match std::env::var_os("RUNV_CONFIG") {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", PathBuf::from(path).display()))?,
        )
        .context("parse RUNV_CONFIG")?,
        None => toml::Table::new(),
    };
    let runtime = table
        .entry("runtime")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("RUNV_CONFIG's runtime is not a table")?;
    // Those still booting when the round gives up get to finish their boot.
    let limit_ms = i64::try_from(2 * LIMIT.as_millis()).unwrap_or(i64::MAX);
    runtime.insert("boot_timeout_ms".into(), toml::Value::Integer(limit_ms));
    runtime.insert("request_timeout_ms".into(), toml::Value::Integer(120_000));
    let path = dir.join("density.toml");
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(path)
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The rank is within 1..=len, far below f64's exact-integer range.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn started(name: &str) -> bool {
    let path = Path::new(STATE_DIR).join(name).join("state.json");
    std::fs::read(path)
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .is_some_and(|s| s["containers"][0]["guest_pid"].is_number())
}

/// Where a sandbox that has not started stands: its saved status and the last line of its
/// guest console.
fn describe(name: &str) -> String {
    let dir = Path::new(STATE_DIR).join(name);
    let status = std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .map(|s| s["status"].to_string())
        .unwrap_or_else(|| "no state".to_string());
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let last = console
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    format!("{name} ({status}, console: {last:?})")
}

/// What is left of sandbox `name`: processes, mounts, its state directory.
fn leftovers(name: &str) -> Vec<String> {
    let dir = Path::new(STATE_DIR).join(name);
    let mut left = processes_mentioning(&dir.display().to_string());
    left.extend(processes_mentioning(&format!("runv-{name},")));
    left.extend(mounts_mentioning(&dir.display().to_string()));
    if dir.exists() {
        left.push(format!("state dir {}", dir.display()));
    }
    left
}

struct Sandbox {
    name: String,
    child: Child,
    spawned: Duration,
    timings: PathBuf,
}

/// One round: N sandboxes at once. Returns (all running, per-sandbox start times) in ms.
/// How a round went.
struct Round {
    /// Time until all ran; None when not all did within [`LIMIT`].
    all_ms: Option<f64>,
    /// Each sandbox's spawn → container start, of those that started.
    per_sandbox: Vec<f64>,
    /// The sandboxes still booting at [`LIMIT`], with where they stood.
    waiting: Vec<String>,
}

/// One round: N sandboxes at once. A sandbox that fails or anything left behind afterwards is
/// an error; not all of them running within [`LIMIT`] (the host's cores cannot keep that
/// many guests going) is an outcome the report shows.
fn round(runv: &Path, config: &Path, dir: &Path, n: usize, tag: &str) -> Result<Round> {
    let t0 = Instant::now();
    let mut sandboxes = Vec::new();
    let mut spawn_error = None;
    for i in 0..n {
        let name = format!("bench-{tag}-{}-{i}", std::process::id());
        let timings = dir.join(format!("{name}.json"));
        let spawned = t0.elapsed();
        match Command::new(runv)
            .env("RUNV_CONFIG", config)
            .args(["run", "-i", "--rm", "--name", &name, "--timings"])
            .arg(&timings)
            .args(["--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => sandboxes.push(Sandbox {
                name,
                child,
                spawned,
                timings,
            }),
            Err(e) => {
                spawn_error = Some(anyhow::anyhow!("start runv run: {e}"));
                break;
            }
        }
    }
    // Wait until every container runs (or one sandbox fails), then close every stdin so
    // each `cat` ends and its sandbox goes away; on every path, all are waited for.
    let mut failure = spawn_error;
    let mut all_running = None;
    let mut waiting = Vec::new();
    while failure.is_none() && waiting.is_empty() {
        if sandboxes.iter().all(|s| started(&s.name)) {
            all_running = Some(t0.elapsed());
            break;
        }
        let ended = sandboxes
            .iter_mut()
            .position(|s| matches!(s.child.try_wait(), Ok(Some(_))));
        if let Some(s) = ended.map(|i| &mut sandboxes[i]) {
            let mut errors = String::new();
            if let Some(mut err) = s.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut errors);
            }
            failure = Some(anyhow::anyhow!(
                "sandbox {} ended before all ran: {}",
                s.name,
                errors.trim()
            ));
        } else if t0.elapsed() > LIMIT {
            waiting = sandboxes
                .iter()
                .filter(|s| !started(&s.name))
                .map(|s| describe(&s.name))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut per_sandbox = Vec::new();
    for s in &mut sandboxes {
        if let Some(mut stdin) = s.child.stdin.take() {
            let _ = stdin.flush();
        }
    }
    for s in &mut sandboxes {
        let out = s.child.wait_with_output_ref();
        match out {
            Ok(status) if status.success() => {}
            Ok(status) => {
                failure.get_or_insert(anyhow::anyhow!("sandbox {} exited with {status}", s.name));
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("wait for sandbox {}: {e}", s.name));
            }
        }
        if let Ok(raw) = std::fs::read(&s.timings) {
            if let Ok(t) = serde_json::from_slice::<RunTimings>(&raw) {
                if let Some(started) = t.container_started {
                    per_sandbox.push((s.spawned + started).as_secs_f64() * 1000.0);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left: Vec<String> = sandboxes.iter().flat_map(|s| leftovers(&s.name)).collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !left.is_empty() {
        failure.get_or_insert(anyhow::anyhow!("left behind: {left:?}"));
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Round {
        all_ms: all_running.map(|d| d.as_secs_f64() * 1000.0),
        per_sandbox,
        waiting,
    })
}

/// `Child::wait` that keeps the child's stderr for nothing but draining it.
trait WaitDrained {
    fn wait_with_output_ref(&mut self) -> std::io::Result<std::process::ExitStatus>;
}

impl WaitDrained for Child {
    fn wait_with_output_ref(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if let Some(mut err) = self.stderr.take() {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut sink);
        }
        self.wait()
    }
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path())?;
    for &n in &o.density {
        let mut all = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for r in 0..ROUNDS {
            let mut outcome = round(&o.runv, &config, dir.path(), n, &format!("{n}x{r}"))?;
            let Some(all_ms) = outcome.all_ms else {
                report.note(
                    SECTION,
                    format!(
                        "{n} at once: only {} of {n} ran within {}s on this host (every idle \
                         guest under emulation keeps taking host CPU, so the last ones starve); \
                         no figure for {n}. Still booting: {}",
                        n - outcome.waiting.len(),
                        LIMIT.as_secs(),
                        outcome.waiting.join("; ")
                    ),
                );
                break;
            };
            let each = &mut outcome.per_sandbox;
            if each.len() != n {
                bail!("{} of {n} sandboxes reported their start", each.len());
            }
            each.sort_by(f64::total_cmp);
            all.push(all_ms);
            p50.push(percentile(each, 50.0));
            p99.push(percentile(each, 99.0));
        }
        let figure = |what: &str| format!("{n} at once: {what}");
        report.row(SECTION, figure("until all run"), "runv", "ms", &all);
        report.row(SECTION, figure("per sandbox p50"), "runv", "ms", &p50);
        report.row(SECTION, figure("per sandbox p99"), "runv", "ms", &p99);
    }
    report.note(
        SECTION,
        format!(
            "{ROUNDS} rounds per count; per-sandbox time is from its `runv run` spawn to its \
             container's start; after each round no process, mount or state directory of any \
             sandbox was left (checked)"
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
