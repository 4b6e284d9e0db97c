//! Fingerprints: a stable identity for "the same failure", with variable parts of messages masked.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Messages longer than this are cut before masking: the head identifies the failure.
const MAX_MESSAGE_CHARS: usize = 512;

static VARIABLE_PARTS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r#"(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"#,
        r#"|(?P<quoted>"[^"]*"|'[^']*'|`[^`]*`)"#,
        r#"|(?P<url>\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+)"#,
        r#"|(?P<email>\b[\w.+-]+@[\w-]+\.[\w.-]+\b)"#,
        r#"|(?P<path>(?:[A-Za-z]:)?(?:[/\\][\w.-]+){2,}[/\\]?)"#,
        r#"|(?P<hex>\b0[xX][0-9a-fA-F]+\b|\b[0-9a-fA-F]*[0-9][0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*\b|\b[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*[0-9][0-9a-fA-F]*\b)"#,
        r#"|(?P<num>[-+]?\b\d+(?:[.,:]\d+)*)"#,
    ))
    .expect("fingerprint mask regex is valid")
});

/// Replaces ids, numbers, hex, quoted values, paths, urls and emails with placeholders.
pub fn mask(message: &str) -> Cow<'_, str> {
    let head = match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => &message[..i],
        None => message,
    };
    // Only the match bounds are searched for (no capture groups, which would take a second,
    // backtracking search per match); which alternative matched is read off the matched text.
    let mut matches = VARIABLE_PARTS.find_iter(head);
    let Some(first) = matches.next() else {
        return Cow::Borrowed(head);
    };
    let mut out = String::with_capacity(head.len());
    let mut last = 0;
    for m in std::iter::once(first).chain(matches) {
        out.push_str(&head[last..m.start()]);
        out.push_str(placeholder(m.as_str()));
        last = m.end();
    }
    out.push_str(&head[last..]);
    Cow::Owned(out)
}

/// The placeholder for a match of [`VARIABLE_PARTS`]: which of its alternatives matched, told
/// apart by characters only that alternative can contain (checked in the regex's order):
/// - `quoted` is the only one that starts with a quote;
/// - of the rest, only `url` contains `://` (email and path have no `:` before a `/`);
/// - then only `email` contains `@`;
/// - then only `path` contains `/` or `\`;
/// - then only `uuid` contains `-` after its first character (a number's sign comes first);
/// - then only `hex` contains an ASCII letter (`0x…` or a hex digit a-f);
/// - what is left is a `num`.
fn placeholder(m: &str) -> &'static str {
    let b = m.as_bytes();
    if matches!(b.first(), Some(b'"' | b'\'' | b'`')) {
        "<quoted>"
    } else if m.contains("://") {
        "<url>"
    } else if b.contains(&b'@') {
        "<email>"
    } else if b.iter().any(|c| matches!(c, b'/' | b'\\')) {
        "<path>"
    } else if b.iter().skip(1).any(|c| *c == b'-') {
        "<uuid>"
    } else if b.iter().any(u8::is_ascii_alphabetic) {
        "<hex>"
    } else {
        "<num>"
    }
}

/// What a fingerprint is made of: agent + span/tool name + error type + masked message. The
/// class is not part of it, so a relabel (or a model that learns) never moves a failure to
/// another issue.
#[derive(Debug, Clone, Copy)]
pub struct FingerprintParts<'a> {
    pub agent: &'a str,
    pub operation: &'a str,
    pub error_type: &'a str,
    pub message: &'a str,
}

/// The fingerprint: 16 hex digits of XXH3-64 over the parts, the message masked.
pub fn fingerprint(p: &FingerprintParts) -> String {
    let masked = mask(p.message);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [p.agent, p.operation, p.error_type, masked.as_ref()] {
        h.update(part.as_bytes());
        h.update(&[0x1f]);
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_variable_parts() {
        assert_eq!(
            mask("order 12345 for user 'bob' failed after 3.5s at /var/data/x.json"),
            "order <num> for user <quoted> failed after <num>s at <path>"
        );
        assert_eq!(
            mask("request 3f2a9c1e-1b2c-4d5e-8f90-a1b2c3d4e5f6 got 0xdeadbeef"),
            "request <uuid> got <hex>"
        );
        assert_eq!(
            mask("GET https://api.x.com/v1/items?id=9 returned 503"),
            "GET <url> returned <num>"
        );
        assert_eq!(mask("Timeout"), "Timeout");
        assert_eq!(
            mask("trace a1b2c3d4e5f60718 missing"),
            "trace <hex> missing"
        );
    }

    #[test]
    fn same_failure_same_fingerprint() {
        let a = FingerprintParts {
            agent: "support",
            operation: "lookup_order",
            error_type: "TimeoutError",
            message: "order 123 timed out after 30s",
        };
        let b = FingerprintParts {
            message: "order 98765 timed out after 31s",
            ..a
        };
        let c = FingerprintParts {
            error_type: "ValueError",
            ..a
        };
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a).len(), 16);
        let d = FingerprintParts {
            operation: "refund",
            ..a
        };
        assert_ne!(fingerprint(&a), fingerprint(&d));
    }
}
