//! Classification rules: an OTTL condition subset, compiled once and evaluated on failing spans.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::Span;
use regex::{Regex, RegexSet, SetMatches};
use serde::{Deserialize, Serialize};

use crate::classify::signals::{Signal, SignalKind};
use crate::otlp::attributes::get;

mod program;
mod set_memo;

use program::Program;

/// What a rule sees: the decoded span, its resource and scope, and the primary detected signal.
pub struct EvalContext<'a> {
    pub span: &'a Span,
    pub resource: Option<&'a Resource>,
    pub scope: Option<&'a InstrumentationScope>,
    pub signal: &'a Signal,
}

/// A rule as written in config (also what builtin packs return).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub class: String,
    pub condition: String,
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    #[serde(default)]
    pub description: String,
}

fn default_confidence() -> f64 {
    0.9
}

/// A condition that failed to compile: where (1-based character column in the condition) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// A rule whose condition failed to compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: column {column}: {message}")]
pub struct RuleError {
    pub rule: String,
    pub column: usize,
    pub message: String,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub class: String,
    pub confidence: f64,
    pub condition: Condition,
}

/// Compile a rule; the error names the rule, the column and what was expected.
pub fn compile_rule(spec: &RuleSpec) -> Result<CompiledRule, RuleError> {
    let condition = Condition::compile(&spec.condition).map_err(|e| RuleError {
        rule: spec.name.clone(),
        column: e.column,
        message: e.message,
    })?;
    Ok(CompiledRule {
        name: spec.name.clone(),
        class: spec.class.clone(),
        confidence: spec.confidence,
        condition,
    })
}

/// First matching rule in order wins.
pub fn first_match<'r>(rules: &'r [CompiledRule], ctx: &EvalContext) -> Option<&'r CompiledRule> {
    rules.iter().find(|r| r.condition.eval(ctx))
}

/// A compiled condition, e.g.
/// `span.status.code == STATUS_CODE_ERROR and IsMatch(span.attributes["error.type"], "(?i)timeout")`.
///
/// Compiling resolves paths, enums and functions and compiles regexes, so evaluation walks a
/// small tree and allocates nothing in the common case. The language is described in
/// `docs/rules.md`.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    root: Node,
}

impl Condition {
    /// Parses and checks `source`: paths, enums and functions are resolved and regexes compiled.
    pub fn compile(source: &str) -> Result<Condition, ParseError> {
        let tokens = lex(source).map_err(|e| e.locate(source))?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
            in_event: false,
        };
        let root = parser.parse_condition().map_err(|e| e.locate(source))?;
        Ok(Condition {
            source: source.to_string(),
            root,
        })
    }

    /// Whether the condition holds for `ctx`.
    pub fn eval(&self, ctx: &EvalContext) -> bool {
        let scope = Scope {
            ctx,
            event: None,
            memo: None,
        };
        self.root.eval(&scope)
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl ParseError {
    /// For multi-line conditions (YAML block scalars), names the line too.
    fn locate(mut self, source: &str) -> ParseError {
        if source.contains('\n') {
            let mut line = 1;
            let mut col = 1;
            for c in source.chars().take(self.column.saturating_sub(1)) {
                if c == '\n' {
                    line += 1;
                    col = 1;
                } else {
                    col += 1;
                }
            }
            let _ = write!(self.message, " (line {line}, column {col})");
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Dot,
    Op(CmpOp),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    col: usize,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s:?}"),
            Tok::Str(s) => {
                let short: String = s.chars().take(32).collect();
                if short.len() < s.len() {
                    write!(f, "string {short:?}…")
                } else {
                    write!(f, "string {s:?}")
                }
            }
            Tok::Int(i) => write!(f, "number {i}"),
            Tok::Float(x) => write!(f, "number {x}"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::LBrack => f.write_str("'['"),
            Tok::RBrack => f.write_str("']'"),
            Tok::Comma => f.write_str("','"),
            Tok::Dot => f.write_str("'.'"),
            Tok::Op(op) => write!(f, "'{}'", op.as_str()),
            Tok::End => f.write_str("end of condition"),
        }
    }
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        column,
        message: message.into(),
    })
}

fn lex(source: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        let after = chars.get(i + 2).copied();
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        let simple = |tok: Tok| Token { tok, col };
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '(' => out.push(simple(Tok::LParen)),
            ')' => out.push(simple(Tok::RParen)),
            '[' => out.push(simple(Tok::LBrack)),
            ']' => out.push(simple(Tok::RBrack)),
            ',' => out.push(simple(Tok::Comma)),
            '=' | '!' | '<' | '>' => {
                let two = next == Some('=');
                let op = match (c, two) {
                    ('=', true) => CmpOp::Eq,
                    ('!', true) => CmpOp::Ne,
                    ('<', true) => CmpOp::Le,
                    ('>', true) => CmpOp::Ge,
                    ('<', false) => CmpOp::Lt,
                    ('>', false) => CmpOp::Gt,
                    ('=', false) => return err(col, "unexpected '='; write == to compare"),
                    _ => {
                        return err(
                            col,
                            "unexpected '!'; write != to compare or `not` to negate",
                        )
                    }
                };
                out.push(simple(Tok::Op(op)));
                i += if two { 2 } else { 1 };
                continue;
            }
            '"' => {
                let (s, end) = lex_string(&chars, i)?;
                out.push(Token {
                    tok: Tok::Str(s),
                    col,
                });
                i = end;
                continue;
            }
            '.' if !digit(next) => out.push(simple(Tok::Dot)),
            c if c.is_ascii_digit()
                || c == '.'
                || ((c == '-' || c == '+')
                    && (digit(next) || (next == Some('.') && digit(after)))) =>
            {
                let (tok, end) = lex_number(&chars, i)?;
                out.push(Token { tok, col });
                i = end;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(chars[start..i].iter().collect()),
                    col,
                });
                continue;
            }
            '&' if next == Some('&') => return err(col, "unexpected '&&'; write `and`"),
            '|' if next == Some('|') => return err(col, "unexpected '||'; write `or`"),
            '\'' => {
                return err(
                    col,
                    "unexpected single quote; strings in conditions use double quotes (\"...\")",
                )
            }
            c => return err(col, format!("unexpected character {c:?}")),
        }
        i += 1;
    }
    out.push(Token {
        tok: Tok::End,
        col: chars.len() + 1,
    });
    Ok(out)
}

/// A double-quoted string starting at `start`, with Go-style escapes. Returns the text and the
/// index after the closing quote.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), ParseError> {
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return Ok((s, i + 1)),
            '\\' => {
                let col = i + 1;
                let Some(&e) = chars.get(i + 1) else { break };
                match e {
                    '"' => s.push('"'),
                    '\\' => s.push('\\'),
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'u' => {
                        let hex: String = chars.iter().skip(i + 2).take(4).collect();
                        let ch = (hex.len() == 4)
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32);
                        match ch {
                            Some(ch) => s.push(ch),
                            None => return err(col, "invalid \\u escape; expected 4 hex digits"),
                        }
                        i += 6;
                        continue;
                    }
                    other => {
                        return err(
                            col,
                            format!(
                                "unknown escape \"\\{other}\" in string; for a regex backslash write \"\\\\{other}\""
                            ),
                        )
                    }
                }
                i += 2;
            }
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    err(
        start + 1,
        "unterminated string: expected a closing '\"', found end of condition",
    )
}

