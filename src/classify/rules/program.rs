//! A rule set's conditions lowered to one flat program per signal kind, laid out in evaluation
//! order, so that a cold evaluation reads memory front to back instead of chasing boxes.
//!
//! Classification runs between requests of other spans, which stream megabytes through the
//! caches, so on the hot path its rules are nearly always cold. As trees of boxed nodes, with
//! keys and literals in their own allocations, a cold walk chased one pointer per node, key and
//! text. Here each condition is a run of small `Op`s in one vector, children after their parent,
//! and the texts it compares against sit in one string in the same order; answers are those of
//! `Node::eval`. In a cache simulation this takes about 37 of a cold span's L2 misses off
//! (README, "Where a cold classification misses").

use regex::Regex;

use super::{
    compare, equal_any, from_any, is_match, is_root_span, Attrs, Call, CmpOp, Field, Key, KeyRef,
    Lit, Node, Operand, Path, Scope, SetRef, TypeCheck, Val,
};

/// Where a text sits in [`Program::text`].
#[derive(Debug, Clone, Copy)]
struct Text {
    start: u32,
    len: u32,
}

/// One step of a program. Composite steps are followed by their parts; `end` is the index just
/// past the last of them, where evaluation goes when it decides without reading the rest.
#[derive(Debug, Clone, Copy)]
enum Op {
    Const(bool),
    And {
        end: u32,
    },
    Or {
        end: u32,
    },
    /// Followed by the condition it negates.
    Not,
    /// A subtree several rules test (see `Node::Shared`), followed by it.
    Shared {
        slot: u32,
        end: u32,
    },
    /// Followed by its two operands.
    Cmp(CmpOp),
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(Text),
    Field(Field),
    /// Followed by `keys` key steps.
    Attrs {
        of: Attrs,
        keys: u32,
    },
    KeyStr(Text),
    KeyInt(i64),
    /// Followed by its target: `regex` indexes [`Program::regexes`], `set` is where the regex
    /// sits in the rule set's per-path sets (slot, index).
    IsMatch {
        regex: u32,
        set: Option<(u32, u32)>,
        end: u32,
    },
    /// Followed by its operand.
    IsType(TypeCheck),
    /// Followed by target and prefix.
    HasPrefix,
    /// Followed by target and suffix.
    HasSuffix,
    /// Followed by target and item.
    ContainsValue {
        end: u32,
    },
    IsRootSpan,
    /// Followed by the condition each event is tested with.
    AnyEvent {
        end: u32,
    },
}

/// The conditions of the rules that can match one signal kind, lowered in rule order.
#[derive(Debug, Clone, Default)]
pub(super) struct Program {
    ops: Vec<Op>,
    text: String,
    regexes: Vec<Regex>,
    /// (index of the rule in the rule set, index of its first op), in rule order.
    rules: Vec<(usize, u32)>,
}

impl Program {
    /// Lowers `rules` (index in the rule set, folded condition), keeping their order.
    pub(super) fn lower(rules: &[(usize, Node)]) -> Program {
        let mut p = Program::default();
        for (i, node) in rules {
            let start = p.here();
            p.lower_node(node);
            p.rules.push((*i, start));
        }
        p
    }

    /// The index in the rule set of the first rule whose condition holds in `s`.
    pub(super) fn first_match(&self, s: &Scope) -> Option<usize> {
        self.rules
            .iter()
            .find(|(_, start)| self.eval(*start as usize, s).0)
            .map(|(i, _)| *i)
    }

    fn here(&self) -> u32 {
        u32::try_from(self.ops.len()).unwrap_or(u32::MAX)
    }

    fn text(&mut self, t: &str) -> Text {
        let start = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.text.push_str(t);
        Text {
            start,
            len: u32::try_from(t.len()).unwrap_or(u32::MAX),
        }
    }

    fn str(&self, t: Text) -> &str {
        let start = t.start as usize;
        self.text.get(start..start + t.len as usize).unwrap_or("")
    }

    /// Pushes a step whose `end` is filled in by `close` once its parts are lowered.
    fn open(&mut self) -> usize {
        self.ops.push(Op::Const(false));
        self.ops.len() - 1
    }

