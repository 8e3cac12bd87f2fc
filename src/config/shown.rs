//! How values the user or the config gave are shown back in messages: short, on one line, and without a
//! secret that was pasted where it does not belong. Every message that echoes a config value or an
//! argument goes through [`short`]; every one that shows a URL goes through [`url`].

/// Longest echo of a user's value, in characters; longer ones are cut and say how long they were.
const MAX_SHOWN: usize = 64;

/// A user-supplied value as a message shows it: at most `MAX_SHOWN` (64) characters (a 5 MB argument is not
/// echoed whole), control characters as `?` so it stays on one line.
pub fn short(s: &str) -> String {
    let clean = |c: char| if invisible(c) { '?' } else { c };
    if s.chars().count() <= MAX_SHOWN {
        return s.chars().map(clean).collect();
    }
    let head: String = s.chars().take(MAX_SHOWN - 16).map(clean).collect();
    format!("{head}… ({} bytes)", s.len())
}

/// A character that changes how text around it is shown instead of showing itself: a control character
/// (NUL, ESC, newline), a bidi override or isolate (U+202E turns `gpj.exe` around), a zero-width
/// character, a line or paragraph separator. An identity string (an `account`) holding one would be
/// written into every record and shown misleadingly by every tool that reads them.
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// The first [`invisible`] character of `s`, as `U+202E` for a message (the character itself would act).
pub fn first_invisible(s: &str) -> Option<String> {
    s.chars().find(|c| invisible(*c)).map(|c| format!("U+{:04X}", c as u32))
}

/// A URL as messages show it: credentials (`user:password@`) and query values replaced by `***`, and the
/// result [`short`]-ened if it is still long. A URL that does not parse is shown with everything up to
/// its last `@` masked.
pub fn url(s: &str) -> String {
    match reqwest::Url::parse(s) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_password(None);
                let _ = u.set_username("***");
            }
            if u.query().is_some() {
                let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
                u.query_pairs_mut().clear().extend_pairs(names.iter().map(|k| (k.as_str(), "***")));
            }
            u.set_fragment(None);
            let shown = u.to_string();
            // The Url type adds a `/` to a bare host; the config's form has none.
            let shown =
                if s.ends_with('/') { shown } else { shown.strip_suffix('/').map(str::to_string).unwrap_or(shown) };
            // `***` in the userinfo is percent-encoded by the Url type; show it as written.
            short(&shown.replace("%2A%2A%2A", "***"))
        }
        Err(_) => match s.rfind('@') {
            Some(at) => {
                let scheme = s.find("://").map(|i| i + 3).filter(|&i| i <= at).unwrap_or(0);
                short(&format!("{}***{}", &s[..scheme], &s[at..]))
            }
            None => short(s),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_never_show() {
        assert_eq!(url("https://user:hunter2@api.example.com/v1"), "https://***@api.example.com/v1");
        assert_eq!(url("https://xq_secret@api.example.com"), "https://***@api.example.com");
        assert_eq!(url("http://127.0.0.1:8787/api/v1"), "http://127.0.0.1:8787/api/v1");
        assert_eq!(url("https://api.example.com/v1?key=hunter2&b=2"), "https://api.example.com/v1?key=***&b=***");
        assert_eq!(url("https://api.x.com"), "https://api.x.com");
        let bad = url("ht!tp://user:hunter2@host");
        assert!(!bad.contains("hunter2") && bad.contains("@host"), "{bad}");
    }

    #[test]
    fn long_values_are_cut_and_say_so() {
        let huge = "1".repeat(5 * 1024 * 1024);
        let s = short(&huge);
        assert!(s.len() < 100 && s.ends_with("(5242880 bytes)"), "{s}");
        assert_eq!(short("a\nb"), "a?b");
        assert_eq!(short("44196397"), "44196397");
    }
}
