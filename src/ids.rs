//! The shapes of X identifiers, in one place: every layer that checks or builds an ID asks here, so
//! the config, the records and the adapters can never disagree about what a user ID or a 1:1
//! conversation ID is. A leaf.

/// An X user, event or media ID: 1 to 19 ASCII digits (X's `^[0-9]{1,19}$`).
pub fn is_numeric_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The 1:1 conversation ID X and GetXAPI use: `"<smaller>-<larger>"` of the two numeric user IDs
/// (numerically, not lexicographically). None when either is not numeric.
pub fn one_to_one_id(a: &str, b: &str) -> Option<String> {
    if !is_numeric_id(a) || !is_numeric_id(b) {
        return None;
    }
    let (x, y) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
    Some(format!("{}-{}", x.min(y), x.max(y)))
}

/// X's pattern for a conversation ID: `^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$`.
pub fn is_conversation_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((a, b)) => is_numeric_id(a) && is_numeric_id(b),
        None => is_numeric_id(id) && id.len() >= 15,
    }
}

/// IDs become sled key parts and sit next to file names: a provider's ID outside this alphabet is
/// not taken as an ID at all.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_and_conversation_ids() {
        assert!(is_numeric_id("44196397") && is_numeric_id(&"9".repeat(19)));
        assert!(!is_numeric_id("") && !is_numeric_id(&"9".repeat(20)) && !is_numeric_id("-5") && !is_numeric_id("1a"));
        assert_eq!(one_to_one_id("987654321", "44196397").as_deref(), Some("44196397-987654321"));
        assert_eq!(one_to_one_id("9", "10").as_deref(), Some("9-10"), "numeric, not lexicographic");
        assert_eq!(one_to_one_id("acme", "10"), None);
        assert!(is_conversation_id("44196397-987654321") && is_conversation_id("1578398451921985538"));
        assert!(!is_conversation_id("12") && !is_conversation_id("1-2-3") && !is_conversation_id("a-1"));
        assert!(is_safe_id("abc-1_2") && !is_safe_id("../x") && !is_safe_id(""));
    }
}
