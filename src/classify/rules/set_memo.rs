//! Per-thread memo of regex-set answers for short texts without digits (names, types, labels).
//!
//! A path's regex set answers the same for the same text, and most texts the built-in packs
//! test repeat from span to span: `signal.name` (an exception type, an evaluation's name),
//! `gen_ai.tool.name`, a label, a span name. In place the set's lazy DFA is cold after the
//! request bytes a worker streams between two signal spans, so a walk over even 15 bytes is
//! a chain of cache misses; a hit here is one small table lookup. Texts with a digit (most
//! messages carry ids or numbers) are not kept: they seldom repeat, and would push out those
//! that do. The answer is the exact one: a hit compares the whole text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::failure::IdHash;

/// Texts longer than this (in bytes) are not kept.
pub const MAX_TEXT: usize = 64;
/// Answers kept per thread; at the cap the memo starts over.
const CAP: usize = 512;

/// A process-unique id for a regex set, so that answers of one rule set are never taken for
/// another's (rules are reloaded without a restart).
pub fn next_set_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether `text`'s answers are kept: short, and without an ASCII digit.
pub fn keeps(text: &str) -> bool {
    text.len() <= MAX_TEXT && !text.bytes().any(|b| b.is_ascii_digit())
}

/// One kept answer: which patterns of set `set` match `text`, as bits.
struct Entry {
    set: u64,
    text: Box<str>,
    bits: u128,
}

type Memo = HashMap<u64, Entry, IdHash>;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::default();
}

/// The answer of set `set` for `text`: kept, or `compute`d and kept. Call only for texts
/// [`keeps`] accepts (others would only crowd the memo).
pub fn answer(set: u64, text: &str, compute: impl FnOnce() -> u128) -> u128 {
    let key = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), set);
    MEMO.with_borrow_mut(|memo| {
        if let Some(e) = memo.get(&key) {
            if e.set == set && *e.text == *text {
                return e.bits;
            }
        }
        let bits = compute();
        if memo.len() >= CAP {
            memo.clear();
        }
        memo.insert(
            key,
            Entry {
                set,
                text: text.into(),
                bits,
            },
        );
        bits
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_per_set_and_text() {
        let (a, b) = (next_set_id(), next_set_id());
        let mut calls = 0;
        let mut ask = |set, text: &str, bits| {
            answer(set, text, || {
                calls += 1;
                bits
            })
        };
        assert_eq!(ask(a, "TimeoutError", 0b101), 0b101);
        assert_eq!(ask(a, "TimeoutError", 0b111), 0b101, "kept");
        assert_eq!(ask(b, "TimeoutError", 0b010), 0b010, "another set");
        assert_eq!(ask(a, "TimeoutErrors", 0b000), 0b000, "another text");
        assert_eq!(calls, 3);
    }

    #[test]
    fn the_memo_is_capped() {
        let set = next_set_id();
        let texts: Vec<String> = (0..CAP * 3)
            .map(|i| {
                // Digit-free distinct texts.
                let mut t = String::new();
                let mut n = i;
                loop {
                    t.push(char::from(b'a' + (n % 26) as u8));
                    n /= 26;
                    if n == 0 {
                        break;
                    }
                }
                t
            })
            .collect();
        for t in &texts {
            assert!(keeps(t));
            answer(set, t, || 1);
        }
        assert!(MEMO.with_borrow(|m| m.len()) <= CAP);
    }

    #[test]
    fn texts_with_digits_or_long_ones_are_not_kept() {
        assert!(keeps("TimeoutError"));
        assert!(keeps(""));
        assert!(!keeps("order 4711 not found"));
        assert!(!keeps(&"x".repeat(MAX_TEXT + 1)));
        assert!(keeps(&"x".repeat(MAX_TEXT)));
    }
}
