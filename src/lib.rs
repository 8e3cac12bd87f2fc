//! dm-handoff: keeps private X direct-message conversations flowing into a warehouse as exactly-once JSONL.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap derive); its doc comments are `--help`.
//! - [`config`]: `pipelines.toml` as written → the validated [`config::Config`] the engine sees.
//! - [`app`]: the commands; the application edge where errors become exit codes.
//! - [`daemon`]: `run`: schedules, single-flight runs, reload, systemd notify and watchdog, clean stop.
//! - [`control`]: the Unix control socket through which commands reach a running daemon.
//! - [`sync`]: one pass per conversation: fetch a page → write → fsync → commit; head pass and backfill.
//! - [`handoff`]: a pipeline's single writer: group commit of records + state, and start-up reconciliation.
//! - [`manage`]: X API v2 `delete` and `group-send`, recorded as `dm_delete` / `dm_send` lines.
//! - [`outbound`]: `send`, `lookup`, `upload-media`: idempotent send jobs, their ledger and `dm_send` records.
//! - [`sink`]: the JSONL files: appends, rotation policy, torn-line repair, finding uncommitted lines;
//!   compression and manifests of closed segments.
//! - [`state`]: the sled database (the only module that names sled) and the state-directory lock.
//! - [`record`]: the normalized record schema, its exactly-once key, and time normalization.
//! - [`schema`]: the JSON Schema (draft 2020-12) of every record kind, for `dm-handoff schema`.
//! - [`verify`]: `dm-handoff verify`, the read-only audit of a pipeline's files and manifests.
//! - [`poll`]: cost policies, pure: adaptive polling of quiet conversations and credit budgets.
//! - [`provider`]: the provider APIs behind one client type, error classes and the retry policy.
//!
//! The provider simulator (`demo`, `simulate`, the tests) is the workspace crate `dm-handoff-simulator`.

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod handoff;
pub mod manage;
pub mod outbound;
pub mod poll;
pub mod provider;
pub mod record;
pub mod schema;
pub mod sink;
pub mod state;
pub mod sync;
pub mod verify;