fn lex_number(chars: &[char], start: usize) -> Result<(Tok, usize), ParseError> {
    let mut i = start;
    if chars[i] == '+' || chars[i] == '-' {
        i += 1;
    }
    let digits = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    let mut float = false;
    if i < chars.len() && chars[i] == '.' && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        float = true;
        i += 1;
        digits(&mut i);
        if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
            let mut j = i + 1;
            if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_digit() {
                i = j;
                digits(&mut i);
            }
        }
    }
    if i < chars.len() && (chars[i].is_ascii_alphabetic() || chars[i] == '_') {
        return err(
            i + 1,
            format!("unexpected character {:?} in number", chars[i]),
        );
    }
    let text: String = chars[start..i].iter().collect();
    let tok = if float {
        text.parse().ok().map(Tok::Float)
    } else {
        text.parse().ok().map(Tok::Int)
    };
    match tok {
        Some(t) => Ok((t, i)),
        None => err(start + 1, format!("number {text} is out of range")),
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Node {
    Const(bool),
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Cmp(Box<(Operand, CmpOp, Operand)>),
    Call(Box<Call>),
    /// A subtree that several rules of a [`RuleSet`] test (e.g. "is this a tool span"): its
    /// answer is kept in the evaluation's memo slot and taken from there by the next rule.
    Shared(usize, Box<Node>),
}

#[derive(Debug, Clone)]
enum Operand {
    Lit(Lit),
    Path(Path),
    Call(Box<Call>),
}

#[derive(Debug, Clone)]
enum Lit {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Key {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Path {
    /// A field of the span, scope, signal or event.
    Field(Field),
    /// A value under keys in the span's, resource's or event's attributes.
    Attrs(Attrs, Vec<Key>),
}

#[derive(Debug, Clone)]
enum Call {
    /// The target, its regex, and where the regex sits in a [`RuleSet`]'s per-path sets.
    IsMatch(Operand, Regex, Option<SetRef>),
    IsType(Operand, TypeCheck),
    HasPrefix(Operand, Operand),
    HasSuffix(Operand, Operand),
    ContainsValue(Operand, Operand),
    IsRootSpan,
    AnyEvent(Node),
}

#[derive(Debug, Clone, Copy)]
enum TypeCheck {
    String,
    Int,
    Double,
    Bool,
    List,
    Map,
}

/// Paths a condition may use: (written form, takes `["key"]`, only inside AnyEvent).
const PATHS: &[(&str, bool, bool)] = &[
    ("span.name", false, false),
    ("span.kind", false, false),
    ("span.status.code", false, false),
    ("span.status.message", false, false),
    ("span.attributes", true, false),
    ("resource.attributes", true, false),
    ("instrumentation_scope.name", false, false),
    ("instrumentation_scope.version", false, false),
    ("signal.kind", false, false),
    ("signal.name", false, false),
    ("signal.message", false, false),
    ("signal.label", false, false),
    ("signal.score", false, false),
    ("spanevent.name", false, true),
    ("spanevent.attributes", true, true),
];

const ENUMS: &[(&str, i64)] = &[
    ("SPAN_KIND_UNSPECIFIED", 0),
    ("SPAN_KIND_INTERNAL", 1),
    ("SPAN_KIND_SERVER", 2),
    ("SPAN_KIND_CLIENT", 3),
    ("SPAN_KIND_PRODUCER", 4),
    ("SPAN_KIND_CONSUMER", 5),
    ("STATUS_CODE_UNSET", 0),
    ("STATUS_CODE_OK", 1),
    ("STATUS_CODE_ERROR", 2),
];

/// Functions: (name, argument names).
const FUNCTIONS: &[(&str, &str)] = &[
    ("IsMatch", "target, pattern"),
    ("IsString", "value"),
    ("IsInt", "value"),
    ("IsDouble", "value"),
    ("IsBool", "value"),
    ("IsList", "value"),
    ("IsMap", "value"),
    ("HasPrefix", "target, prefix"),
    ("HasSuffix", "target, suffix"),
    ("ContainsValue", "target, item"),
    ("IsRootSpan", ""),
    ("AnyEvent", "condition"),
];

const MAX_DEPTH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    in_event: bool,
}

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `bump` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == kw)
    }

    fn expected<T>(&self, what: &str) -> Result<T, ParseError> {
        let t = self.peek();
        err(t.col, format!("expected {what}, found {}", t.tok))
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(
                self.peek().col,
                format!("condition is nested too deeply (more than {MAX_DEPTH} levels)"),
            );
        }
        Ok(())
    }

    fn parse_condition(&mut self) -> Result<Node, ParseError> {
        if self.peek().tok == Tok::End {
            return self.expected("a condition");
        }
        let node = self.parse_or()?;
        if self.peek().tok != Tok::End {
            if let Tok::Ident(w) = &self.peek().tok {
                let lower = w.to_ascii_lowercase();
                if lower == "and" || lower == "or" {
                    let t = self.peek();
                    return err(
                        t.col,
                        format!("expected `and`, `or` or end of condition, found {w:?}; keywords are lowercase: write `{lower}`"),
                    );
                }
            }
            return self.expected("`and`, `or` or end of condition");
        }
        Ok(node)
    }

    fn parse_or(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.parse_and()?];
        while self.is_keyword("or") {
            self.bump();
            items.push(self.parse_and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap_or(Node::Const(false))
        } else {
            Node::Or(items)
        })
    }

    fn parse_and(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.parse_term()?];
        while self.is_keyword("and") {
            self.bump();
            items.push(self.parse_term()?);
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap_or(Node::Const(true))
        } else {
            Node::And(items)
        })
    }

    /// `not` term | `(` condition `)` | comparison | boolean literal | function call.
    fn parse_term(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let node = self.parse_term_inner();
        self.depth -= 1;
        node
    }

    fn parse_term_inner(&mut self) -> Result<Node, ParseError> {
        if self.is_keyword("not") {
            self.bump();
            return Ok(Node::Not(Box::new(self.parse_term()?)));
        }
        if self.peek().tok == Tok::LParen {
            self.bump();
            let inner = self.parse_or()?;
            if self.peek().tok != Tok::RParen {
                return self.expected("')' to close '('");
            }
            self.bump();
            return Ok(inner);
        }
        let start = self.peek().clone();
        let left = self.parse_value()?;
        if let Tok::Op(op) = self.peek().tok {
            self.bump();
            let right = self.parse_value()?;
            return Ok(Node::Cmp(Box::new((left, op, right))));
        }
        match left {
            Operand::Lit(Lit::Bool(b)) => Ok(Node::Const(b)),
            Operand::Call(call) => Ok(Node::Call(call)),
            _ => {
                let what = match &start.tok {
                    Tok::Ident(_) => describe_path_start(&self.tokens, start.col),
                    t => t.to_string(),
                };
                self.expected(&format!(
                    "a comparison operator (==, !=, <, <=, >, >=) after {what}"
                ))
            }
        }
    }

    fn parse_value(&mut self) -> Result<Operand, ParseError> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::Str(s) => {
                self.bump();
                Ok(Operand::Lit(Lit::Str(s.clone())))
            }
            Tok::Int(i) => {
                self.bump();
                Ok(Operand::Lit(Lit::Int(*i)))
            }
            Tok::Float(x) => {
                self.bump();
                Ok(Operand::Lit(Lit::Double(*x)))
            }
            Tok::Ident(word) => match word.as_str() {
                "true" => {
                    self.bump();
                    Ok(Operand::Lit(Lit::Bool(true)))
                }
                "false" => {
                    self.bump();
                    Ok(Operand::Lit(Lit::Bool(false)))
                }
                "nil" => {
                    self.bump();
                    Ok(Operand::Lit(Lit::Nil))
                }
                "and" | "or" | "not" => self.expected("a value"),
                w if w.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    if self.tokens.get(self.pos + 1).map(|t| &t.tok) == Some(&Tok::LParen) {
                        Ok(Operand::Call(Box::new(self.parse_call()?)))
                    } else {
                        self.parse_enum()
                    }
                }
                _ => Ok(Operand::Path(self.parse_path()?)),
            },
            _ => {
                self.expected("a value (path, string, number, true, false, nil, enum or function)")
            }
        }
    }

    fn parse_enum(&mut self) -> Result<Operand, ParseError> {
        let t = self.bump();
        let Tok::Ident(name) = &t.tok else {
            return err(t.col, "expected an enum");
        };
        if let Some((_, v)) = ENUMS.iter().find(|(n, _)| n == name) {
            return Ok(Operand::Lit(Lit::Int(*v)));
        }
        if FUNCTIONS.iter().any(|(f, _)| f == name) {
            return err(
                self.peek().col,
                format!("expected '(' after {name}, found {}", self.peek().tok),
            );
        }
        let lower = name.to_ascii_lowercase();
        if ["and", "or", "not", "true", "false", "nil"].contains(&lower.as_str()) {
            return err(
                t.col,
                format!("unknown enum {name:?}; keywords are lowercase: write `{lower}`"),
            );
        }
        let names: Vec<&str> = ENUMS.iter().map(|(n, _)| *n).collect();
        err(
            t.col,
            format!(
                "unknown enum {name:?}{}; expected one of {}",
                did_you_mean(name, &names),
                names.join(", ")
            ),
        )
    }

    fn parse_path(&mut self) -> Result<Path, ParseError> {
        let first = self.bump();
        let Tok::Ident(mut dotted) = first.tok else {
            return err(first.col, "expected a path");
        };
        while self.peek().tok == Tok::Dot {
            self.bump();
            match self.bump().tok {
                Tok::Ident(seg) => {
                    dotted.push('.');
                    dotted.push_str(&seg);
                }
                other => {
                    return err(
                        self.tokens[self.pos.saturating_sub(1)].col,
                        format!("expected a name after '.' in path {dotted:?}, found {other}"),
                    )
                }
            }
        }
        let mut keys = Vec::new();
        while self.peek().tok == Tok::LBrack {
            let open = self.bump();
            let key = match self.bump().tok {
                Tok::Str(s) => Key::Str(s),
                Tok::Int(i) => Key::Int(i),
                other => {
                    return err(
                        self.tokens[self.pos.saturating_sub(1)].col,
                        format!("expected a string key like [\"gen_ai.tool.name\"] or an index like [0], found {other}"),
                    )
                }
            };
            if self.peek().tok != Tok::RBrack {
                return self.expected("']' after the key");
            }
            self.bump();
            if keys.is_empty() && matches!(key, Key::Int(_)) {
                return err(
                    open.col,
                    format!("attribute keys are strings: write {dotted}[\"key\"]"),
                );
            }
            keys.push(key);
        }
        let Some(&(name, indexed, event_only)) = PATHS.iter().find(|(p, _, _)| *p == dotted) else {
            return err(first.col, unknown_path_message(&dotted));
        };
        if event_only && !self.in_event {
            return err(
                first.col,
                format!("{name} can only be used inside AnyEvent(...), e.g. AnyEvent(spanevent.name == \"exception\")"),
            );
        }
        if indexed && keys.is_empty() {
            return err(
                self.peek().col,
                format!("{name} needs a key, e.g. {name}[\"gen_ai.operation.name\"]; to test presence compare it with nil"),
            );
        }
        if !indexed && !keys.is_empty() {
            return err(first.col, format!("{name} cannot be indexed with [...]"));
        }
        Ok(match name {
            "span.name" => Path::Field(Field::SpanName),
            "span.kind" => Path::Field(Field::SpanKind),
            "span.status.code" => Path::Field(Field::StatusCode),
            "span.status.message" => Path::Field(Field::StatusMessage),
            "span.attributes" => Path::Attrs(Attrs::Span, keys),
            "resource.attributes" => Path::Attrs(Attrs::Resource, keys),
            "instrumentation_scope.name" => Path::Field(Field::ScopeName),
            "instrumentation_scope.version" => Path::Field(Field::ScopeVersion),
            "signal.kind" => Path::Field(Field::SignalKind),
            "signal.name" => Path::Field(Field::SignalName),
            "signal.message" => Path::Field(Field::SignalMessage),
            "signal.label" => Path::Field(Field::SignalLabel),
            "signal.score" => Path::Field(Field::SignalScore),
            "spanevent.name" => Path::Field(Field::EventName),
            _ => Path::Attrs(Attrs::Event, keys),
        })
    }

    fn parse_call(&mut self) -> Result<Call, ParseError> {
        self.enter()?;
        let call = self.parse_call_inner();
        self.depth -= 1;
        call
    }

    fn parse_call_inner(&mut self) -> Result<Call, ParseError> {
        let name_tok = self.bump();
        let Tok::Ident(name) = name_tok.tok else {
            return err(name_tok.col, "expected a function name");
        };
        let Some(&(_, params)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
            let names: Vec<&str> = FUNCTIONS.iter().map(|(f, _)| *f).collect();
            let hint = if name == "HasAttribute" || name == "HasAttrKey" {
                "; to test whether an attribute is present write span.attributes[\"key\"] != nil"
                    .to_string()
            } else {
                did_you_mean(&name, &names)
            };
            return err(
                name_tok.col,
                format!(
                    "unknown function {name:?}{hint}; expected one of {}",
                    names.join(", ")
                ),
            );
        };
        self.bump(); // '('
        if name == "AnyEvent" {
            if self.in_event {
                return err(name_tok.col, "AnyEvent cannot be nested inside AnyEvent");
            }
            if self.peek().tok == Tok::RParen {
                return self.expected("a condition on spanevent.name / spanevent.attributes");
            }
            self.in_event = true;
            let inner = self.parse_or();
            self.in_event = false;
            let inner = inner?;
            self.close_call(&name)?;
            return Ok(Call::AnyEvent(inner));
        }
        let mut args: Vec<(usize, Operand)> = Vec::new();
        if self.peek().tok != Tok::RParen {
            loop {
                let col = self.peek().col;
                args.push((col, self.parse_value()?));
                if self.peek().tok == Tok::Comma {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.close_call(&name)?;
        let want = if params.is_empty() {
            0
        } else {
            params.split(',').count()
        };
        if args.len() != want {
            let s = if want == 1 { "" } else { "s" };
            return err(
                name_tok.col,
                format!(
                    "{name} takes {want} argument{s} ({params}), found {}",
                    args.len()
                ),
            );
        }
        let pattern_col = args.get(1).map_or(name_tok.col, |(c, _)| *c);
        let mut ops = args.into_iter().map(|(_, a)| a);
        let mut next = || ops.next().unwrap_or(Operand::Lit(Lit::Nil));
        Ok(match name.as_str() {
            "IsMatch" => {
                let target = next();
                let Operand::Lit(Lit::Str(pattern)) = next() else {
                    return err(
                        pattern_col,
                        "IsMatch pattern must be a string literal, e.g. \"(?i)timeout\"",
                    );
                };
                match Regex::new(&pattern) {
                    Ok(re) => Call::IsMatch(target, re, None),
                    Err(e) => {
                        return err(
                            pattern_col,
                            format!("invalid regex in IsMatch: {}", regex_error(&e)),
                        )
                    }
                }
            }
            "IsString" => Call::IsType(next(), TypeCheck::String),
            "IsInt" => Call::IsType(next(), TypeCheck::Int),
            "IsDouble" => Call::IsType(next(), TypeCheck::Double),
            "IsBool" => Call::IsType(next(), TypeCheck::Bool),
            "IsList" => Call::IsType(next(), TypeCheck::List),
            "IsMap" => Call::IsType(next(), TypeCheck::Map),
            "HasPrefix" => Call::HasPrefix(next(), next()),
            "HasSuffix" => Call::HasSuffix(next(), next()),
            "ContainsValue" => Call::ContainsValue(next(), next()),
            _ => Call::IsRootSpan,
        })
    }

    fn close_call(&mut self, name: &str) -> Result<(), ParseError> {
        if self.peek().tok != Tok::RParen {
            let what =
                if self.peek().tok == Tok::End || self.is_keyword("and") || self.is_keyword("or") {
                    format!("')' after {name} arguments")
                } else {
                    format!("',' or ')' after {name} argument")
                };
            return self.expected(&what);
        }
        self.bump();
        Ok(())
    }
}

/// The path text starting at the token at `col`, for error messages.
fn describe_path_start(tokens: &[Token], col: usize) -> String {
    let mut s = String::new();
    let mut started = false;
    for t in tokens {
        if t.col == col {
            started = true;
        }
        if !started {
            continue;
        }
        match &t.tok {
            Tok::Ident(w) => s.push_str(w),
            Tok::Dot => s.push('.'),
            Tok::LBrack => s.push('['),
            Tok::RBrack => s.push(']'),
            Tok::Str(k) => {
                let _ = write!(s, "{k:?}");
            }
            Tok::Int(i) => {
                let _ = write!(s, "{i}");
            }
            _ => break,
        }
    }
    s
}

fn unknown_path_message(dotted: &str) -> String {
    let names: Vec<&str> = PATHS.iter().map(|(p, _, _)| *p).collect();
    let listing = PATHS
        .iter()
        .map(|(p, indexed, _)| {
            if *indexed {
                format!("{p}[\"key\"]")
            } else {
                (*p).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let hint = match dotted {
        "attributes" => {
            "; paths name their context: write span.attributes, resource.attributes or spanevent.attributes".to_string()
        }
        "name" | "kind" | "status" => format!("; paths name their context: write span.{dotted}"),
        _ => did_you_mean(dotted, &names),
    };
    format!("unknown path {dotted:?}{hint}; expected one of {listing}")
}

fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= 3 && d < word.len() => format!(" (did you mean {c}?)"),
        _ => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The useful line of a regex syntax error (the crate's message spans several lines).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" "))
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// A value during evaluation; borrows from the span or the compiled condition.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'a str),
    List(&'a [AnyValue]),
    Map(&'a [KeyValue]),
    Bytes(&'a [u8]),
    /// A value this language cannot look into (e.g. a dictionary string reference).
    Opaque,
}

struct Scope<'a> {
    ctx: &'a EvalContext<'a>,
    event: Option<&'a Event>,
    /// `IsMatch` results per path, when evaluating through a [`RuleSet`].
    memo: Option<&'a Memo<'a>>,
}

impl Node {
    fn eval(&self, s: &Scope) -> bool {
        match self {
            Node::Const(b) => *b,
            Node::Or(items) => items.iter().any(|n| n.eval(s)),
            Node::And(items) => items.iter().all(|n| n.eval(s)),
            Node::Not(n) => !n.eval(s),
            Node::Cmp(c) => {
                let (l, op, r) = &**c;
                compare(l.value(s), *op, r.value(s))
            }
            Node::Call(c) => c.eval(s),
            // Shared nodes sit outside any `AnyEvent`, so `s.event` is always `None` there.
            Node::Shared(slot, n) => match s.memo.and_then(|m| m.shared.get(*slot)) {
                Some(cell) if s.event.is_none() => *cell.get_or_init(|| n.eval(s)),
                _ => n.eval(s),
            },
        }
    }
}

impl Operand {
    fn value<'a>(&'a self, s: &Scope<'a>) -> Val<'a> {
        match self {
            Operand::Lit(l) => match l {
                Lit::Nil => Val::Nil,
                Lit::Bool(b) => Val::Bool(*b),
                Lit::Int(i) => Val::Int(*i),
                Lit::Double(d) => Val::Double(*d),
                Lit::Str(x) => Val::Str(x),
            },
            Operand::Path(p) => p.value(s),
            Operand::Call(c) => Val::Bool(c.eval(s)),
        }
    }
}

impl Path {
    fn value<'a>(&'a self, s: &Scope<'a>) -> Val<'a> {
        match self {
            Path::Field(f) => f.value(s),
            Path::Attrs(of, keys) => of.lookup(s, keys.iter().map(Key::as_ref)),
        }
    }
}

/// A path without keys: one field of the span, scope, signal or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SpanName,
    SpanKind,
    StatusCode,
    StatusMessage,
    ScopeName,
    ScopeVersion,
    SignalKind,
    SignalName,
    SignalMessage,
    SignalLabel,
    SignalScore,
    EventName,
}

impl Field {
    fn value<'a>(self, s: &Scope<'a>) -> Val<'a> {
        let ctx = s.ctx;
        let span = ctx.span;
        let signal = ctx.signal;
        match self {
            Field::SpanName => Val::Str(&span.name),
            Field::SpanKind => Val::Int(i64::from(span.kind)),
            Field::StatusCode => Val::Int(span.status.as_ref().map_or(0, |st| i64::from(st.code))),
            Field::StatusMessage => {
                Val::Str(span.status.as_ref().map_or("", |st| st.message.as_str()))
            }
            Field::ScopeName => Val::Str(ctx.scope.map_or("", |sc| sc.name.as_str())),
            Field::ScopeVersion => Val::Str(ctx.scope.map_or("", |sc| sc.version.as_str())),
            Field::SignalKind => Val::Str(signal.kind.as_str()),
            Field::SignalName => Val::Str(&signal.name),
            Field::SignalMessage => Val::Str(&signal.message),
            Field::SignalLabel => signal.label.as_deref().map_or(Val::Nil, Val::Str),
            Field::SignalScore => signal.score.map_or(Val::Nil, Val::Double),
            Field::EventName => s.event.map_or(Val::Nil, |e| Val::Str(&e.name)),
        }
    }
}

/// Whose attributes a keyed path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attrs {
    Span,
    Resource,
    Event,
}

impl Attrs {
    /// The value under `keys` in these attributes (`Nil` when absent).
    fn lookup<'a, 'k>(self, s: &Scope<'a>, keys: impl Iterator<Item = KeyRef<'k>>) -> Val<'a> {
        let attrs: &'a [KeyValue] = match self {
            Attrs::Span => &s.ctx.span.attributes,
            Attrs::Resource => match s.ctx.resource {
                Some(r) => &r.attributes,
                None => return Val::Nil,
            },
            Attrs::Event => match s.event {
                Some(e) => &e.attributes,
                None => return Val::Nil,
            },
        };
        lookup(attrs, keys)
    }
}

/// A key of a path, borrowed.
#[derive(Debug, Clone, Copy)]
enum KeyRef<'k> {
    Str(&'k str),
    Int(i64),
}

impl Key {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Str(s) => KeyRef::Str(s),
            Key::Int(i) => KeyRef::Int(*i),
        }
    }
}