    fn close(&mut self, at: usize, op: impl FnOnce(u32) -> Op) {
        let end = self.here();
        self.ops[at] = op(end);
    }

    fn lower_node(&mut self, node: &Node) {
        match node {
            Node::Const(b) => self.ops.push(Op::Const(*b)),
            Node::And(items) | Node::Or(items) => {
                let at = self.open();
                items.iter().for_each(|n| self.lower_node(n));
                let and = matches!(node, Node::And(_));
                self.close(at, |end| if and { Op::And { end } } else { Op::Or { end } });
            }
            Node::Not(n) => {
                self.ops.push(Op::Not);
                self.lower_node(n);
            }
            Node::Shared(slot, n) => {
                let at = self.open();
                self.lower_node(n);
                let slot = u32::try_from(*slot).unwrap_or(u32::MAX);
                self.close(at, |end| Op::Shared { slot, end });
            }
            Node::Cmp(c) => {
                let (l, op, r) = &**c;
                self.ops.push(Op::Cmp(*op));
                self.lower_operand(l);
                self.lower_operand(r);
            }
            Node::Call(c) => self.lower_call(c),
        }
    }

    fn lower_operand(&mut self, op: &Operand) {
        match op {
            Operand::Lit(l) => {
                let op = match l {
                    Lit::Nil => Op::Nil,
                    Lit::Bool(b) => Op::Bool(*b),
                    Lit::Int(i) => Op::Int(*i),
                    Lit::Double(d) => Op::Double(*d),
                    Lit::Str(x) => Op::Str(self.text(x)),
                };
                self.ops.push(op);
            }
            Operand::Path(p) => self.lower_path(p),
            Operand::Call(c) => self.lower_call(c),
        }
    }

    fn lower_path(&mut self, path: &Path) {
        let (of, keys) = match path {
            Path::Field(f) => return self.ops.push(Op::Field(*f)),
            Path::Attrs(of, keys) => (*of, keys),
        };
        let n = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        self.ops.push(Op::Attrs { of, keys: n });
        for k in keys {
            let op = match k {
                Key::Str(s) => Op::KeyStr(self.text(s)),
                Key::Int(i) => Op::KeyInt(*i),
            };
            self.ops.push(op);
        }
    }

    fn lower_call(&mut self, call: &Call) {
        match call {
            Call::IsMatch(target, re, set) => {
                let at = self.open();
                self.lower_operand(target);
                let regex = u32::try_from(self.regexes.len()).unwrap_or(u32::MAX);
                self.regexes.push(re.clone());
                let set = set.map(|r| {
                    (
                        u32::try_from(r.slot).unwrap_or(u32::MAX),
                        u32::try_from(r.index).unwrap_or(u32::MAX),
                    )
                });
                self.close(at, |end| Op::IsMatch { regex, set, end });
            }
            Call::IsType(v, t) => {
                self.ops.push(Op::IsType(*t));
                self.lower_operand(v);
            }
            Call::HasPrefix(t, p) | Call::HasSuffix(t, p) => {
                let prefix = matches!(call, Call::HasPrefix(..));
                self.ops
                    .push(if prefix { Op::HasPrefix } else { Op::HasSuffix });
                self.lower_operand(t);
                self.lower_operand(p);
            }
            Call::ContainsValue(t, item) => {
                let at = self.open();
                self.lower_operand(t);
                self.lower_operand(item);
                self.close(at, |end| Op::ContainsValue { end });
            }
            Call::IsRootSpan => self.ops.push(Op::IsRootSpan),
            Call::AnyEvent(cond) => {
                let at = self.open();
                self.lower_node(cond);
                self.close(at, |end| Op::AnyEvent { end });
            }
        }
    }

