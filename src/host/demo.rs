//! `demo` and `simulate`: the built-in simulator (`dm-handoff-simulator`) served on its own, or with a sample
//! pipeline synced against it end to end.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{run_once, stop_on_signal};
use crate::cli::{DemoArgs, SimulateArgs};
use crate::config::{self, ConfigError};
use crate::engine::sync::RunOptions;
use crate::exit::Exit;

/// `simulate`: serves the provider simulator until a signal.
pub(super) async fn simulate(args: SimulateArgs) -> anyhow::Result<Exit> {
    let mut sim_cfg = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read scenario {}: {e}", path.display())))?;
            serde_json::from_str(&text).map_err(|e| {
                ConfigError(format!("scenario {}: {e}; see the simulator section of the README", path.display()))
            })?
        }
        None => dm_handoff_simulator::default_scenario(),
    };
    if let Some(seed) = args.seed {
        sim_cfg.seed = seed;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| ConfigError(format!("cannot listen on {}: {e}; pick another --listen address", args.listen)))?;
    let addr = listener.local_addr()?;
    println!(
        "dm-handoff simulator listening on http://{addr}  (x-api-v2 and getxapi base_url http://{addr}; xquik base_url http://{addr}/api/v1)"
    );
    std::io::stdout().flush()?;
    let cancel = CancellationToken::new();
    stop_on_signal(cancel.clone(), "stopping the simulator");
    dm_handoff_simulator::Simulator::new(sim_cfg).serve(listener, async move { cancel.cancelled().await }).await?;
    Ok(Exit::Ok)
}

/// The first line of a config `demo` wrote; marks a folder the demo may clear.
const DEMO_HEADER: &str = "# Written by `dm-handoff demo`";

/// `demo`: the simulator, a sample config, two syncs and a look at the files.
pub(super) async fn demo(args: DemoArgs) -> anyhow::Result<Exit> {
    let dir = &args.dir;
    let config_path = dir.join("pipelines.toml");
    // Each demo starts fresh, but only a folder an earlier demo wrote is cleared (its config says so).
    if std::fs::read_to_string(&config_path).is_ok_and(|t| t.starts_with(DEMO_HEADER)) {
        for sub in ["state", "out"] {
            let _ = std::fs::remove_dir_all(dir.join(sub));
        }
    } else if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(ConfigError(format!(
            "{} exists and was not written by `dm-handoff demo`; pass --dir with a new folder",
            dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let handle = dm_handoff_simulator::Simulator::spawn(dm_handoff_simulator::default_scenario())
        .await
        .context("starting the simulator")?;
    std::fs::write(dir.join("demo-api-key"), "xq_demo_key_not_secret\n")?;
    // Key files must be owner-only (see config::read_secret_file), this one too.
    std::fs::set_permissions(dir.join("demo-api-key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let scenario = dm_handoff_simulator::default_scenario();
    let convs: Vec<String> = scenario.conversations.iter().map(|c| format!("\"{}\"", c.peer_id)).collect();
    std::fs::write(
        &config_path,
        format!(
            "{DEMO_HEADER}: a pipeline against the built-in simulator on loopback.\n\
             state_dir = \"state\"\n\n[[pipelines]]\nname = \"support\"\nprovider = \"xquik\"\n\
             base_url = \"{}\"\napi_key_file = \"demo-api-key\"\naccount = \"acme_support\"\n\
             conversations = [{}]\nschedule = \"*/30 * * * * *\"\noutput_dir = \"out/support\"\n\
             rotate_max_bytes = 131072\n",
            handle.base_url(),
            convs.join(", ")
        ),
    )?;
    let cfg = config::load(&config_path)?;
    println!(
        "demo: simulator on {} serving {} conversations; config {}",
        handle.base_url(),
        scenario.conversations.len(),
        config_path.display()
    );
    println!("\n== first sync: everything the simulator has");
    let everything = RunOptions { head: true, backfill: Some(true), ..Default::default() };
    let first = run_once(&cfg, &[], everything.clone()).await?.print();
    let ids = handle.sim.add_messages(&scenario.conversations[0].peer_id, 5);
    println!(
        "\n== {} new messages arrive in {}; second sync writes only those",
        ids.len(),
        scenario.conversations[0].peer_id
    );
    let second = run_once(&cfg, &[], everything).await?.print();
    let stats = handle.sim.stats();
    // The demo's simulator stops with the demo, so a rerun needs one on the address the config names.
    let addr = handle.addr;
    handle.shutdown().await;
    let out_dir = &cfg.pipelines[0].output_dir;
    println!("\n== files in {}", out_dir.display());
    let (files, records) = describe_files(out_dir)?;
    for (name, lines, bytes) in &files {
        println!("  {name:<52} {lines:>6} records {bytes:>9} bytes");
    }
    println!("  total {records} records; simulator served {} requests, {} credits", stats.requests, stats.credits);
    let active = out_dir.join(&cfg.pipelines[0].file_name);
    println!("\nLook at it:");
    println!("  tail -n 3 {}", active.display());
    println!("  cargo run --release -- status --config {}", config_path.display());
    println!("  cargo run --release -- simulate --listen {addr} &   # the demo's simulator has stopped; start one");
    println!(
        "  cargo run --release -- sync --config {}   # run again: nothing is written twice",
        config_path.display()
    );
    Ok(first.worst(second))
}

/// A handoff file as the demo reports it: (file name, lines, bytes).
type FileSummary = (String, u64, u64);

/// Each handoff file in a folder, closed segments first, and the line total.
fn describe_files(dir: &Path) -> anyhow::Result<(Vec<FileSummary>, u64)> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".jsonl") {
            let data = std::fs::read(e.path())?;
            files.push((name, data.iter().filter(|b| **b == b'\n').count() as u64, data.len() as u64));
        }
    }
    // Closed segments sort by their timestamp and sequence; the active file (no sequence) goes last.
    files.sort_by_key(|(n, _, _)| (n.matches('.').count() < 2, n.clone()));
    let total = files.iter().map(|f| f.1).sum();
    Ok((files, total))
}
