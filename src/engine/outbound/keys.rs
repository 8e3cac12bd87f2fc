//! Idempotency keys: the identity of a send job everywhere (ledger, `Idempotency-Key` header, record).

use super::JobError;

/// FNV-1a, 128 bits: tiny, stable across Rust versions and platforms (unlike `std::hash`), and wide enough
/// that two different jobs never share a default key in practice.
pub fn fnv1a_128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash apart.
            h ^= 0xff;
            h = h.wrapping_mul(PRIME);
        }
        for b in *part {
            h ^= u128::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The default idempotency key of a job: `dmh-` and 32 hex digits of (pipeline, recipient ID, text, media).
/// The same job always gets the same key, here or on another machine, so the provider's own replay
/// protection holds even if the state directory is lost.
pub fn default_key(pipeline: &str, recipient: &str, text: &str, media: Option<&str>) -> String {
    let h = fnv1a_128(&[b"dmh1", pipeline.as_bytes(), recipient.as_bytes(), text.as_bytes(), media_part(media)]);
    format!("dmh-{h:032x}")
}

/// The hash the ledger keeps of what a key was used for: recipient, text, media.
pub(super) fn payload_hash(recipient: &str, text: &str, media: Option<&str>) -> String {
    let h = fnv1a_128(&[b"payload1", recipient.as_bytes(), text.as_bytes(), media_part(media)]);
    format!("{h:032x}")
}

fn media_part(media: Option<&str>) -> &[u8] {
    // "\u{0}" cannot be a media identity, so "no media" and any media hash apart.
    media.map(str::as_bytes).unwrap_or(b"\0")
}

/// The upload's key, derived from the send's: `<key>-media`, or a hash when that would pass 255 characters.
pub fn media_key(key: &str) -> String {
    if key.len() <= 249 {
        format!("{key}-media")
    } else {
        format!("dmh-media-{:032x}", fnv1a_128(&[key.as_bytes()]))
    }
}

/// The key of an `upload-media` run without `--idempotency-key`: the same media in the same pipeline
/// always gets the same key, so uploading it again returns the same media ID instead of a second upload.
pub fn upload_key(pipeline: &str, media_identity: &str) -> String {
    format!("dmh-upload-{:032x}", fnv1a_128(&[b"upload1", pipeline.as_bytes(), media_identity.as_bytes()]))
}

/// Xquik's rule for `Idempotency-Key`: `^[!-~]{1,255}$`.
pub fn check_key(key: &str) -> Result<&str, JobError> {
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        Ok(key)
    } else {
        Err(JobError::input(
            "invalid_idempotency_key",
            "an idempotency key is 1 to 255 printable ASCII characters without spaces".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_the_reference_vectors() {
        assert_eq!(fnv1a_128(&[b""]), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a_128(&[b"a"]), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn default_keys_are_stable_valid_and_tell_jobs_apart() {
        let k = default_key("support", "44196397", "Thanks, fixed!", None);
        assert_eq!(k, default_key("support", "44196397", "Thanks, fixed!", None));
        assert!(k.starts_with("dmh-") && k.len() == 36, "{k}");
        assert!(check_key(&k).is_ok());
        let others = [
            default_key("sales", "44196397", "Thanks, fixed!", None),
            default_key("support", "44196398", "Thanks, fixed!", None),
            default_key("support", "44196397", "Thanks, fixed", None),
            default_key("support", "44196397", "Thanks, fixed!", Some("url:https://x.test/a.png")),
            default_key("support", "4419639", "7Thanks, fixed!", None),
        ];
        for o in &others {
            assert_ne!(&k, o);
        }
        assert!(!k.contains("Thanks"));
        assert_eq!(media_key(&k), format!("{k}-media"));
        let long = "k".repeat(255);
        assert!(check_key(&media_key(&long)).is_ok());
    }

    #[test]
    fn keys_follow_the_providers_pattern() {
        for good in ["a", "dmh-1", "!~", &"x".repeat(255)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "tab\there", "ünï", &"x".repeat(256)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