    /// The answer of the condition starting at `at`, and the index just past it.
    fn eval(&self, at: usize, s: &Scope) -> (bool, usize) {
        let Some(op) = self.ops.get(at) else {
            return (false, at);
        };
        let next = at + 1;
        match *op {
            Op::Const(b) => (b, next),
            Op::And { end } | Op::Or { end } => {
                let (and, end) = (matches!(op, Op::And { .. }), end as usize);
                let mut i = next;
                while i < end {
                    let (v, after) = self.eval(i, s);
                    if v != and {
                        return (v, end);
                    }
                    i = after;
                }
                (and, end)
            }
            Op::Not => {
                let (v, after) = self.eval(next, s);
                (!v, after)
            }
            // Shared steps sit outside any `AnyEvent`, so `s.event` is always `None` there.
            Op::Shared { slot, end } => {
                let v = match s.memo.and_then(|m| m.shared.get(slot as usize)) {
                    Some(cell) if s.event.is_none() => *cell.get_or_init(|| self.eval(next, s).0),
                    _ => self.eval(next, s).0,
                };
                (v, end as usize)
            }
            Op::Cmp(cmp) => {
                let (l, after) = self.value(next, s);
                let (r, after) = self.value(after, s);
                (compare(l, cmp, r), after)
            }
            _ => self.eval_call(at, s),
        }
    }

    /// The value of the operand starting at `at`, and the index just past it.
    fn value<'a>(&'a self, at: usize, s: &Scope<'a>) -> (Val<'a>, usize) {
        let Some(op) = self.ops.get(at) else {
            return (Val::Nil, at);
        };
        let next = at + 1;
        match *op {
            Op::Nil => (Val::Nil, next),
            Op::Bool(b) => (Val::Bool(b), next),
            Op::Int(i) => (Val::Int(i), next),
            Op::Double(d) => (Val::Double(d), next),
            Op::Str(t) => (Val::Str(self.str(t)), next),
            Op::Field(f) => (f.value(s), next),
            Op::Attrs { of, keys } => {
                let end = next + keys as usize;
                let keys = self
                    .ops
                    .get(next..end)
                    .unwrap_or(&[])
                    .iter()
                    .map(|k| match *k {
                        Op::KeyInt(i) => KeyRef::Int(i),
                        Op::KeyStr(t) => KeyRef::Str(self.str(t)),
                        _ => KeyRef::Str(""),
                    });
                (of.lookup(s, keys), end)
            }
            _ => {
                let (v, after) = self.eval_call(at, s);
                (Val::Bool(v), after)
            }
        }
    }

    /// The answer of the function call starting at `at`, and the index just past it.
    fn eval_call(&self, at: usize, s: &Scope) -> (bool, usize) {
        let Some(op) = self.ops.get(at) else {
            return (false, at);
        };
        let next = at + 1;
        match *op {
            Op::IsMatch { regex, set, end } => {
                let Some(re) = self.regexes.get(regex as usize) else {
                    return (false, end as usize);
                };
                let direct = || is_match(re, self.value(next, s).0);
                let v = match (s.memo, set) {
                    (Some(memo), Some((slot, index))) => {
                        let at = SetRef {
                            slot: slot as usize,
                            index: index as usize,
                        };
                        memo.is_match(at, s, direct)
                    }
                    _ => direct(),
                };
                (v, end as usize)
            }
            Op::IsType(t) => {
                let (v, after) = self.value(next, s);
                (t.holds(v), after)
            }
            Op::HasPrefix | Op::HasSuffix => {
                let (t, after) = self.value(next, s);
                let (p, after) = self.value(after, s);
                let v = match (t, p) {
                    (Val::Str(t), Val::Str(p)) if matches!(op, Op::HasPrefix) => t.starts_with(p),
                    (Val::Str(t), Val::Str(p)) => t.ends_with(p),
                    _ => false,
                };
                (v, after)
            }
            Op::ContainsValue { end } => {
                let (t, after) = self.value(next, s);
                let v = match t {
                    Val::List(items) => {
                        let item = self.value(after, s).0;
                        items.iter().any(|v| equal_any(from_any(v), item))
                    }
                    _ => false,
                };
                (v, end as usize)
            }
            Op::IsRootSpan => (is_root_span(s), next),
            Op::AnyEvent { end } => {
                let v = s.ctx.span.events.iter().any(|e| {
                    let inner = Scope {
                        ctx: s.ctx,
                        event: Some(e),
                        memo: s.memo,
                    };
                    self.eval(next, &inner).0
                });
                (v, end as usize)
            }
            // Operands and keys never start a condition; a malformed program answers false.
            _ => (false, next),
        }
    }
}

/// The step types of a lowered program, to check its size in tests.
#[cfg(test)]
pub(super) fn op_size() -> usize {
    std::mem::size_of::<Op>()
}
