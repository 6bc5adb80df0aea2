//! `runv-runtimetest SPEC`: runs as a container's process, reads the OCI spec the container
//! was made from, and checks from inside that the runtime honoured it. One line per check
//! (`ok CHECK`, `not ok CHECK: expected ..., got ...`, `skip CHECK: reason`); the exit status
//! is 0 only when no check failed, 2 when the spec cannot be read.

mod cgroups;
mod devices;
mod mounts;
mod process;
mod report;
mod seccomp;
mod sys;
mod system;

use report::Report;
use serde_json::Value;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: runv-runtimetest /runtimetest/config.json");
        std::process::exit(2);
    };
    let spec: Value = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("runv-runtimetest: read the spec {path}: {e}");
            std::process::exit(2);
        }
    };
    let mut report = Report::default();
    // The seccomp probes come last: a filter that wrongly blocked a call the other checks
    // make shows up as their failure first, named.
    process::check(&spec, &args, &mut report);
    system::check(&spec, &mut report);
    mounts::check(&spec, &mut report);
    devices::check(&spec, &mut report);
    cgroups::check(&spec, &mut report);
    seccomp::check(&spec, &mut report);
    println!("{}", report.summary());
    std::process::exit(i32::from(report.failed()));
}

/// The value at JSON pointer `pointer` of the spec (`/linux/resources/memory`), if set and
/// not null.
pub fn at<'a>(spec: &'a Value, pointer: &str) -> Option<&'a Value> {
    spec.pointer(pointer).filter(|v| !v.is_null())
}

/// The strings of an array at `pointer` (none when absent).
pub fn strings(spec: &Value, pointer: &str) -> Vec<String> {
    at(spec, pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The array at `pointer` (empty when absent).
pub fn array<'a>(spec: &'a Value, pointer: &str) -> &'a [Value] {
    at(spec, pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}
