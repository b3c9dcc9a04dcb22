//! `make bench`: measures a cluster of release binaries on loopback, prints a table and
//! writes `target/bench/<name>.json`. Numbers only; nothing here asserts a timing.

#![allow(clippy::disallowed_methods)] // a benchmark drives git as child processes

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gitcluster_integration_tests::{Cluster, bin_dir, git};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let m = e.metadata().ok();
                    match m {
                        Some(m) if m.is_dir() => dir_bytes(&e.path()),
                        Some(m) => m.len(),
                        None => 0,
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Times `git clone --bare` of `url` into a fresh directory, `runs` times.
fn time_clones(scratch: &Path, url: &str, label: &str, runs: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for i in 0..runs {
        let dest = scratch.join(format!("{label}-{i}"));
        let start = Instant::now();
        let out = git::run_output(
            scratch,
            &[
                "clone",
                "-q",
                "--bare",
                "--no-local",
                url,
                dest.to_str().context("utf-8 path")?,
            ],
        );
        times.push(start.elapsed());
        ensure!(
            out.status.success(),
            "clone {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&dest)?;
    }
    Ok(median(times))
}

async fn storage_bench() -> Result<serde_json::Value> {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let scratch = cluster.dir().join("bench");
    let work = scratch.join("work");
    std::fs::create_dir_all(&work)?;
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    // ~48 MB of incompressible content over a short history.
    for i in 0..6 {
        git::write_random_file(&work.join(format!("blob-{i}.bin")), 8 * 1024 * 1024);
        std::fs::write(work.join("log.txt"), format!("commit {i}\n"))?;
        git::commit_all(&work, &format!("commit {i}"));
    }
    let url = cluster.repo_url("bench/clone.git");
    git::run(&work, &["push", "-q", &url, "main"]);
    let on_disk = cluster.storages[0].root.join("bench/clone.git");
    git::run(&on_disk, &["repack", "-a", "-d", "-q"]);
    let pack_mb = dir_bytes(&on_disk.join("objects/pack")) as f64 / (1024.0 * 1024.0);

    let runs = 5;
    let local_url = format!("file://{}", on_disk.display());
    // Warm the page cache once so both transports read from memory.
    time_clones(&scratch, &local_url, "warm", 1)?;
    let gateway = time_clones(&scratch, &url, "gw", runs)?;
    let local = time_clones(&scratch, &local_url, "local", runs)?;
    let gw_mb_s = pack_mb / gateway.as_secs_f64();
    let local_mb_s = pack_mb / local.as_secs_f64();

    // Small pushes through the gateway: one commit touching one small file each.
    let small = scratch.join("small");
    std::fs::create_dir_all(&small)?;
    git::run(&small, &["init", "-q", "--initial-branch=main"]);
    git::commit_all(&small, "base");
    let push_url = cluster.repo_url("bench/push.git");
    git::run(&small, &["push", "-q", &push_url, "main"]);
    let pushes = 100;
    let mut times = Vec::with_capacity(pushes);
    for i in 0..pushes {
        std::fs::write(small.join("counter.txt"), format!("{i}\n"))?;
        git::commit_all(&small, &format!("push {i}"));
        let start = Instant::now();
        git::run(&small, &["push", "-q", &push_url, "main"]);
        times.push(start.elapsed());
    }
    times.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Ok(serde_json::json!({
        "pack_mb": round(pack_mb),
        "clone_runs": runs,
        "clone_mb_s_gateway": round(gw_mb_s),
        "clone_mb_s_local": round(local_mb_s),
        "clone_ratio": round(gw_mb_s / local_mb_s),
        "push_count": pushes,
        "push_p50_ms": ms(percentile(&times, 0.50)),
        "push_p99_ms": ms(percentile(&times, 0.99)),
    }))
}

fn write_report(name: &str, report: &serde_json::Value) -> Result<PathBuf> {
    let dir = bin_dir().parent().context("target dir")?.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")?;
    println!("\n{name}");
    println!("{:<24} {:>12}", "metric", "value");
    println!("{:-<24} {:->12}", "", "");
    if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            println!("{k:<24} {v:>12}");
        }
    }
    println!("written to {}", path.display());
    Ok(path)
}

#[tokio::main]
async fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("storage") {
        let report = storage_bench().await.context("storage benchmark")?;
        write_report("storage", &report)?;
    }
    Ok(())
}