fn lookup<'a, 'k>(attrs: &'a [KeyValue], mut keys: impl Iterator<Item = KeyRef<'k>>) -> Val<'a> {
    let Some(KeyRef::Str(first)) = keys.next() else {
        return Val::Nil;
    };
    let mut v = get(attrs, first).map_or(Val::Nil, from_value);
    for k in keys {
        v = match (v, k) {
            (Val::Map(kvs), KeyRef::Str(name)) => get(kvs, name).map_or(Val::Nil, from_value),
            (Val::List(items), KeyRef::Int(i)) => usize::try_from(i)
                .ok()
                .and_then(|i| items.get(i))
                .map_or(Val::Nil, from_any),
            _ => Val::Nil,
        };
    }
    v
}

fn from_any(v: &AnyValue) -> Val<'_> {
    v.value.as_ref().map_or(Val::Nil, from_value)
}

fn from_value(v: &Value) -> Val<'_> {
    match v {
        Value::StringValue(s) => Val::Str(s),
        Value::BoolValue(b) => Val::Bool(*b),
        Value::IntValue(i) => Val::Int(*i),
        Value::DoubleValue(d) => Val::Double(*d),
        Value::ArrayValue(a) => Val::List(&a.values),
        Value::KvlistValue(kv) => Val::Map(&kv.values),
        Value::BytesValue(b) => Val::Bytes(b),
        Value::StringValueStrindex(_) => Val::Opaque,
    }
}

/// OTTL comparison rules: ints and doubles compare numerically, strings lexically, bools with
/// false < true; values of different types are only ever "not equal".
fn compare(l: Val, op: CmpOp, r: Val) -> bool {
    use std::cmp::Ordering;
    // Equality of strings needs no ordering (lengths differ more often than not).
    if let (Val::Str(a), Val::Str(b), CmpOp::Eq | CmpOp::Ne) = (l, r, op) {
        return (a == b) == (op == CmpOp::Eq);
    }
    let ord: Option<Ordering> = match (l, r) {
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(&b)),
        (Val::Int(a), Val::Double(b)) => (a as f64).partial_cmp(&b),
        (Val::Double(a), Val::Int(b)) => a.partial_cmp(&(b as f64)),
        (Val::Double(a), Val::Double(b)) => a.partial_cmp(&b),
        (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(&b)),
        _ => None,
    };
    match op {
        CmpOp::Eq => ord.map_or_else(|| equal(l, r), Ordering::is_eq),
        CmpOp::Ne => !ord.map_or_else(|| equal(l, r), Ordering::is_eq),
        CmpOp::Lt => ord.is_some_and(Ordering::is_lt),
        CmpOp::Le => ord.is_some_and(Ordering::is_le),
        CmpOp::Gt => ord.is_some_and(Ordering::is_gt),
        CmpOp::Ge => ord.is_some_and(Ordering::is_ge),
    }
}

fn equal(l: Val, r: Val) -> bool {
    match (l, r) {
        (Val::Nil, Val::Nil) => true,
        (Val::Bytes(a), Val::Bytes(b)) => a == b,
        (Val::List(a), Val::List(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| equal_any(from_any(x), from_any(y)))
        }
        (Val::Map(a), Val::Map(b)) => {
            a.len() == b.len()
                && a.iter().all(|kv| {
                    let x = kv.value.as_ref().map_or(Val::Nil, from_any);
                    b.iter()
                        .find(|o| o.key == kv.key)
                        .is_some_and(|o| equal_any(x, o.value.as_ref().map_or(Val::Nil, from_any)))
                })
        }
        _ => false,
    }
}

fn equal_any(a: Val, b: Val) -> bool {
    compare(a, CmpOp::Eq, b)
}

