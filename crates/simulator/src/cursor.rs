//! Opaque, tamper-evident page cursors shared by every simulated provider.
//!
//! A cursor is a small internal position (which conversation, and either an offset into the
//! newest-first list or an exclusive id bound), scrambled with a key derived from the seed and
//! sealed with a tag, then encoded in base64 STANDARD with padding. The encoding is chosen so
//! that every cursor contains `+`, `/` and `=`: a client that forgets to URL-encode it turns `+`
//! into a space and gets `400 invalid cursor`, exactly like a careless client of the real API.
//! Whether a position may be used for a given request is the provider module's business.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::content::mix2;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 6;
const PLAIN_LEN: usize = 18;
const TAG_LEN: usize = 8;
const RAW_LEN: usize = NONCE_LEN + PLAIN_LEN + TAG_LEN;

/// Where the next page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// Skip this many messages of the newest-first list as it is when the request arrives.
    Offset(u64),
    /// Only messages whose id is strictly below this one.
    Below(u64),
}

/// A cursor that failed to decode or verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor")]
pub(crate) struct InvalidCursor;

/// Encodes and verifies cursors with keys derived from the simulator seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CursorCodec {
    enc_key: u64,
    mac_key: u64,
}

impl CursorCodec {
    pub(crate) fn new(seed: u64) -> CursorCodec {
        CursorCodec { enc_key: mix2(seed, 0x6375_7273_6f72_0001), mac_key: mix2(seed, 0x6375_7273_6f72_0002) }
    }

    /// Encodes `pos` for conversation `conv`. `nonce` is asked for fresh values until the text
    /// contains both `+` and `/` (about two tries on average; bounded).
    pub(crate) fn encode(&self, conv: u64, pos: Position, mut nonce: impl FnMut() -> u64) -> String {
        let mut last = String::new();
        for _ in 0..64 {
            last = self.encode_with_nonce(conv, pos, nonce());
            if last.contains('+') && last.contains('/') {
                break;
            }
        }
        last
    }

    pub(crate) fn encode_with_nonce(&self, conv: u64, pos: Position, nonce: u64) -> String {
        let (kind, value) = match pos {
            Position::Offset(k) => (0u8, k),
            Position::Below(id) => (1u8, id),
        };
        let mut plain = [0u8; PLAIN_LEN];
        plain[0] = VERSION;
        plain[1] = kind;
        plain[2..10].copy_from_slice(&conv.to_be_bytes());
        plain[10..18].copy_from_slice(&value.to_be_bytes());

        let mut raw = [0u8; RAW_LEN];
        raw[..NONCE_LEN].copy_from_slice(&nonce.to_be_bytes()[8 - NONCE_LEN..]);
        let nonce_v = nonce_value(&raw[..NONCE_LEN]);
        for (k, b) in plain.iter().enumerate() {
            raw[NONCE_LEN + k] = b ^ self.keystream(nonce_v, k);
        }
        let tag = self.tag(&raw[..NONCE_LEN + PLAIN_LEN]);
        raw[NONCE_LEN + PLAIN_LEN..].copy_from_slice(&tag.to_be_bytes());
        STANDARD.encode(raw)
    }

    /// Decodes and verifies a cursor, returning its conversation and position.
    pub(crate) fn decode(&self, text: &str) -> Result<(u64, Position), InvalidCursor> {
        let raw = STANDARD.decode(text).map_err(|_| InvalidCursor)?;
        if raw.len() != RAW_LEN {
            return Err(InvalidCursor);
        }
        let (sealed, tag) = raw.split_at(NONCE_LEN + PLAIN_LEN);
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        if u64::from_be_bytes(tag_bytes) != self.tag(sealed) {
            return Err(InvalidCursor);
        }
        let nonce_v = nonce_value(&sealed[..NONCE_LEN]);
        let mut plain = [0u8; PLAIN_LEN];
        for (k, b) in sealed[NONCE_LEN..].iter().enumerate() {
            plain[k] = b ^ self.keystream(nonce_v, k);
        }
        if plain[0] != VERSION {
            return Err(InvalidCursor);
        }
        let mut conv = [0u8; 8];
        conv.copy_from_slice(&plain[2..10]);
        let mut value = [0u8; 8];
        value.copy_from_slice(&plain[10..18]);
        let value = u64::from_be_bytes(value);
        let pos = match plain[1] {
            0 => Position::Offset(value),
            1 => Position::Below(value),
            _ => return Err(InvalidCursor),
        };
        Ok((u64::from_be_bytes(conv), pos))
    }

    fn keystream(&self, nonce: u64, k: usize) -> u8 {
        let block = mix2(self.enc_key ^ nonce, (k / 8) as u64);
        block.to_be_bytes()[k % 8]
    }

    fn tag(&self, bytes: &[u8]) -> u64 {
        let mut h = self.mac_key;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = mix2(h, u64::from_be_bytes(word));
        }
        mix2(h, bytes.len() as u64)
    }
}

fn nonce_value(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n += 1;
            mix2(n, 99)
        }
    }

    #[test]
    fn round_trips_and_looks_opaque() {
        let codec = CursorCodec::new(7);
        for pos in [Position::Offset(0), Position::Offset(25), Position::Below(1 << 60)] {
            let text = codec.encode(44196397, pos, counter());
            assert!(text.contains('+') && text.contains('/') && text.ends_with('='), "{text}");
            assert!(!text.contains("44196397"));
            assert_eq!(codec.decode(&text), Ok((44196397, pos)));
        }
    }

    #[test]
    fn same_position_gives_different_texts() {
        let codec = CursorCodec::new(7);
        let mut next = counter();
        let a = codec.encode(1, Position::Offset(20), &mut next);
        let b = codec.encode(1, Position::Offset(20), &mut next);
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_tampering_other_seeds_and_space_for_plus() {
        let codec = CursorCodec::new(7);
        let text = codec.encode(5, Position::Offset(40), counter());
        // Flip each character in turn: every variant must be refused.
        for k in 0..text.len() - 1 {
            let mut bytes = text.clone().into_bytes();
            bytes[k] = if bytes[k] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            if tampered != text {
                assert_eq!(codec.decode(&tampered), Err(InvalidCursor), "{tampered}");
            }
        }
        assert_eq!(codec.decode(&text.replace('+', " ")), Err(InvalidCursor));
        assert_eq!(codec.decode(&text.replace('=', "")), Err(InvalidCursor));
        assert_eq!(CursorCodec::new(8).decode(&text), Err(InvalidCursor));
        assert_eq!(codec.decode(""), Err(InvalidCursor));
        assert_eq!(codec.decode("1893456789012345677"), Err(InvalidCursor));
    }
}
