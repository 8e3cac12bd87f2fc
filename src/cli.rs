//! The command line, as clap sees it. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps private X direct-message conversations flowing into a warehouse as exactly-once JSONL files.
#[derive(Debug, Parser)]
#[command(name = "dm-handoff", version = version(), about, propagate_version = true)]
pub struct Opts {
    /// Print one JSON object on stdout instead of text (check, verify, status, schema, sync, backfill, send,
    /// lookup, upload-media, delete, group-send, auth, state); errors too, as {"ok": false, "exit", "error"}.
    #[arg(long, global = true)]
    pub json: bool,
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

/// The version `--version` prints: the crate's, and the git revision when built from a checkout.
pub fn version() -> &'static str {
    match env!("DM_HANDOFF_GIT_REVISION") {
        "" => env!("CARGO_PKG_VERSION"),
        _ => concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("DM_HANDOFF_GIT_REVISION"), ")"),
    }
}

impl Command {
    /// Whether the command has a JSON form for `--json`.
    pub fn has_json(&self) -> bool {
        !matches!(self, Command::Run | Command::Demo(_) | Command::Simulate(_) | Command::Completions(_) | Command::Man)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text, or journald's structured fields when stderr is the journal (under systemd).
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
    /// Send a DM (text, or text plus one media item) and record it in the pipeline's files, exactly once.
    Send(SendArgs),
    /// Look a user up by numeric ID or @username: prints id, username, name, and canDm when known.
    Lookup(LookupArgs),
    /// Check and upload an image, GIF or MP4 (a local file or an https:// URL); prints its media ID.
    UploadMedia(UploadMediaArgs),
    /// Delete a DM for the account (provider x-api-v2) and record it as a `dm_delete` line, once.
    Delete(DeleteArgs),
    /// Send into an existing conversation, or create a group with a first message (provider x-api-v2);
    /// recorded as a `dm_send` line.
    GroupSend(GroupSendArgs),
    /// Audit the output files: every line one JSON record ending in a newline, no exactly-once key twice,
    /// manifests that match their segments, none missing. Reads files only (safe while the daemon runs);
    /// one line per problem, then a summary. Exit 0 clean, 1 problems.
    Verify(VerifyArgs),
    /// Audit the state against the files (`state check`), or rebuild it from them (`state rebuild`).
    /// Both take the state directory's lock: stop the daemon first.
    #[command(subcommand)]
    State(StateCommand),
    /// Upload every closed segment and manifest not yet in the bucket (`upload_url`), then exit; exit 1,
    /// backlog kept, if an upload fails.
    Upload(UploadArgs),
    /// Print the JSON Schema (draft 2020-12) of every record kind.
    Schema,
    /// Authorize an x-api-v2 pipeline with `oauth_client_id` once (OAuth 2.0 with PKCE): prints the URL to open,
    /// waits for X's redirect on `oauth_redirect_uri`, and stores tokens that then renew themselves.
    Auth(AuthArgs),
    /// Print the shell completion script for bash, zsh or fish (the Debian package installs them).
    Completions(CompletionsArgs),
    /// Print the man page (roff); `dm-handoff man | man -l -` reads it.
    Man,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this pipeline (repeatable; default all).
    #[arg(long = "pipeline", value_name = "NAME")]
    pub pipelines: Vec<String>,
    /// Also check the bucket of each pipeline with `upload_url`: every manifest's segment there with its
    /// size and SHA-256, no object under the pipeline's prefix that no manifest names.
    #[arg(long)]
    pub remote: bool,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Only this pipeline (repeatable; default every pipeline with `upload_url`).
    #[arg(long = "pipeline", value_name = "NAME")]
    pub pipelines: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Offline audit: the database opens and reads clean, every key in the files is in the seen set,
    /// cursors, high-water marks and commit points are sane. One line per problem, then a summary.
    /// Exit 0 clean, 1 problems, 3 while another process (the daemon) owns the state.
    Check(StateArgs),
    /// Rebuild the seen set, conversation states and commit points from the files; the old database is
    /// kept aside as STATE_DIR/db.old-TIME. Refused while another process (the daemon) owns the state.
    Rebuild(StateArgs),
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Only this pipeline (repeatable; default all).
    #[arg(long = "pipeline", value_name = "NAME")]
    pub pipelines: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    /// The x-api-v2 pipeline to authorize (default: the only one configured).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// How long to wait for the browser's redirect.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: String,
    /// Import a refresh token obtained elsewhere instead (`-`: standard input); it is exchanged once at once,
    /// so a bad one fails here. Never pass a token on the command line.
    #[arg(long, value_name = "PATH|-")]
    pub refresh_token_file: Option<PathBuf>,
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
pub struct StatusArgs {}

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

#[derive(Args)]
pub struct SendArgs {
    /// The pipeline whose account sends and whose files get the record (default: the only one configured).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// The recipient: a numeric X user ID or @username.
    #[arg(long, value_name = "ID|@USER", required_unless_present = "jobs", conflicts_with = "jobs")]
    pub to: Option<String>,
    /// The message text. Other local users can see it in the process list; --text-file avoids that.
    #[arg(
        long,
        value_name = "TEXT",
        allow_hyphen_values = true,
        required_unless_present_any = ["jobs", "text_file"],
        conflicts_with_all = ["jobs", "text_file"]
    )]
    pub text: Option<String>,
    /// Read the message text from this file (`-`: standard input); one trailing newline is dropped.
    #[arg(long, value_name = "PATH", conflicts_with = "jobs")]
    pub text_file: Option<PathBuf>,
    /// Attach one media item: a local file or an https:// URL (AVIF, GIF, JPEG, PNG, WebP or MP4; at most
    /// 15,728,640 bytes). It is checked before anything is spent.
    #[arg(long, value_name = "PATH|URL", conflicts_with = "jobs")]
    pub media: Option<String>,
    /// The send's idempotency key (1-255 printable ASCII characters, no spaces). Default: a hash of pipeline,
    /// recipient, text and media, so running the same send again never sends twice.
    #[arg(long, value_name = "KEY", conflicts_with = "jobs")]
    pub idempotency_key: Option<String>,
    /// Send again a job whose earlier outcome is unknown (its answer was lost and the conversation does not
    /// show it). Without it such a job is only looked for, never sent twice.
    #[arg(long)]
    pub resend_unknown: bool,
    /// Send a batch: a JSONL file with one job per line, {"to", "text", "media"?, "idempotency_key"?};
    /// relative media paths are taken from the file's folder. Prints one result line per job and a summary.
    #[arg(long, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
}