impl Call {
    fn eval(&self, s: &Scope) -> bool {
        match self {
            Call::IsMatch(target, re, set) => match (s.memo, set) {
                (Some(memo), Some(at)) => memo.is_match(*at, s, || is_match(re, target.value(s))),
                _ => is_match(re, target.value(s)),
            },
            Call::IsType(v, t) => t.holds(v.value(s)),
            Call::HasPrefix(t, p) => match (t.value(s), p.value(s)) {
                (Val::Str(t), Val::Str(p)) => t.starts_with(p),
                _ => false,
            },
            Call::HasSuffix(t, p) => match (t.value(s), p.value(s)) {
                (Val::Str(t), Val::Str(p)) => t.ends_with(p),
                _ => false,
            },
            Call::ContainsValue(t, item) => match t.value(s) {
                Val::List(items) => {
                    let item = item.value(s);
                    items.iter().any(|v| equal_any(from_any(v), item))
                }
                _ => false,
            },
            Call::IsRootSpan => is_root_span(s),
            Call::AnyEvent(cond) => s.ctx.span.events.iter().any(|e| {
                let inner = Scope {
                    ctx: s.ctx,
                    event: Some(e),
                    memo: s.memo,
                };
                cond.eval(&inner)
            }),
        }
    }
}

impl TypeCheck {
    /// Whether `v` is of this type.
    fn holds(self, v: Val) -> bool {
        matches!(
            (v, self),
            (Val::Str(_), TypeCheck::String)
                | (Val::Int(_), TypeCheck::Int)
                | (Val::Double(_), TypeCheck::Double)
                | (Val::Bool(_), TypeCheck::Bool)
                | (Val::List(_), TypeCheck::List)
                | (Val::Map(_), TypeCheck::Map)
        )
    }
}

/// IsRootSpan: the span has no parent.
fn is_root_span(s: &Scope) -> bool {
    s.ctx.span.parent_span_id.iter().all(|b| *b == 0)
}

/// IsMatch: strings match directly, other primitives as their text, lists when any item matches.
fn is_match(re: &Regex, v: Val) -> bool {
    match v {
        Val::Str(s) => re.is_match(s),
        Val::Bool(b) => re.is_match(if b { "true" } else { "false" }),
        Val::Int(i) => with_text(format_args!("{i}"), |t| re.is_match(t)),
        Val::Double(d) => with_text(format_args!("{d}"), |t| re.is_match(t)),
        Val::List(items) => items.iter().any(|item| is_match(re, from_any(item))),
        Val::Nil | Val::Map(_) | Val::Bytes(_) | Val::Opaque => false,
    }
}

/// Formats into a stack buffer (heap only for very long numbers) and hands the text to `f`.
fn with_text<R>(args: fmt::Arguments, f: impl FnOnce(&str) -> R) -> R {
    struct Buf {
        bytes: [u8; 64],
        len: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                return Err(fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 64],
        len: 0,
    };
    if buf.write_fmt(args).is_ok() {
        if let Ok(text) = std::str::from_utf8(&buf.bytes[..buf.len]) {
            return f(text);
        }
    }
    f(&fmt::format(args))
}

// ---------------------------------------------------------------------------------------------
// Rule sets: one regex pass per path instead of one per IsMatch
// ---------------------------------------------------------------------------------------------

/// A rule list compiled together so that `IsMatch` on the same text costs one regex pass.
///
/// The built-in packs test the same few short texts (`signal.name`, `signal.message`,
/// `span.name`, a few attributes) against dozens of regexes, one `IsMatch` at a time, and that
/// was most of a failing span's classification cost. Here every `IsMatch` whose target is a
/// plain path (not a function, not `spanevent.*`) gets an index in a [`RegexSet`] for that path;
/// evaluating a span runs each path's set at most once, on first use, and later `IsMatch` calls
/// on that path read a bit. Results are the same as [`first_match`]: non-string primitives match
/// by their text, missing values and maps never match, and lists (any item matches) take the
/// per-regex path.
///
/// The rules are also specialised per signal kind: comparisons of `signal.kind` with a literal
/// (and `IsMatch` on it) are decided once, `and` / `or` / `not` folded around them, and rules
/// that cannot hold for the kind dropped. A signal then walks only the rules that can match it,
/// lowered to one flat program per kind (see `program`) so that a cold walk reads memory in order.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    paths: Vec<PathSet>,
    /// Per signal kind, in `SignalKind::ALL` order: (index in `rules`, the condition with
    /// `signal.kind` resolved), in rule order, without the rules that cannot hold for the kind.
    /// Kept for tests only: evaluation walks `programs`.
    #[cfg(test)]
    kinds: Vec<Vec<(usize, Node)>>,
    /// The same conditions per kind, each kind's lowered to one flat program.
    programs: Vec<Program>,
}

/// The regexes tested against one path, in `SetRef::index` order; `None` when the set could not
/// be built (e.g. over the regex size limit), in which case its `IsMatch` calls run one by one.
#[derive(Debug, Clone)]
struct PathSet {
    path: Path,
    set: Option<RegexSet>,
    /// The set's id in `set_memo`, when its answers fit `u128` bits (128 regexes at most).
    memo_id: Option<u64>,
}

/// Where an `IsMatch` regex sits: which path's set, and its index in that set.
#[derive(Debug, Clone, Copy)]
struct SetRef {
    slot: usize,
    index: usize,
}

impl RuleSet {
    /// Indexes every `IsMatch` on a plain path in `rules` (kept in order).
    pub fn new(mut rules: Vec<CompiledRule>) -> RuleSet {
        let mut patterns: Vec<(Path, Vec<String>)> = Vec::new();
        for rule in &mut rules {
            visit_matches(&mut rule.condition.root, &mut |target, re, at| {
                let Operand::Path(path) = target else { return };
                if matches!(
                    path,
                    Path::Field(Field::EventName) | Path::Attrs(Attrs::Event, _)
                ) {
                    return;
                }
                let slot = match patterns.iter().position(|(p, _)| p == path) {
                    Some(slot) => slot,
                    None => {
                        patterns.push((path.clone(), Vec::new()));
                        patterns.len() - 1
                    }
                };
                let list = &mut patterns[slot].1;
                let index = match list.iter().position(|p| p == re.as_str()) {
                    Some(index) => index,
                    None => {
                        list.push(re.as_str().to_string());
                        list.len() - 1
                    }
                };
                *at = Some(SetRef { slot, index });
            });
        }
        let paths = patterns
            .into_iter()
            .map(|(path, list)| {
                let set = RegexSet::new(&list)
                    .inspect_err(|e| {
                        tracing::debug!(error = %e, "IsMatch regexes of one path kept separate")
                    })
                    .ok();
                let memo_id = set
                    .as_ref()
                    .filter(|s| s.len() <= 128)
                    .map(|_| set_memo::next_set_id());
                PathSet { path, set, memo_id }
            })
            .collect();
        // Folded after indexing, so the folded conditions keep their set references.
        let kinds: Vec<Vec<(usize, Node)>> = SignalKind::ALL
            .iter()
            .map(|kind| {
                let folded: Vec<(usize, Node)> = rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i, fold(&r.condition.root, *kind)))
                    .filter(|(_, n)| !matches!(n, Node::Const(false)))
                    .collect();
                share(folded)
            })
            .collect();
        let programs = kinds.iter().map(|k| Program::lower(k)).collect();
        RuleSet {
            rules,
            paths,
            #[cfg(test)]
            kinds,
            programs,
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The rules that can match a signal of `kind`, with their conditions folded for it.
    #[cfg(test)]
    fn for_kind(&self, kind: SignalKind) -> &[(usize, Node)] {
        SignalKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.kinds.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// First matching rule in order wins; same answer as [`first_match`] on [`RuleSet::rules`].
    pub fn first_match(&self, ctx: &EvalContext) -> Option<&CompiledRule> {
        let memo = Memo {
            paths: &self.paths,
            results: Default::default(),
            shared: [const { OnceCell::new() }; SHARED_SLOTS],
        };
        let scope = Scope {
            ctx,
            event: None,
            memo: Some(&memo),
        };
        let kind = SignalKind::ALL.iter().position(|k| *k == ctx.signal.kind);
        kind.and_then(|k| self.programs.get(k))
            .and_then(|p| p.first_match(&scope))
            .and_then(|i| self.rules.get(i))
    }
}

/// Subtrees that more than one of `rules` tests, by slot; past this many, the rest are
/// evaluated each time, with the same answers.
const SHARED_SLOTS: usize = 64;

/// `rules` with every subtree that occurs more than once (outside `AnyEvent`, whose inner
/// conditions see an event) wrapped in `Node::Shared`, so one evaluation computes it once.
/// Evaluation has no side effects, so each occurrence answers as the first one did.
fn share(rules: Vec<(usize, Node)>) -> Vec<(usize, Node)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, node) in &rules {
        count_subtrees(node, &mut counts);
    }
    let mut slots: HashMap<String, usize> = HashMap::new();
    rules
        .into_iter()
        .map(|(i, node)| (i, wrap_shared(node, &counts, &mut slots)))
        .collect()
}

/// Whether `node` is worth a memo slot: anything that reads the span, not a constant.
fn shareable(node: &Node) -> bool {
    !matches!(node, Node::Const(_))
}

/// The structural key of `node`: equal keys, equal answers.
fn subtree_key(node: &Node) -> String {
    format!("{node:?}")
}

fn count_subtrees(node: &Node, counts: &mut HashMap<String, usize>) {
    if shareable(node) {
        *counts.entry(subtree_key(node)).or_default() += 1;
    }
    match node {
        Node::Or(items) | Node::And(items) => items.iter().for_each(|n| count_subtrees(n, counts)),
        Node::Not(n) | Node::Shared(_, n) => count_subtrees(n, counts),
        Node::Const(_) | Node::Cmp(_) | Node::Call(_) => {}
    }
}

fn wrap_shared(
    node: Node,
    counts: &HashMap<String, usize>,
    slots: &mut HashMap<String, usize>,
) -> Node {
    let key = shareable(&node).then(|| subtree_key(&node));
    let node = match node {
        Node::Or(items) => Node::Or(
            items
                .into_iter()
                .map(|n| wrap_shared(n, counts, slots))
                .collect(),
        ),
        Node::And(items) => Node::And(
            items
                .into_iter()
                .map(|n| wrap_shared(n, counts, slots))
                .collect(),
        ),
        Node::Not(n) => Node::Not(Box::new(wrap_shared(*n, counts, slots))),
        n => n,
    };
    let Some(key) = key.filter(|k| counts.get(k).is_some_and(|c| *c > 1)) else {
        return node;
    };
    let next = slots.len();
    match slots.get(&key).copied() {
        Some(slot) => Node::Shared(slot, Box::new(node)),
        None if next < SHARED_SLOTS => {
            slots.insert(key, next);
            Node::Shared(next, Box::new(node))
        }
        None => node,
    }
}

