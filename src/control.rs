//! `sluice reload`: check a config, then ask every `sluice run` using it to reload it (SIGHUP).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Processes running `sluice run` with the config at `config` (compared as canonical paths;
/// the config may come from `--config`, `-c` or `SLUICE_CONFIG`).
#[cfg(target_os = "linux")]
fn running_with(config: &Path) -> Vec<u32> {
    let Ok(want) = config.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_sluice = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "sluice"));
        if !is_sluice || !args.iter().any(|a| a == "run") {
            continue;
        }
        let mut path: Option<String> = None;
        for (i, a) in args.iter().enumerate() {
            if a == "--config" || a == "-c" {
                path = args.get(i + 1).cloned();
            } else if let Some(p) = a.strip_prefix("--config=") {
                path = Some(p.to_owned());
            }
        }
        if path.is_none() {
            path = std::fs::read(dir.join("environ")).ok().and_then(|env| {
                env.split(|b| *b == 0).find_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.strip_prefix("SLUICE_CONFIG=").map(str::to_owned)
                })
            });
        }
        let Some(path) = path else { continue };
        let mut full = PathBuf::from(&path);
        if full.is_relative() {
            match std::fs::read_link(dir.join("cwd")) {
                Ok(cwd) => full = cwd.join(full),
                Err(_) => continue,
            }
        }
        if full.canonicalize().is_ok_and(|p| p == want) {
            found.push(pid);
        }
    }
    found
}

#[cfg(not(target_os = "linux"))]
fn running_with(_config: &Path) -> Vec<u32> {
    Vec::new()
}

pub async fn reload(path: &Path, wait: bool) -> ExitCode {
    let config = match crate::load(path) {
        Ok(c) => c,
        Err(_) => {
            eprintln!("the running pipeline was not asked to reload");
            return ExitCode::from(2);
        }
    };
    let problems = crate::preflight::preflight(&config, None).await;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!(
            "{} preflight problem(s): the running pipeline was not asked to reload",
            problems.len()
        );
        return ExitCode::FAILURE;
    }
    let pids = running_with(path);
    if pids.is_empty() {
        eprintln!(
            "error: no `sluice run` with config {} is running on this machine (the config \
             itself is valid: it takes effect when the pipeline starts)",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    for pid in pids {
        let sent = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| std::io::Error::other("not a process id"))
            .and_then(|p| {
                rustix::process::kill_process(p, rustix::process::Signal::HUP)
                    .map_err(std::io::Error::from)
            });
        if let Err(e) = sent {
            failed = true;
            eprintln!("error: cannot signal pid {pid}: {e}");
        } else {
            println!("asked sluice (pid {pid}) to reload; its log says `reload applied` or `reload refused`");
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    if !wait {
        return ExitCode::SUCCESS;
    }
    for source in config.sources.keys() {
        if let Err(e) = crate::resync::follow_backfills(&config, source).await {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
