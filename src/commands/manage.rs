//! `delete` and `group-send` (X API v2): the arguments as a checked [`ManageRequest`], and the text of
//! what the engine reports.

use super::{read_text, Report};
use crate::cli::{DeleteArgs, GroupSendArgs};
use crate::config::{Config, ConfigError, Pipeline, ProviderKind};
use crate::engine::manage::{parse_conversation, ManageRequest, Outcome, Target};
use crate::exit::Exit;
use crate::ids::{is_conversation_id, is_numeric_id};
use crate::provider::ErrorClass;

/// Checks `delete --pipeline P --message-id ID [--conversation C]`.
pub fn prepare_delete(cfg: &Config, args: DeleteArgs) -> Result<ManageRequest, ConfigError> {
    let p = x_pipeline(cfg, args.pipeline.as_deref(), "delete")?;
    let id = args.message_id.trim().to_string();
    if !is_numeric_id(&id) {
        return Err(ConfigError(format!("--message-id `{}` must be a numeric DM event ID", shown(&id))));
    }
    if let Some(c) = args.conversation.as_deref() {
        parse_conversation(c, p)?;
    }
    Ok(ManageRequest::Delete { pipeline: p.name.clone(), message_id: id, conversation: args.conversation })
}

/// Checks `group-send --pipeline P (--conversation ID | --participant ID…) --text T`.
pub fn prepare_group_send(cfg: &Config, args: GroupSendArgs) -> Result<ManageRequest, ConfigError> {
    let p = x_pipeline(cfg, args.pipeline.as_deref(), "group-send")?;
    let text = read_text(args.text.as_deref(), args.text_file.as_deref())?;
    if text.trim().is_empty() {
        return Err(ConfigError("the message text is empty; X needs some text".into()));
    }
    let target = match &args.conversation {
        Some(c) => {
            let c = c.trim().strip_prefix("conv:").unwrap_or(c.trim()).to_string();
            if !is_conversation_id(&c) {
                return Err(ConfigError(format!(
                    "--conversation `{}` is not a conversation ID (`<id>-<id>` for 1:1, 15 to 19 digits for a group)",
                    shown(&c)
                )));
            }
            Target::Existing(c)
        }
        None => {
            // Each participant once, in the order given; the account itself is implied.
            let mut ids: Vec<String> = Vec::new();
            for id in args.participants.iter().map(|s| s.trim()) {
                if id != p.account && !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                }
            }
            if let Some(bad) = ids.iter().find(|i| !is_numeric_id(i)) {
                return Err(ConfigError(format!("--participant `{}` must be a numeric user ID", shown(bad))));
            }
            if !(2..=49).contains(&ids.len()) {
                return Err(ConfigError(format!(
                    "a new group needs 2 to 49 other participants (--participant ID, repeated); got {}",
                    ids.len()
                )));
            }
            Target::NewGroup(ids)
        }
    };
    Ok(ManageRequest::GroupSend { pipeline: p.name.clone(), target, text, resend_unknown: args.resend_unknown })
}

/// The text and exit code of a done (or failed) request.
pub fn report(req: &ManageRequest, outcome: Outcome) -> Report {
    let what = match req {
        ManageRequest::Delete { message_id, .. } => format!("delete {message_id}"),
        ManageRequest::GroupSend { .. } => "group-send".to_string(),
    };
    match outcome {
        Ok(line) => {
            let json = match req {
                ManageRequest::Delete { pipeline, message_id, .. } => serde_json::json!({
                    "ok": true, "command": "delete", "pipeline": pipeline, "message_id": message_id, "result": line,
                }),
                ManageRequest::GroupSend { pipeline, .. } => {
                    serde_json::json!({ "ok": true, "command": "group-send", "pipeline": pipeline, "result": line })
                }
            };
            Report { stdout: format!("{line}\n"), json: Some(json), ..Report::default() }
        }
        Err((class, line)) => {
            Report::error(if class == ErrorClass::Fatal { Exit::Auth } else { Exit::Failed }, format!("{what}: {line}"))
        }
    }
}

/// The pipeline a management command names; it must speak X API v2.
pub fn x_pipeline<'a>(cfg: &'a Config, name: Option<&str>, command: &str) -> Result<&'a Pipeline, ConfigError> {
    let p = cfg.pipeline(name)?;
    if p.provider != ProviderKind::XApiV2 {
        return Err(ConfigError(format!(
            "`{command}` needs a pipeline with provider = \"x-api-v2\"; `{}` uses {} (X API v2 is the provider with DM deletes and group conversations)",
            p.name, p.provider
        )));
    }
    Ok(p)
}

/// An argument as it may be echoed in an error: at most 64 characters of it.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config() -> Config {
        crate::config::from_str(
            "[[pipelines]]\nname = \"x\"\nprovider = \"x-api-v2\"\napi_key_env = \"X_TOKEN\"\naccount = \"987654321\"\nconversations = [\"44196397\"]\n",
            Path::new("/t/p.toml"),
            Path::new("/t"),
        )
        .unwrap()
    }

    fn group(participants: &[&str]) -> GroupSendArgs {
        GroupSendArgs {
            pipeline: None,
            conversation: None,
            participants: participants.iter().map(|s| s.to_string()).collect(),
            text: Some("hi".into()),
            text_file: None,
            resend_unknown: false,
        }
    }

    #[test]
    fn participants_are_counted_once_however_they_are_repeated() {
        // `1 2 1` is two participants, not three: a new group needs at least two *others*.
        let e = prepare_group_send(&config(), group(&["1", "2", "1"])).unwrap();
        assert!(matches!(e, ManageRequest::GroupSend { target: Target::NewGroup(ids), .. } if ids == ["1", "2"]));
        assert!(prepare_group_send(&config(), group(&["1", "987654321", "1"])).is_err(), "the account is implied");
        assert!(prepare_group_send(&config(), group(&["1", "x"])).unwrap_err().0.contains("numeric"));
    }

    #[test]
    fn a_huge_argument_is_not_echoed_whole() {
        let huge = "9".repeat(5_000_000);
        let args = DeleteArgs { pipeline: None, message_id: huge, conversation: None };
        let e = prepare_delete(&config(), args).unwrap_err().0;
        assert!(e.len() < 200, "{} bytes", e.len());
    }
}