/// `node` for signals of `kind`: comparisons between `signal.kind` and literals (and `IsMatch`
/// on `signal.kind`) decided, and `and` / `or` / `not` / `AnyEvent` folded around constants.
/// Evaluation has no side effects, so the folded node answers exactly as `node` does for any
/// context whose signal is of `kind`.
fn fold(node: &Node, kind: SignalKind) -> Node {
    match node {
        Node::Const(b) => Node::Const(*b),
        Node::And(items) | Node::Or(items) => {
            let and = matches!(node, Node::And(_));
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match fold(item, kind) {
                    // `true` is neutral in `and`, `false` in `or`.
                    Node::Const(b) if b == and => {}
                    // `false` decides an `and`, `true` an `or`.
                    Node::Const(b) => return Node::Const(b),
                    n => out.push(n),
                }
            }
            match out.len() {
                0 => Node::Const(and),
                1 => out.pop().unwrap_or(Node::Const(and)),
                _ if and => Node::And(out),
                _ => Node::Or(out),
            }
        }
        Node::Not(n) => match fold(n, kind) {
            Node::Const(b) => Node::Const(!b),
            n => Node::Not(Box::new(n)),
        },
        Node::Shared(_, n) => fold(n, kind),
        Node::Cmp(c) => {
            let (l, op, r) = &**c;
            match (kind_const(l, kind), kind_const(r, kind)) {
                (Some(a), Some(b)) => Node::Const(compare(a, *op, b)),
                _ => node.clone(),
            }
        }
        Node::Call(c) => match &**c {
            Call::IsMatch(Operand::Path(Path::Field(Field::SignalKind)), re, _) => {
                Node::Const(is_match(re, Val::Str(kind.as_str())))
            }
            Call::AnyEvent(inner) => match fold(inner, kind) {
                Node::Const(false) => Node::Const(false),
                inner => Node::Call(Box::new(Call::AnyEvent(inner))),
            },
            _ => node.clone(),
        },
    }
}

/// The value of `op` when it is the same for every signal of `kind`: a literal or `signal.kind`.
fn kind_const(op: &Operand, kind: SignalKind) -> Option<Val<'_>> {
    match op {
        Operand::Lit(l) => Some(match l {
            Lit::Nil => Val::Nil,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Int(i) => Val::Int(*i),
            Lit::Double(d) => Val::Double(*d),
            Lit::Str(x) => Val::Str(x),
        }),
        Operand::Path(Path::Field(Field::SignalKind)) => Some(Val::Str(kind.as_str())),
        _ => None,
    }
}

/// Calls `f` on every `IsMatch` in `node` (target, regex, set reference), depth first.
fn visit_matches(node: &mut Node, f: &mut impl FnMut(&Operand, &Regex, &mut Option<SetRef>)) {
    match node {
        Node::Const(_) => {}
        Node::Or(items) | Node::And(items) => items.iter_mut().for_each(|n| visit_matches(n, f)),
        Node::Not(n) | Node::Shared(_, n) => visit_matches(n, f),
        Node::Cmp(c) => {
            visit_operand(&mut c.0, f);
            visit_operand(&mut c.2, f);
        }
        Node::Call(c) => visit_call(c, f),
    }
}

fn visit_operand(op: &mut Operand, f: &mut impl FnMut(&Operand, &Regex, &mut Option<SetRef>)) {
    if let Operand::Call(c) = op {
        visit_call(c, f);
    }
}

fn visit_call(call: &mut Call, f: &mut impl FnMut(&Operand, &Regex, &mut Option<SetRef>)) {
    match call {
        Call::IsMatch(target, re, at) => {
            visit_operand(target, f);
            f(target, re, at);
        }
        Call::IsType(a, _) => visit_operand(a, f),
        Call::HasPrefix(a, b) | Call::HasSuffix(a, b) | Call::ContainsValue(a, b) => {
            visit_operand(a, f);
            visit_operand(b, f);
        }
        Call::IsRootSpan => {}
        Call::AnyEvent(n) => visit_matches(n, f),
    }
}

/// What one path's value says for all of its set's regexes at once.
enum PathMatches {
    /// A string or other primitive: which regexes match its text.
    Set(SetMatches),
    /// The same as bits (bit `i` for regex `i`), for a text `set_memo` keeps.
    Bits(u128),
    /// Missing, a map, bytes or an opaque value: no regex matches.
    Never,
    /// A list, or no set: each `IsMatch` runs its own regex.
    Direct,
}

/// Paths whose set results one evaluation keeps (the built-in packs use 10 and 4). A rule set
/// with more distinct `IsMatch` paths than this runs the regexes of the paths past it alone:
/// the same answers, without the one-pass set.
const MEMO_SLOTS: usize = 16;

/// `IsMatch` results of one evaluation (one span and signal), filled per path on first use.
struct Memo<'a> {
    paths: &'a [PathSet],
    results: [OnceCell<PathMatches>; MEMO_SLOTS],
    /// Answers of `Node::Shared` subtrees, by slot.
    shared: [OnceCell<bool>; SHARED_SLOTS],
}

impl Memo<'_> {
    /// Whether regex `at` matches its path's value; `direct` runs that regex alone.
    fn is_match(&self, at: SetRef, s: &Scope, direct: impl FnOnce() -> bool) -> bool {
        let (Some(cell), Some(ps)) = (self.results.get(at.slot), self.paths.get(at.slot)) else {
            return direct();
        };
        match cell.get_or_init(|| path_matches(ps, s)) {
            PathMatches::Set(m) => m.matched(at.index),
            PathMatches::Bits(b) => at.index < 128 && b >> at.index & 1 == 1,
            PathMatches::Never => false,
            PathMatches::Direct => direct(),
        }
    }
}