impl std::fmt::Debug for SendArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the message text: Debug output can end up in logs.
        f.debug_struct("SendArgs")
            .field("pipeline", &self.pipeline)
            .field("to", &self.to)
            .field("text", &self.text.as_ref().map(|_| "<redacted>"))
            .field("text_file", &self.text_file)
            .field("media", &self.media)
            .field("idempotency_key", &self.idempotency_key)
            .field("resend_unknown", &self.resend_unknown)
            .field("jobs", &self.jobs)
            .finish()
    }
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// The pipeline whose provider and key to use (default: the only one configured).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// A numeric X user ID or @username.
    #[arg(value_name = "ID|@USER")]
    pub user: String,
}

#[derive(Debug, Args)]
pub struct UploadMediaArgs {
    /// The pipeline whose account uploads (default: the only one configured).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// A local file or an https:// URL: AVIF, GIF, JPEG, PNG, WebP or MP4, at most 15,728,640 bytes.
    #[arg(value_name = "PATH|URL")]
    pub source: String,
    /// The upload's idempotency key. Default: a hash of pipeline and media, so uploading the same file
    /// again returns the same media ID instead of a second upload.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The x-api-v2 pipeline whose account deletes and whose files get the record (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// The DM's ID (its X event ID).
    #[arg(long, value_name = "ID")]
    pub message_id: String,
    /// Its conversation: the peer's user ID or conv:<dm_conversation_id>. Looked up when not given.
    #[arg(long, value_name = "ID|conv:ID")]
    pub conversation: Option<String>,
}

#[derive(Args)]
pub struct GroupSendArgs {
    /// The x-api-v2 pipeline whose account sends and whose files get the record (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// An existing conversation: a group's ID or a 1:1 `<id>-<id>` (a `conv:` prefix is fine).
    #[arg(long, value_name = "ID", required_unless_present = "participants", conflicts_with = "participants")]
    pub conversation: Option<String>,
    /// A new group with this user (numeric ID; repeat for 2 to 49 participants besides the account).
    #[arg(long = "participant", value_name = "ID")]
    pub participants: Vec<String>,
    /// The message text. Other local users can see it in the process list; --text-file avoids that.
    #[arg(
        long,
        value_name = "TEXT",
        allow_hyphen_values = true,
        required_unless_present = "text_file",
        conflicts_with = "text_file"
    )]
    pub text: Option<String>,
    /// Read the message text from this file (`-`: standard input); one trailing newline is dropped.
    #[arg(long, value_name = "PATH")]
    pub text_file: Option<PathBuf>,
    /// Send again when an earlier run of the same group send could not learn whether X sent it.
    #[arg(long)]
    pub resend_unknown: bool,
}

impl std::fmt::Debug for GroupSendArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the message text: Debug output can end up in logs.
        f.debug_struct("GroupSendArgs")
            .field("pipeline", &self.pipeline)
            .field("conversation", &self.conversation)
            .field("participants", &self.participants)
            .field("text", &self.text.as_ref().map(|_| "<redacted>"))
            .field("text_file", &self.text_file)
            .field("resend_unknown", &self.resend_unknown)
            .finish()
    }
}
