//! The key layout of the state database: one prefix byte per kind of entry, then NUL-separated parts;
//! numeric IDs zero-padded so a conversation's keys range-scan in ID order.

use crate::record::{Key, Kind};

pub(super) fn key(prefix: u8, parts: &[&str]) -> Vec<u8> {
    // Sized once: a key is built for every page's commit and every lookup.
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.push(0);
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The ID as a number, if it is one in canonical form (no sign, no leading zero) that fits a u64.
pub fn numeric_id(id: &str) -> Option<u64> {
    if id.is_empty()
        || id.len() > 20
        || (id.len() > 1 && id.starts_with('0'))
        || !id.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    id.parse().ok()
}

/// A numeric ID as keys store it: zero-padded to 20 digits, so keys sort numerically.
pub(super) fn padded(n: u64) -> String {
    format!("{n:020}")
}

/// The form an ID takes in a key: numbers padded, anything else as it is.
pub(super) fn stored_id(id: &str) -> std::borrow::Cow<'_, str> {
    match numeric_id(id) {
        Some(n) => padded(n).into(),
        None => id.into(),
    }
}

/// Reads a padded ID back from a whole seen key; None for an ID stored as it is.
pub(super) fn padded_id(k: &[u8]) -> Option<u64> {
    let at = k.len().checked_sub(21)?;
    let part = &k[at + 1..];
    if k[at] != 0 || !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(part).ok()?.parse().ok()
}

pub(super) fn seen_key(pipeline: &str, k: &Key) -> Vec<u8> {
    seen_key_of(pipeline, &k.conversation, k.kind, &k.id)
}

/// [`seen_key`] from its parts, for keys that travel without a [`Key`] (a `SeenPage`'s).
pub(super) fn seen_key_of(pipeline: &str, conversation: &str, kind: Kind, id: &str) -> Vec<u8> {
    key(b's', &[pipeline, conversation, kind.as_str(), &stored_id(id)])
}

/// Kinds whose IDs come from a conversation's history, and so can be folded into its covered range.
pub(super) const HISTORY_KINDS: [Kind; 2] = [Kind::DmMessage, Kind::DmEvent];

pub(super) fn is_history(kind: Kind) -> bool {
    HISTORY_KINDS.contains(&kind)
}
