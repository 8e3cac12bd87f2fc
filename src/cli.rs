//! The command line, as clap sees it. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps private X direct-message conversations flowing into a warehouse as exactly-once JSONL files.
#[derive(Debug, Parser)]
#[command(name = "dm-handoff", version, about, propagate_version = true)]
pub struct Opts {
    /// The pipelines file. Relative paths inside it are taken from its folder.
    #[arg(long, short, global = true, default_value = "pipelines.toml", env = "DM_HANDOFF_CONFIG")]
    pub config: PathBuf,
    /// Log level for dm-handoff's own logs (error, warn, info, debug, trace); default info (warn for
    /// `demo`, whose report is on stdout). RUST_LOG overrides it.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Auto,
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Daemon: run every pipeline on its schedule until SIGTERM/SIGINT (for systemd: Type=notify).
    Run,
    /// One pass now over the selected pipelines: new messages, plus backfill within the configured limits.
    Sync(SyncArgs),
    /// Walk older history toward its start.
    Backfill(BackfillArgs),
    /// Per conversation: messages written, newest message ID, backfill progress, last sync, last error.
    Status(StatusArgs),
    /// Validate the config and print what it would do; touches nothing.
    Check,
    /// Start the built-in simulator on loopback and sync a sample config against it into ./demo-out.
    Demo(DemoArgs),
    /// Serve the provider simulator (for tests, benchmarks and your own loader tests).
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only this pipeline (repeatable).
    #[arg(long = "pipeline", value_name = "NAME")]
    pub pipelines: Vec<String>,
    /// Only this conversation, as configured (repeatable).
    #[arg(long = "conversation", value_name = "ID")]
    pub conversations: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Only this pipeline.
    #[arg(long = "pipeline", value_name = "NAME")]
    pub pipelines: Vec<String>,
    /// Only this conversation, as configured.
    #[arg(long = "conversation", value_name = "ID")]
    pub conversations: Vec<String>,
    /// Stop once history reaches messages older than this RFC 3339 time.
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<String>,
    /// At most this many older pages per conversation in this run.
    #[arg(long, value_name = "N")]
    pub max_pages: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON document naming every configured conversation.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo writes its config, state and handoff files.
    #[arg(long, default_value = "demo-out")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on; port 0 picks a free one (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// A JSON scenario (simulator config); the built-in sample conversations without it.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Seed for the simulated conversations (overrides the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
}
