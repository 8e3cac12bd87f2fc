//! dm-handoff: keeps private X direct-message conversations flowing into a warehouse as exactly-once JSONL.
//!
//! # Layout
//!
//! Dependencies point one way: `main → host → commands → engine → {handoff, sink, state, provider, record}
//! → {config, ids, time, exit, flock, metrics}` (ARCHITECTURE.md states the invariants).
//!
//! - [`host`]: runs a command's request here or hands it to a running daemon; the only place that opens and
//!   closes pipelines; the daemon (`run`), the control socket, the demo and the simulator server.
//! - [`commands`]: one module per command: arguments → a typed [`commands::Request`]; reports → text.
//! - [`cli`]: the command line (clap derive); its doc comments are `--help`.
//! - [`engine`]: what an open pipeline does: sync passes, outbound DMs, X API v2 management, cost policies.
//! - [`handoff`]: a pipeline's single writer: group commit of records + state, and start-up reconciliation.
//! - [`sink`]: the JSONL files: appends, rotation policy, torn-line repair, finding uncommitted lines;
//!   compression and manifests of closed segments.
//! - [`state`]: the sled database (the only module that names sled), the state-directory lock, and the
//!   owner-only OAuth token files.
//! - [`bucket`]: closed segments and their manifests to object storage (`object_store`), create-only under
//!   deterministic keys, with the upload ledger in the state.
//! - [`provider`]: the provider APIs behind one client type, error classes and the retry policy.
//! - [`record`]: the normalized record schema, every record builder, exactly-once keys, provider times.
//! - [`schema`]: the JSON Schema (draft 2020-12) of every record kind, kept beside the records and tested
//!   against them.
//! - [`config`]: `pipelines.toml` as written → the validated [`config::Config`] the engine sees.
//! - [`ids`], [`time`], [`exit`], [`flock`]: leaves: X's ID shapes, timestamps, the process exit codes, who
//!   holds a file lock.
//! - [`metrics`]: a leaf: the Prometheus registry and the handles the provider, the writer and the engine
//!   move; the daemon serves it (`metrics_listen`).
//!
//! The provider simulator (`demo`, `simulate`, the tests) is the workspace crate `dm-handoff-simulator`, which
//! names nothing of this crate.

pub mod bucket;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod exit;
pub mod flock;
pub mod handoff;
pub mod host;
pub mod ids;
pub mod metrics;
pub mod provider;
pub mod record;
pub mod schema;
pub mod sink;
pub mod state;
pub mod time;
