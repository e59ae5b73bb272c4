//! Figures about a running process, read from /proc (for benchmarks).

/// User + system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(pid);
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15 (1-based, counting pid and comm): indexes 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of a process tree: the process itself, the children it has reaped, and every
/// live descendant. Differences of two readings give a server's CPU over a window (Postgres:
/// the postmaster and its backends), as long as no backend that lived before the window exits
/// inside it.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(parent) = stat_fields(p).get(1).and_then(|v| v.parse::<u32>().ok()) {
                children.entry(parent).or_default().push(p);
            }
        }
    }
    let mut total = 0.0;
    let mut todo = vec![pid];
    let mut first = true;
    while let Some(p) = todo.pop() {
        let f = stat_fields(p);
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += ticks(11) + ticks(12);
        if first {
            // cutime + cstime: children already reaped (exited backends).
            total += ticks(13) + ticks(14);
            first = false;
        }
        todo.extend(children.get(&p).into_iter().flatten());
    }
    total / 100.0
}

/// The fields of `/proc/PID/stat` after the command name: state is index 0, ppid 1.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().map(str::to_owned).collect()
}

/// Busy CPU seconds of the whole machine so far (every core: all but idle and iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (all - idle) / 100.0
}

/// Peak resident set size (VmHWM) in MiB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What a capture run cost: seconds from its stream start to the checkpoint covering every
/// row, and the CPU seconds the process spent in between.
pub struct PublishRun {
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// Follows a Sluice log until the `run_index`-th occurrence of `started` (the stream start of
/// this run) is followed by a `checkpoint written` line whose `events_published` reaches
/// `rows`. Times come from the log lines' timestamps; CPU from /proc for `pid`.
pub fn time_publish(
    log: &std::path::Path,
    started: &str,
    run_index: usize,
    rows: u64,
    pid: u32,
    timeout: std::time::Duration,
) -> PublishRun {
    let deadline = std::time::Instant::now() + timeout;
    // CPU spent before the stream starts (preflight, catalog, client start-up) is not per row.
    let mut cpu_at_start = None;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let this_run = text
            .match_indices(started)
            .nth(run_index)
            .map(|(i, _)| &text[text[..i].rfind('\n').map(|n| n + 1).unwrap_or(0)..]);
        if let Some(run) = this_run {
            cpu_at_start.get_or_insert_with(|| cpu_seconds(pid));
            let start = log_time(run.lines().next().unwrap_or_default());
            let done = run.lines().find(|l| {
                l.contains("checkpoint written")
                    && field(l, "events_published=").is_some_and(|n| n >= rows)
            });
            if let Some(done) = done {
                let mut seconds = log_time(done) - start;
                if seconds < 0.0 {
                    seconds += 86400.0;
                }
                return PublishRun {
                    seconds,
                    cpu_seconds: cpu_seconds(pid) - cpu_at_start.unwrap_or(0.0),
                };
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sluice did not publish {rows} rows in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Seconds since midnight of a log line's leading RFC 3339 timestamp.
fn log_time(line: &str) -> f64 {
    let t = line.split('T').nth(1).unwrap_or("");
    let t = t.split('Z').next().unwrap_or("");
    let mut parts = t.split(':');
    let h: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let m: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let s: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}

fn field(line: &str, name: &str) -> Option<u64> {
    let rest = &line[line.find(name)? + name.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