/// Runs `ps`'s set once over its path's value, with the same rules as [`is_match`].
fn path_matches(ps: &PathSet, s: &Scope) -> PathMatches {
    let Some(set) = &ps.set else {
        return PathMatches::Direct;
    };
    match ps.path.value(s) {
        Val::Str(t) => match ps.memo_id.filter(|_| set_memo::keeps(t)) {
            Some(id) => PathMatches::Bits(set_memo::answer(id, t, || {
                set.matches(t).iter().fold(0u128, |b, i| b | 1 << i)
            })),
            None => PathMatches::Set(set.matches(t)),
        },
        Val::Bool(b) => PathMatches::Set(set.matches(if b { "true" } else { "false" })),
        Val::Int(i) => PathMatches::Set(with_text(format_args!("{i}"), |t| set.matches(t))),
        Val::Double(d) => PathMatches::Set(with_text(format_args!("{d}"), |t| set.matches(t))),
        Val::List(_) => PathMatches::Direct,
        Val::Nil | Val::Map(_) | Val::Bytes(_) | Val::Opaque => PathMatches::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::signals::SignalKind;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(x: &str) -> Value {
        Value::StringValue(x.to_string())
    }

    fn arr(items: &[&str]) -> Value {
        Value::ArrayValue(ArrayValue {
            values: items
                .iter()
                .map(|i| AnyValue { value: Some(s(i)) })
                .collect(),
        })
    }

    fn signal(kind: SignalKind, name: &str, message: &str) -> Signal {
        Signal {
            kind,
            name: name.into(),
            message: message.into(),
            label: None,
            score: None,
        }
    }

    fn span() -> Span {
        Span {
            name: "execute_tool get_weather".into(),
            kind: 3,
            parent_span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
            attributes: vec![
                kv("gen_ai.operation.name", s("execute_tool")),
                kv("gen_ai.tool.name", s("get_weather")),
                kv("http.response.status_code", Value::IntValue(503)),
                kv("score", Value::DoubleValue(0.25)),
                kv("flag", Value::BoolValue(true)),
                kv(
                    "gen_ai.response.finish_reasons",
                    arr(&["stop", "content_filter"]),
                ),
                kv("blob", Value::BytesValue(vec![1, 2])),
                kv(
                    "nested",
                    Value::KvlistValue(KeyValueList {
                        values: vec![kv("inner", s("deep")), kv("list", arr(&["a", "b"]))],
                    }),
                ),
            ],
            events: vec![
                Event {
                    name: "exception".into(),
                    attributes: vec![
                        kv("exception.type", s("httpx.ReadTimeout")),
                        kv("exception.message", s("timed out after 30s")),
                    ],
                    ..Default::default()
                },
                Event {
                    name: "gen_ai.evaluation.result".into(),
                    attributes: vec![
                        kv("gen_ai.evaluation.name", s("faithfulness")),
                        kv("gen_ai.evaluation.score.value", Value::DoubleValue(0.2)),
                    ],
                    ..Default::default()
                },
            ],
            status: Some(Status {
                message: "upstream \"weather\" failed".into(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }

    fn resource() -> Resource {
        Resource {
            attributes: vec![kv("service.name", s("support-agent"))],
            ..Default::default()
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope {
            name: "opentelemetry.instrumentation.openai_agents".into(),
            version: "0.1.0".into(),
            ..Default::default()
        }
    }

    fn check(cond: &str) -> bool {
        let sp = span();
        let res = resource();
        let sc = scope();
        let mut sig = signal(
            SignalKind::Exception,
            "httpx.ReadTimeout",
            "timed out after 30s",
        );
        sig.label = Some("fail".into());
        sig.score = Some(0.1);
        let ctx = EvalContext {
            span: &sp,
            resource: Some(&res),
            scope: Some(&sc),
            signal: &sig,
        };
        match Condition::compile(cond) {
            Ok(c) => c.eval(&ctx),
            Err(e) => panic!("{cond}: {e}"),
        }
    }

    fn compile_err(cond: &str) -> ParseError {
        match Condition::compile(cond) {
            Ok(_) => panic!("expected an error for {cond}"),
            Err(e) => e,
        }
    }

    #[test]
    fn paths() {
        assert!(check(r#"span.name == "execute_tool get_weather""#));
        assert!(check("span.kind == SPAN_KIND_CLIENT"));
        assert!(check("span.kind == 3"));
        assert!(!check("span.kind == SPAN_KIND_SERVER"));
        assert!(check("span.status.code == STATUS_CODE_ERROR"));
        assert!(check(
            r#"span.status.message == "upstream \"weather\" failed""#
        ));
        assert!(check(
            r#"span.attributes["gen_ai.tool.name"] == "get_weather""#
        ));
        assert!(check(
            r#"resource.attributes["service.name"] == "support-agent""#
        ));
        assert!(check(r#"resource.attributes["missing"] == nil"#));
        assert!(check(
            r#"instrumentation_scope.name == "opentelemetry.instrumentation.openai_agents""#
        ));
        assert!(check(r#"instrumentation_scope.version == "0.1.0""#));
        assert!(check(r#"signal.kind == "exception""#));
        assert!(check(r#"signal.name == "httpx.ReadTimeout""#));
        assert!(check(r#"signal.message == "timed out after 30s""#));
        assert!(check(r#"signal.label == "fail""#));
        assert!(check("signal.score < 0.5"));
        assert!(check(r#"span.attributes["nested"]["inner"] == "deep""#));
        assert!(check(r#"span.attributes["nested"]["list"][1] == "b""#));
        assert!(check(r#"span.attributes["nested"]["list"][7] == nil"#));
        assert!(check(r#"span.attributes["nested"]["missing"] == nil"#));
        assert!(check(r#"span.attributes["gen_ai.tool.name"]["x"] == nil"#));
    }

    #[test]
    fn empty_context_values() {
        let sp = Span::default();
        let sig = signal(SignalKind::Status, "", "");
        let ctx = EvalContext {
            span: &sp,
            resource: None,
            scope: None,
            signal: &sig,
        };
        let t = |c: &str| Condition::compile(c).map(|c| c.eval(&ctx)).unwrap_or(false);
        assert!(t("span.status.code == STATUS_CODE_UNSET"));
        assert!(t(r#"span.status.message == """#));
        assert!(t(r#"resource.attributes["service.name"] == nil"#));
        assert!(t(r#"instrumentation_scope.name == """#));
        assert!(t("signal.label == nil and signal.score == nil"));
        assert!(t("IsRootSpan()"));
        assert!(!t(r#"AnyEvent(spanevent.name == "exception")"#));
        assert!(t("span.kind == SPAN_KIND_UNSPECIFIED"));
    }

    #[test]
    fn operators_and_types() {
        assert!(check(
            r#"span.attributes["http.response.status_code"] >= 500"#
        ));
        assert!(check(
            r#"span.attributes["http.response.status_code"] < 600"#
        ));
        assert!(check(
            r#"span.attributes["http.response.status_code"] != 404"#
        ));
        assert!(check(
            r#"span.attributes["http.response.status_code"] == 503.0"#
        ));
        assert!(check(
            r#"span.attributes["http.response.status_code"] > 502.5"#
        ));
        assert!(check(r#"span.attributes["score"] <= 0.25"#));
        assert!(check(r#"span.attributes["score"] > -1"#));
        assert!(check(r#"span.attributes["score"] > -.5"#));
        assert!(check(r#"span.attributes["score"] == 2.5e-1"#));
        assert!(check(r#"span.attributes["flag"] == true"#));
        assert!(check("true > false"));
        assert!(check(r#""abc" < "abd""#));
        assert!(check(r#""b" >= "a""#));
        // Mixed types: ordering is false, == is false, != is true.
        assert!(!check(
            r#"span.attributes["http.response.status_code"] == "503""#
        ));
        assert!(check(
            r#"span.attributes["http.response.status_code"] != "503""#
        ));
        assert!(!check(
            r#"span.attributes["http.response.status_code"] < "9""#
        ));
        assert!(!check(
            r#"span.attributes["http.response.status_code"] > "9""#
        ));
        assert!(!check(r#"span.attributes["missing"] > 1"#));
        assert!(!check(r#"span.attributes["missing"] < 1"#));
        assert!(check(r#"span.attributes["missing"] == nil"#));
        assert!(check(r#"span.attributes["gen_ai.tool.name"] != nil"#));
        assert!(check("nil == nil"));
        assert!(!check("nil != nil"));
        // Arrays never equal a string.
        assert!(!check(
            r#"span.attributes["gen_ai.response.finish_reasons"] == "content_filter""#
        ));
        assert!(check(
            r#"span.attributes["gen_ai.response.finish_reasons"] != "stop""#
        ));
        assert!(check(
            r#"span.attributes["gen_ai.response.finish_reasons"] == span.attributes["gen_ai.response.finish_reasons"]"#
        ));
        assert!(check(
            r#"span.attributes["blob"] == span.attributes["blob"]"#
        ));
        assert!(check(
            r#"span.attributes["nested"] == span.attributes["nested"]"#
        ));
        assert!(!check(
            r#"span.attributes["nested"] == span.attributes["blob"]"#
        ));
    }

    #[test]
    fn boolean_logic_and_precedence() {
        assert!(check("true"));
        assert!(!check("false"));
        assert!(check("not false"));
        assert!(check("not not true"));
        assert!(check("true or false and false"));
        assert!(!check("(true or false) and false"));
        assert!(check("false or not false"));
        assert!(!check("not true and true"));
        assert!(check("not true or true"));
        assert!(check(r#"not span.name == "other""#));
        assert!(!check(r#"not span.name == "execute_tool get_weather""#));
        assert!(check(
            r#"(span.kind == SPAN_KIND_CLIENT and (signal.kind == "status" or signal.kind == "exception"))"#
        ));
        assert!(check("IsMatch(span.name, \"tool\") == true"));
        assert!(check("false == IsMatch(span.name, \"nope\")"));
        // Multi-line conditions (YAML block scalars).
        assert!(check(
            "span.kind == SPAN_KIND_CLIENT\n  and signal.kind == \"exception\""
        ));
    }

    #[test]
    fn functions() {
        assert!(check(r#"IsMatch(span.name, "^execute_tool ")"#));
        assert!(check(r#"IsMatch(signal.message, "(?i)TIMED OUT")"#));
        assert!(!check(r#"IsMatch(signal.message, "TIMED OUT")"#));
        // Non-string primitives are matched as text.
        assert!(check(
            r#"IsMatch(span.attributes["http.response.status_code"], "^5\\d\\d$")"#
        ));
        assert!(check(r#"IsMatch(span.attributes["score"], "^0\\.25$")"#));
        assert!(check(r#"IsMatch(span.attributes["flag"], "true")"#));
        // Arrays match when any item matches.
        assert!(check(
            r#"IsMatch(span.attributes["gen_ai.response.finish_reasons"], "^content_filter$")"#
        ));
        assert!(!check(
            r#"IsMatch(span.attributes["gen_ai.response.finish_reasons"], "^length$")"#
        ));
        // nil, bytes and maps never match.
        assert!(!check(r#"IsMatch(span.attributes["missing"], ".*")"#));
        assert!(!check(r#"IsMatch(span.attributes["blob"], ".*")"#));
        assert!(!check(r#"IsMatch(span.attributes["nested"], ".*")"#));
        assert!(check(r#"IsString(span.name)"#));
        assert!(!check(
            r#"IsString(span.attributes["http.response.status_code"])"#
        ));
        assert!(check(
            r#"IsInt(span.attributes["http.response.status_code"])"#
        ));
        assert!(check(r#"IsDouble(span.attributes["score"])"#));
        assert!(check(r#"IsBool(span.attributes["flag"])"#));
        assert!(check(
            r#"IsList(span.attributes["gen_ai.response.finish_reasons"])"#
        ));
        assert!(check(r#"IsMap(span.attributes["nested"])"#));
        assert!(!check(r#"IsMap(span.attributes["missing"])"#));
        assert!(check(
            r#"HasPrefix(span.attributes["gen_ai.tool.name"], "get_")"#
        ));
        assert!(check(
            r#"HasSuffix(span.attributes["gen_ai.tool.name"], "_weather")"#
        ));
        assert!(!check(
            r#"HasPrefix(span.attributes["http.response.status_code"], "5")"#
        ));
        assert!(check(
            r#"ContainsValue(span.attributes["gen_ai.response.finish_reasons"], "content_filter")"#
        ));
        assert!(!check(
            r#"ContainsValue(span.attributes["gen_ai.response.finish_reasons"], "length")"#
        ));
        assert!(!check(
            r#"ContainsValue(span.attributes["gen_ai.tool.name"], "get_weather")"#
        ));
        assert!(!check("IsRootSpan()"));
        assert!(check("not IsRootSpan()"));
    }

    #[test]
    fn any_event() {
        assert!(check(r#"AnyEvent(spanevent.name == "exception")"#));
        assert!(check(
            r#"AnyEvent(spanevent.name == "exception" and IsMatch(spanevent.attributes["exception.type"], "Timeout"))"#
        ));
        assert!(check(
            r#"AnyEvent(spanevent.name == "gen_ai.evaluation.result" and spanevent.attributes["gen_ai.evaluation.score.value"] < 0.5)"#
        ));
        // All conditions must hold on the same event.
        assert!(!check(
            r#"AnyEvent(spanevent.name == "gen_ai.evaluation.result" and spanevent.attributes["exception.type"] != nil)"#
        ));
        assert!(!check(r#"AnyEvent(spanevent.name == "user.feedback")"#));
        assert!(check(r#"not AnyEvent(spanevent.name == "user.feedback")"#));
        // Span paths work inside too.
        assert!(check(
            r#"AnyEvent(spanevent.name == "exception" and span.kind == SPAN_KIND_CLIENT)"#
        ));
    }

    #[test]
    fn string_escapes() {
        let c = Condition::compile(r#"span.name == "a\"b\\c\n\t\u00e9""#);
        assert!(c.is_ok());
        let sp = Span {
            name: "a\"b\\c\n\té".into(),
            ..Default::default()
        };
        let sig = signal(SignalKind::Status, "", "");
        let ctx = EvalContext {
            span: &sp,
            resource: None,
            scope: None,
            signal: &sig,
        };
        assert!(c.map(|c| c.eval(&ctx)).unwrap_or(false));
    }

    #[test]
    fn errors_name_the_column() {
        let e = compile_err(r#"IsMatch(span.name, "timeout" and span.kind == 1"#);
        assert_eq!(e.column, 30);
        assert_eq!(
            e.message,
            "expected ')' after IsMatch arguments, found \"and\""
        );

        let e = compile_err(r#"span.atributes["x"] == 1"#);
        assert_eq!(e.column, 1);
        assert!(e.message.starts_with("unknown path \"span.atributes\" (did you mean span.attributes?); expected one of span.name, span.kind"), "{}", e.message);

        let e = compile_err(r#"attributes["x"] == 1"#);
        assert!(e.message.contains("write span.attributes"), "{}", e.message);

        let e = compile_err(r#"span.name == "x" and IsMatc(span.name, "y")"#);
        assert_eq!(e.column, 22);
        assert!(
            e.message
                .starts_with("unknown function \"IsMatc\" (did you mean IsMatch?)"),
            "{}",
            e.message
        );

        let e = compile_err(r#"HasAttribute(span.attributes, "x")"#);
        assert!(e.message.contains("!= nil"), "{}", e.message);

        let e = compile_err("span.kind == SPAN_KIND_SERVR");
        assert_eq!(e.column, 14);
        assert!(
            e.message
                .starts_with("unknown enum \"SPAN_KIND_SERVR\" (did you mean SPAN_KIND_SERVER?)"),
            "{}",
            e.message
        );

        let e = compile_err(r#"span.name == "x" span.kind == 1"#);
        assert_eq!(e.column, 18);
        assert_eq!(
            e.message,
            "expected `and`, `or` or end of condition, found \"span\""
        );

        let e = compile_err(r#"span.name == "abc"#);
        assert_eq!(e.column, 14);
        assert!(
            e.message.starts_with("unterminated string"),
            "{}",
            e.message
        );

        let e = compile_err(r#"IsMatch(span.name, "(unclosed")"#);
        assert_eq!(e.column, 20);
        assert!(
            e.message.starts_with("invalid regex in IsMatch:"),
            "{}",
            e.message
        );

        let e = compile_err(r#"IsMatch(span.name, span.name)"#);
        assert_eq!(e.column, 20);

        let e = compile_err(r#"IsMatch(span.name)"#);
        assert_eq!(e.column, 1);
        assert_eq!(
            e.message,
            "IsMatch takes 2 arguments (target, pattern), found 1"
        );

        let e = compile_err(r#"spanevent.name == "exception""#);
        assert!(e.message.contains("inside AnyEvent"), "{}", e.message);

        let e = compile_err(r#"AnyEvent(AnyEvent(spanevent.name == "x"))"#);
        assert_eq!(e.column, 10);

        let e = compile_err("span.attributes == nil");
        assert!(e.message.contains("needs a key"), "{}", e.message);

        let e = compile_err(r#"span.name["x"] == nil"#);
        assert!(e.message.contains("cannot be indexed"), "{}", e.message);

        let e = compile_err("span.name");
        assert_eq!(e.column, 10);
        assert_eq!(
            e.message,
            "expected a comparison operator (==, !=, <, <=, >, >=) after span.name, found end of condition"
        );

        let e = compile_err("");
        assert_eq!(
            (e.column, e.message.as_str()),
            (1, "expected a condition, found end of condition")
        );

        let e = compile_err(r#"span.name = "x""#);
        assert_eq!(e.column, 11);
        let e = compile_err(r#"span.name == "x" && true"#);
        assert_eq!(e.column, 18);
        let e = compile_err(r#"span.name == "x" AND true"#);
        assert!(e.message.contains("write `and`"), "{}", e.message);
        let e = compile_err(r#"span.name == "\d""#);
        assert!(e.message.contains("unknown escape"), "{}", e.message);
        let e = compile_err("(true");
        assert_eq!(
            e.message,
            "expected ')' to close '(', found end of condition"
        );
        let e = compile_err("span.kind == 99999999999999999999");
        assert!(e.message.contains("out of range"), "{}", e.message);
        let e = compile_err("IsMatch");
        assert!(
            e.message.starts_with("expected '(' after IsMatch"),
            "{}",
            e.message
        );

        // Columns count characters, not bytes, and multi-line conditions also name the line.
        let e = compile_err("span.name == \"é\" and\n  spam.name == 1");
        assert_eq!(e.column, 24);
        assert!(e.message.ends_with("(line 2, column 3)"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Condition::compile(&deep).is_err());
        let nots = format!("{}true", "not ".repeat(10_000));
        assert!(Condition::compile(&nots).is_err());
        let calls = format!(
            "{}span.name{}",
            "IsString(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(Condition::compile(&calls).is_err());
        let ok = format!("{}true{}", "(".repeat(20), ")".repeat(20));
        assert!(Condition::compile(&ok).is_ok());
    }

    #[test]
    fn compile_rule_names_the_rule() {
        let spec = RuleSpec {
            name: "broken".into(),
            class: "logic_tool".into(),
            condition: "span.name ==".into(),
            confidence: 0.9,
            description: String::new(),
        };
        let e = match compile_rule(&spec) {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        };
        assert_eq!(
            e.to_string(),
            "rule \"broken\": column 13: expected a value (path, string, number, true, false, nil, enum or function), found end of condition"
        );
    }

    #[test]
    fn first_match_takes_rules_in_order() {
        let mk = |name: &str, cond: &str| {
            compile_rule(&RuleSpec {
                name: name.into(),
                class: name.into(),
                condition: cond.into(),
                confidence: 0.5,
                description: String::new(),
            })
        };
        let rules: Vec<CompiledRule> = [
            mk("a", "false"),
            mk("b", r#"signal.kind == "exception""#),
            mk("c", "true"),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .collect();
        assert_eq!(rules.len(), 3);
        let sp = span();
        let sig = signal(SignalKind::Exception, "E", "m");
        let ctx = EvalContext {
            span: &sp,
            resource: None,
            scope: None,
            signal: &sig,
        };
        assert_eq!(
            first_match(&rules, &ctx).map(|r| r.name.as_str()),
            Some("b")
        );
        assert!(first_match(&rules[..1], &ctx).is_none());
    }

    #[test]
    fn rule_spec_from_yaml() {
        let spec: RuleSpec = serde_yaml::from_str(
            "name: t\nclass: logic_tool\ncondition: >-\n  span.name == \"x\"\n  and true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.confidence, 0.9);
        assert_eq!(spec.description, "");
        assert_eq!(spec.condition, "span.name == \"x\" and true");
        assert!(compile_rule(&spec).is_ok());
        let typo = serde_yaml::from_str::<RuleSpec>(
            "name: t\nclass: c\ncondition: 'true'\nconfidance: 1\n",
        );
        assert!(typo.is_err());
    }

    #[test]
    fn conditions_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Condition>();
        assert_send_sync::<CompiledRule>();
    }

    /// Small deterministic generator for the garbage-input test.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn never_panics_on_garbage_or_truncated_input() {
        let valid = [
            r#"span.status.code == STATUS_CODE_ERROR and IsMatch(span.attributes["error.type"], "(?i)timeout")"#,
            r#"AnyEvent(spanevent.name == "exception" and IsMatch(spanevent.attributes["exception.message"], "é\\d+"))"#,
            r#"not (signal.kind == "evaluation" or signal.score < -0.5) and ContainsValue(span.attributes["a"]["b"][0], 1.5e3)"#,
        ];
        let sp = span();
        let sig = signal(SignalKind::Exception, "E", "m");
        let ctx = EvalContext {
            span: &sp,
            resource: None,
            scope: None,
            signal: &sig,
        };
        for v in valid {
            assert!(Condition::compile(v).is_ok(), "{v}");
            let chars: Vec<char> = v.chars().collect();
            for n in 0..chars.len() {
                let cut: String = chars[..n].iter().collect();
                if let Ok(c) = Condition::compile(&cut) {
                    c.eval(&ctx);
                }
                let tail: String = chars[n..].iter().collect();
                if let Ok(c) = Condition::compile(&tail) {
                    c.eval(&ctx);
                }
            }
        }
        let alphabet: Vec<char> = "()[],.=!<>\"\\ andornotspan.attributes0123456789-+eE_ISMatchAnyEvent\u{e9}\u{1F600}'&|\n"
            .chars()
            .collect();
        let mut rng = Lcg(42);
        for _ in 0..20_000 {
            let len = (rng.next() % 40) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
                .collect();
            if let Ok(c) = Condition::compile(&s) {
                c.eval(&ctx);
            }
        }
        // Token soup from valid pieces.
        let pieces = [
            "span.name",
            "==",
            "\"x\"",
            "and",
            "or",
            "not",
            "(",
            ")",
            "IsMatch(",
            ",",
            "AnyEvent(",
            "spanevent.name",
            "span.attributes[\"k\"]",
            "[0]",
            "nil",
            "true",
            "1",
            "-2.5",
            "<",
            ">=",
            "SPAN_KIND_SERVER",
            "signal.score",
        ];
        for _ in 0..20_000 {
            let len = (rng.next() % 12) as usize;
            let s: Vec<&str> = (0..len)
                .map(|_| pieces[(rng.next() as usize) % pieces.len()])
                .collect();
            if let Ok(c) = Condition::compile(&s.join(" ")) {
                c.eval(&ctx);
            }
        }
    }

    // --- RuleSet: memoised IsMatch must answer exactly as the direct path ----------------------

    /// Conditions covering strings, numbers, bools, lists, maps, bytes, missing values, labels,
    /// scores, case-insensitive patterns, shared paths and functions of functions.
    const MEMO_CONDITIONS: &[&str] = &[
        r#"IsMatch(signal.name, "(?i)timeout") or IsMatch(signal.message, "(?i)timeout")"#,
        r#"IsMatch(signal.name, "(?i)TIMEOUT")"#,
        r#"IsMatch(signal.message, "(?i)rate.?limit|429") or IsMatch(signal.name, "(?i)ratelimit")"#,
        r#"IsMatch(span.name, "^execute_tool") and IsMatch(span.name, "nomatch")"#,
        r#"IsMatch(span.name, "^execute_tool") and not IsMatch(span.name, "(?i)WEATHER$")"#,
        r#"IsMatch(span.attributes["http.response.status_code"], "^5\\d\\d$")"#,
        r#"IsMatch(span.attributes["http.response.status_code"], "^4")"#,
        r#"IsMatch(span.attributes["score"], "^0\\.25$")"#,
        r#"IsMatch(span.attributes["flag"], "^true$")"#,
        r#"IsMatch(span.attributes["flag"], "(?i)FALSE")"#,
        r#"IsMatch(span.attributes["gen_ai.response.finish_reasons"], "^content")"#,
        r#"IsMatch(span.attributes["gen_ai.response.finish_reasons"], "^length$")"#,
        r#"IsMatch(span.attributes["gen_ai.response.finish_reasons"][1], "filter")"#,
        r#"IsMatch(span.attributes["nested"], ".*")"#,
        r#"IsMatch(span.attributes["nested"]["inner"], "^deep$")"#,
        r#"IsMatch(span.attributes["nested"]["list"], "b")"#,
        r#"IsMatch(span.attributes["blob"], ".*")"#,
        r#"IsMatch(span.attributes["missing"], ".*")"#,
        r#"not IsMatch(span.attributes["missing"], "")"#,
        r#"IsMatch(resource.attributes["service.name"], "(?i)SUPPORT")"#,
        r#"IsMatch(instrumentation_scope.name, "openai") or IsMatch(instrumentation_scope.version, "^0\\.")"#,
        r#"IsMatch(span.status.message, "weather") and IsMatch(span.status.code, "^2$")"#,
        r#"IsMatch(span.kind, "3")"#,
        r#"IsMatch(signal.kind, "^exception$")"#,
        r#"IsMatch(signal.label, "(?i)^toxic$")"#,
        r#"IsMatch(signal.score, "^-0\\.5$")"#,
        r#"IsMatch(IsMatch(span.name, "weather"), "true")"#,
        r#"AnyEvent(IsMatch(spanevent.name, "exc") and IsMatch(span.name, "weather"))"#,
        r#"AnyEvent(IsMatch(spanevent.attributes["exception.type"], "(?i)timeout"))"#,
        r#"ContainsValue(span.attributes["gen_ai.response.finish_reasons"], "stop") and IsMatch(signal.name, "E")"#,
        r#"span.name == "x" or IsMatch(signal.message, "")"#,
        // The other steps of a lowered program: comparisons of every literal type, keyed
        // paths, type checks, prefixes and suffixes, the root test, and calls as operands.
        r#"HasPrefix(span.name, "execute_tool") and HasSuffix(span.name, "weather")"#,
        r#"HasSuffix(span.name, "execute_tool") or HasPrefix(signal.name, "httpx")"#,
        r#"span.attributes["http.response.status_code"] >= 500 and span.attributes["score"] < 0.5"#,
        r#"span.attributes["nested"]["inner"] == "deep" and span.attributes["flag"] == true"#,
        r#"span.attributes["gen_ai.response.finish_reasons"][1] != nil"#,
        r#"resource.attributes["service.name"] == "support" or signal.label == "TOXIC""#,
        r#"IsString(span.attributes["gen_ai.tool.name"]) and not IsInt(span.attributes["score"])"#,
        r#"IsDouble(signal.score) or IsBool(span.attributes["flag"]) and IsList(span.attributes["gen_ai.response.finish_reasons"])"#,
        r#"IsMap(span.attributes["nested"]) and span.kind == SPAN_KIND_CLIENT"#,
        r#"IsRootSpan() or span.status.code == STATUS_CODE_ERROR"#,
        r#"AnyEvent(spanevent.attributes["gen_ai.evaluation.score.value"] < 0.5) and signal.score == nil"#,
        r#"IsMatch(span.name, "weather") == false or instrumentation_scope.version != "0.1""#,
    ];

    /// Signals with and without label/score, matching and not matching the patterns above.
    fn memo_signals() -> Vec<Signal> {
        let mut labelled = signal(SignalKind::Evaluation, "toxicity", "");
        labelled.label = Some("TOXIC".into());
        labelled.score = Some(-0.5);
        vec![
            signal(
                SignalKind::Exception,
                "httpx.ReadTimeout",
                "timed out after 30s",
            ),
            signal(SignalKind::Status, "RateLimitError", "HTTP 429"),
            signal(SignalKind::Exception, "E", ""),
            labelled,
        ]
    }

    /// Spans: the full test span, an empty one, and one whose attributes change type.
    fn memo_spans() -> Vec<Span> {
        let mut retyped = span();
        retyped.name = "Get_Weather".into();
        retyped.attributes = vec![
            kv("http.response.status_code", s("404")),
            kv("score", Value::IntValue(0)),
            kv("flag", s("False")),
            kv("gen_ai.response.finish_reasons", s("length")),
            kv(
                "nested",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(arr(&["deep", "b"])),
                    }],
                }),
            ),
            kv("missing", Value::DoubleValue(1.0)),
        ];
        vec![span(), Span::default(), retyped]
    }

    fn memo_rule(i: usize, cond: &str) -> CompiledRule {
        compile_rule(&RuleSpec {
            name: format!("r{i}"),
            class: "c".into(),
            condition: cond.into(),
            confidence: 0.5,
            description: String::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Calls `f` with every combination of span, resource, scope and signal above.
    fn for_each_memo_ctx(mut f: impl FnMut(&EvalContext)) {
        let (res, sc) = (resource(), scope());
        for sp in memo_spans() {
            for sig in memo_signals() {
                for (resource, scope) in [(None, None), (Some(&res), Some(&sc))] {
                    f(&EvalContext {
                        span: &sp,
                        resource,
                        scope,
                        signal: &sig,
                    });
                }
            }
        }
    }

    #[test]
    fn rule_set_answers_each_condition_like_direct_eval() {
        for (i, cond) in MEMO_CONDITIONS.iter().enumerate() {
            let rule = memo_rule(i, cond);
            // Alone and behind every other condition (so paths share a set with other regexes).
            let alone = RuleSet::new(vec![rule.clone()]);
            let mut many: Vec<CompiledRule> = MEMO_CONDITIONS
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, c)| memo_rule(j, &format!("not ({c}) and false")))
                .collect();
            many.push(rule.clone());
            let many = RuleSet::new(many);
            for_each_memo_ctx(|ctx| {
                let direct = rule.condition.eval(ctx);
                assert_eq!(alone.first_match(ctx).is_some(), direct, "{cond}");
                assert_eq!(many.first_match(ctx).is_some(), direct, "{cond}");
            });
        }
    }

    /// The rules of a built-in preset, compiled.
    fn compiled_pack(preset: &str) -> Vec<CompiledRule> {
        crate::classify::builtin::pack(preset)
            .iter()
            .map(|spec| compile_rule(spec).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn count_shared(n: &Node) -> usize {
        match n {
            Node::Shared(_, inner) => 1 + count_shared(inner),
            Node::Or(items) | Node::And(items) => items.iter().map(count_shared).sum(),
            Node::Not(inner) => count_shared(inner),
            Node::Const(_) | Node::Cmp(_) | Node::Call(_) => 0,
        }
    }

    #[test]
    fn shared_subtrees_answer_as_evaluated_each_time() {
        for (i, cond) in MEMO_CONDITIONS.iter().enumerate() {
            let rule = memo_rule(i, cond);
            // `cond` is tested three times: the first two answers are false whatever it says,
            // so the third rule decides, from the memo.
            let set = RuleSet::new(vec![
                memo_rule(100, &format!("({cond}) and false")),
                memo_rule(101, &format!("not ({cond}) and span.name == \"nope\"")),
                rule.clone(),
            ]);
            let shared: usize = set
                .for_kind(SignalKind::Exception)
                .iter()
                .map(|(_, n)| count_shared(n))
                .sum();
            assert!(
                shared > 0 || cond.contains("signal.kind"),
                "{cond}: nothing shared"
            );
            for_each_memo_ctx(|ctx| {
                let direct = rule.condition.eval(ctx);
                assert_eq!(
                    set.first_match(ctx).map(|r| r.name.as_str()) == Some(rule.name.as_str()),
                    direct,
                    "{cond}"
                );
            });
        }
        // An event condition is never shared inside `AnyEvent`: each event answers for itself.
        let rules = vec![
            memo_rule(0, r#"AnyEvent(spanevent.name == "exception") and false"#),
            memo_rule(
                1,
                r#"AnyEvent(spanevent.name == "exception" and spanevent.attributes["gen_ai.evaluation.name"] == nil) and AnyEvent(spanevent.name != "exception")"#,
            ),
        ];
        let set = RuleSet::new(rules.clone());
        for_each_memo_ctx(|ctx| {
            assert_eq!(
                set.first_match(ctx).map(|r| &r.name),
                first_match(&rules, ctx).map(|r| &r.name)
            );
        });
    }

    #[test]
    fn lowered_steps_stay_small() {
        // The point of lowering is a dense walk: a step is at most three words.
        assert!(program::op_size() <= 24, "{} bytes", program::op_size());
    }

    #[test]
    fn default_pack_shares_its_span_tests() {
        // "Is this a tool span", "the agent's own span or the root"... recur across its rules.
        let rules = compiled_pack("default");
        let set = RuleSet::new(rules);
        let shared: usize = set
            .for_kind(SignalKind::Exception)
            .iter()
            .map(|(_, n)| count_shared(n))
            .sum();
        assert!(shared >= 20, "{shared} shared subtrees");
    }

    #[test]
    fn rule_set_picks_the_same_first_rule() {
        let rules: Vec<CompiledRule> = MEMO_CONDITIONS
            .iter()
            .enumerate()
            .map(|(i, c)| memo_rule(i, c))
            .collect();
        let set = RuleSet::new(rules.clone());
        assert_eq!(set.rules().len(), rules.len());
        // Every suffix, so each rule gets to be the first match somewhere.
        for start in 0..rules.len() {
            let tail = RuleSet::new(rules[start..].to_vec());
            for_each_memo_ctx(|ctx| {
                let direct = first_match(&rules[start..], ctx).map(|r| &r.name);
                assert_eq!(tail.first_match(ctx).map(|r| &r.name), direct);
            });
        }
    }

    #[test]
    fn rule_set_matches_builtin_packs() {
        for preset in ["default", "mast"] {
            let rules = compiled_pack(preset);
            assert!(!rules.is_empty());
            let set = RuleSet::new(rules.clone());
            for_each_memo_ctx(|ctx| {
                let direct = first_match(&rules, ctx).map(|r| &r.name);
                assert_eq!(set.first_match(ctx).map(|r| &r.name), direct, "{preset}");
            });
        }
    }

    #[test]
    fn remembered_set_answers_are_the_direct_ones() {
        // The second pass over the same contexts takes the digit-free texts' answers from
        // `set_memo`; both must give what direct evaluation gives.
        let rules = compiled_pack("default");
        let set = RuleSet::new(rules.clone());
        for pass in 0..2 {
            for_each_memo_ctx(|ctx| {
                let direct = first_match(&rules, ctx).map(|r| &r.name);
                assert_eq!(set.first_match(ctx).map(|r| &r.name), direct, "pass {pass}");
            });
        }
        // A rule set built again gets sets of its own: no answer of the first is taken.
        let again = RuleSet::new(rules.clone());
        for (a, b) in set.paths.iter().zip(&again.paths) {
            assert!(a.memo_id.is_none() || a.memo_id != b.memo_id);
        }
    }

    #[test]
    fn rule_set_indexes_plain_paths_only() {
        let set = RuleSet::new(
            MEMO_CONDITIONS
                .iter()
                .enumerate()
                .map(|(i, c)| memo_rule(i, c))
                .collect(),
        );
        let mut indexed = 0;
        let mut plain = 0;
        let mut rules = set.rules.clone();
        for rule in &mut rules {
            visit_matches(&mut rule.condition.root, &mut |target, _, at| {
                let is_plain = matches!(target, Operand::Path(p) if !matches!(p, Path::Field(Field::EventName) | Path::Attrs(Attrs::Event, _)));
                assert_eq!(at.is_some(), is_plain, "{target:?}");
                indexed += usize::from(at.is_some());
                plain += usize::from(is_plain);
            });
        }
        assert!(indexed > 30 && indexed == plain, "{indexed} of {plain}");
        // The conditions folded per signal kind keep their set references.
        for kind in SignalKind::ALL {
            let mut folded: Vec<(usize, Node)> = set.for_kind(kind).to_vec();
            for (_, node) in &mut folded {
                visit_matches(node, &mut |target, _, at| {
                    let is_plain = matches!(target, Operand::Path(p) if !matches!(p, Path::Field(Field::EventName) | Path::Attrs(Attrs::Event, _)));
                    assert_eq!(at.is_some(), is_plain, "{kind:?} {target:?}");
                });
            }
        }
        // One set per distinct path, each with every regex of that path.
        assert!(set.paths.iter().all(|p| p.set.is_some()));
        let names = set
            .paths
            .iter()
            .filter(|p| p.path == Path::Field(Field::SignalName))
            .count();
        assert_eq!(names, 1);
    }

    #[test]
    fn rule_set_specialises_per_signal_kind() {
        let rules = compiled_pack("default");
        let set = RuleSet::new(rules.clone());
        let feedback = set.for_kind(SignalKind::Feedback);
        // Error rules cannot match feedback; the feedback rules can.
        let names: Vec<&str> = feedback
            .iter()
            .map(|(i, _)| rules[*i].name.as_str())
            .collect();
        assert!(names.contains(&"feedback-tone"), "{names:?}");
        assert!(!names.contains(&"timeout"), "{names:?}");
        // Nothing left compares signal.kind.
        fn reads_kind(n: &Node) -> bool {
            match n {
                Node::Const(_) => false,
                Node::Or(items) | Node::And(items) => items.iter().any(reads_kind),
                Node::Not(n) | Node::Shared(_, n) => reads_kind(n),
                Node::Cmp(c) => {
                    matches!(c.0, Operand::Path(Path::Field(Field::SignalKind)))
                        || matches!(c.2, Operand::Path(Path::Field(Field::SignalKind)))
                }
                Node::Call(c) => matches!(&**c, Call::AnyEvent(n) if reads_kind(n)),
            }
        }
        for kind in SignalKind::ALL {
            let folded = set.for_kind(kind);
            assert!(folded.len() < rules.len(), "{kind:?}");
            assert!(!folded.iter().any(|(_, n)| reads_kind(n)), "{kind:?}");
        }
    }

    #[test]
    fn folding_keeps_every_answer() {
        // Conditions mixing signal.kind with other tests, through and / or / not / AnyEvent.
        let conds = [
            r#"signal.kind == "exception" and IsMatch(signal.name, "Timeout")"#,
            r#"signal.kind != "exception" or span.kind == 3"#,
            r#"not (signal.kind == "status" or signal.kind == "log")"#,
            r#"IsMatch(signal.kind, "^(evaluation|feedback)$") and not false"#,
            r#"AnyEvent(spanevent.name == "exception" and signal.kind == "exception")"#,
            r#"AnyEvent(signal.kind == "guardrail")"#,
            r#"signal.kind < "f" and (true or span.name == "x")"#,
            r#"IsMatch(signal.kind, "exc") == true and signal.kind != "log""#,
            r#"signal.kind == nil or 1 == 1.0"#,
        ];
        for (i, cond) in conds.iter().enumerate() {
            let rule = memo_rule(i, cond);
            let set = RuleSet::new(vec![rule.clone()]);
            for kind in SignalKind::ALL {
                let (res, sc) = (resource(), scope());
                for sp in memo_spans() {
                    let sig = signal(kind, "httpx.ReadTimeout", "m");
                    let ctx = EvalContext {
                        span: &sp,
                        resource: Some(&res),
                        scope: Some(&sc),
                        signal: &sig,
                    };
                    assert_eq!(
                        set.first_match(&ctx).is_some(),
                        rule.condition.eval(&ctx),
                        "{cond} {kind:?}"
                    );
                }
            }
        }
    }
}
