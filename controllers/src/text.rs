//! Text that reaches status, Events and logs from outside the operator
//! (planner answers, agents' termination messages, names a user chose):
//! made safe to print, bounded, and free of credentials. Pure.

/// Characters that change how a terminal or a browser shows the text around
/// them without showing themselves: bidirectional overrides and isolates
/// (the "Trojan Source" characters), zero-width characters, the byte order
/// mark, and the line and paragraph separators.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// `s` made safe to show in `kubectl get`/`describe`: line breaks and tabs
/// become spaces, every other control character (ANSI escapes, NUL, DEL,
/// C1) and every invisible formatting character (bidirectional overrides,
/// zero-width characters) is written as a visible escape such as `\u{1b}`.
/// Nothing is dropped silently, so a reader still sees that something was
/// there.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `s` needs no change to be shown (see [`sanitize`]).
pub fn is_clean(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() || is_invisible_format(c))
}

/// [`sanitize`]d and cut to at most `max` bytes on a character boundary,
/// marking the cut with `...`.
pub fn bounded(s: &str, max: usize) -> String {
    let clean = sanitize(s);
    if clean.len() <= max {
        return clean;
    }
    let mut end = max.saturating_sub(3);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &clean[..end])
}

/// A URL as it may be shown: credentials (`user:password@`) and the query
/// string are replaced by `***`, so a secret in either never reaches status,
/// an Event or a log line. Not a URL: shown as `(an invalid URL)`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "(an invalid URL)".to_string();
    };
    let had_credentials = !parsed.username().is_empty() || parsed.password().is_some();
    if had_credentials {
        // Both setters fail only for URLs that cannot have credentials.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username("***");
    }
    if parsed.query().is_some() {
        parsed.set_query(Some("***"));
    }
    parsed.set_fragment(None);
    sanitize(parsed.as_str())
}

/// Replaces every occurrence of `url` in `text` by [`redact_url`]`(url)`,
/// and every occurrence of its password, for messages (such as an HTTP
/// client's error) that quote the URL or its parts.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Ok(parsed) = reqwest::Url::parse(url) {
        if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
            out = out.replace(password, "***");
        }
        if !parsed.username().is_empty() {
            out = out.replace(&format!("{}@", parsed.username()), "***@");
        }
        if let Some(query) = parsed.query().filter(|q| !q.is_empty()) {
            out = out.replace(query, "***");
            for (_, value) in parsed.query_pairs().filter(|(_, v)| !v.is_empty()) {
                out = out.replace(value.as_ref(), "***");
            }
        }
    }
    out
}

/// `base` + `suffix`, at most `max` characters: when too long, `base` is cut
/// and an 8-hex hash of the whole keeps names distinct and deterministic
/// (Kubernetes names and label values the operator derives from a user's).
pub fn bounded_name(base: &str, suffix: &str, max: usize) -> String {
    let full = format!("{base}{suffix}");
    if full.len() <= max {
        return full;
    }
    let hash = &crate::domain::sha256_hex(full.as_bytes())[..8];
    let keep = max.saturating_sub(suffix.len() + 9);
    let cut: String = base.chars().take(keep).collect();
    format!("{}-{hash}{suffix}", cut.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_bidi_overrides_become_visible() {
        let evil = "ok\u{1b}[31mRED\u{1b}[0m\nnext\u{202e}txt.exe\u{0}\u{7f}\u{9b}";
        let clean = sanitize(evil);
        assert_eq!(
            clean,
            "ok\\u{1b}[31mRED\\u{1b}[0m next\\u{202e}txt.exe\\u{0}\\u{7f}\\u{9b}"
        );
        assert!(is_clean(&clean));
        assert!(!is_clean(evil));
        // Ordinary text, accents and other scripts pass untouched.
        assert_eq!(sanitize("Zürich – 東京 ok"), "Zürich – 東京 ok");
    }

    #[test]
    fn bounded_cuts_after_escaping() {
        let s = "\u{1b}".repeat(100);
        let b = bounded(&s, 40);
        assert!(b.len() <= 40, "{b}");
        assert!(b.ends_with("..."));
        assert!(is_clean(&b));
    }

    #[test]
    fn credentials_and_queries_are_redacted() {
        assert_eq!(
            redact_url("http://alice:s3cret@planner.example:8080/plan?token=abc#x"),
            "http://***@planner.example:8080/plan?***"
        );
        assert_eq!(
            redact_url("https://token123@planner.example/plan"),
            "https://***@planner.example/plan"
        );
        assert_eq!(redact_url("http://p.example/plan"), "http://p.example/plan");
        assert_eq!(redact_url("not a url"), "(an invalid URL)");
    }

    #[test]
    fn redaction_inside_a_message_covers_the_url_and_its_parts() {
        let url = "http://alice:s3cret@127.0.0.1:9/plan?key=k3y";
        let msg = format!("error sending request for url ({url}): s3cret k3y alice@");
        let out = redact_in(&msg, url);
        assert!(
            !out.contains("s3cret") && !out.contains("k3y") && !out.contains("alice"),
            "{out}"
        );
    }
}
