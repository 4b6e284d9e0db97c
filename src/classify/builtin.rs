//! Built-in rule packs (`default`, `mast`) that classify failing agent spans with no user rules.

use crate::classify::rules::RuleSpec;

/// The rules of a preset, in order; empty for an unknown preset.
///
/// Each pack goes from specific to generic: guardrails, evaluations and feedback first (they name
/// what went wrong), then errors by their text, then catch-alls by the kind of span. A signal no
/// rule matches is left to the caller's fallback class. The conditions read the OpenTelemetry
/// GenAI semantic conventions (`gen_ai.*`), OpenInference (`openinference.span.kind`,
/// `tool.name`), OpenLLMetry (`traceloop.span.kind`) and the HTTP and database conventions.
/// `docs/rules.md` lists every rule.
pub fn pack(preset: &str) -> Vec<RuleSpec> {
    match preset {
        "default" => default_pack(),
        "mast" => mast_pack(),
        _ => Vec::new(),
    }
}

fn rule(
    name: &str,
    class: &str,
    confidence: f64,
    description: &str,
    condition: String,
) -> RuleSpec {
    RuleSpec {
        name: name.to_string(),
        class: class.to_string(),
        condition,
        confidence,
        description: description.to_string(),
    }
}

/// An OTTL string literal holding `text`.
fn lit(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `IsMatch(path, "re")`.
fn matches(path: &str, re: &str) -> String {
    format!("IsMatch({path}, {})", lit(re))
}

/// The signal's name (error/exception type, evaluation or guardrail name) or message matches.
fn signal_text(re: &str) -> String {
    format!(
        "({} or {})",
        matches("signal.name", re),
        matches("signal.message", re)
    )
}

/// The guardrail's name (signal, `guardrail.name`, span name) or message matches.
fn guardrail_text(re: &str) -> String {
    format!(
        "({} or {} or {} or {})",
        matches("signal.name", re),
        matches("signal.message", re),
        matches(r#"span.attributes["guardrail.name"]"#, re),
        matches("span.name", re)
    )
}

// --- Which signal ------------------------------------------------------------------------------

/// An error: span status ERROR / `error.type`, an `exception` event, or a correlated exception log.
const ERROR: &str =
    r#"(signal.kind == "exception" or signal.kind == "status" or signal.kind == "log")"#;
/// A thrown exception (event or log record), as opposed to a bare status.
const EXCEPTION: &str = r#"(signal.kind == "exception" or signal.kind == "log")"#;
const EVALUATION: &str = r#"signal.kind == "evaluation""#;
/// A guardrail: the detected signal, or an exception/error on an OpenInference GUARDRAIL span.
const GUARDRAIL: &str =
    r#"(signal.kind == "guardrail" or span.attributes["openinference.span.kind"] == "GUARDRAIL")"#;
const FEEDBACK: &str = r#"signal.kind == "feedback""#;

// --- Which span --------------------------------------------------------------------------------

/// A tool call: GenAI `execute_tool`, OpenInference TOOL, OpenLLMetry tool, or a span naming its tool.
const TOOL_SPAN: &str = r#"(span.attributes["gen_ai.operation.name"] == "execute_tool" or span.attributes["openinference.span.kind"] == "TOOL" or span.attributes["traceloop.span.kind"] == "tool" or span.attributes["gen_ai.tool.name"] != nil or span.attributes["tool.name"] != nil)"#;

/// Tool names that are retrieval in disguise (RAG exposed as a tool).
const RETRIEVAL_TOOL: &str = r"(?i)retriev|knowledge|(^|[_. -])kb([_. -]|$)|(^|[_. -])rag([_. -]|$)|faq|vector|semantic.?search|search.?(docs|documents|articles|index|kb|knowledge|faq)|lookup.?(docs|documents|articles|kb)";

fn retrieval_span() -> String {
    format!(
        r#"(span.attributes["openinference.span.kind"] == "RETRIEVER" or span.attributes["gen_ai.operation.name"] == "retrieval" or span.attributes["gen_ai.data_source.id"] != nil or {} or {})"#,
        matches(r#"span.attributes["gen_ai.tool.name"]"#, RETRIEVAL_TOOL),
        matches(r#"span.attributes["tool.name"]"#, RETRIEVAL_TOOL)
    )
}

/// A database client span (current and older DB conventions).
const DB_SPAN: &str =
    r#"(span.attributes["db.system.name"] != nil or span.attributes["db.system"] != nil)"#;

/// The agent's own span or the root of the run: where the final output is judged.
const AGENT_OR_ROOT_SPAN: &str = r#"(span.attributes["gen_ai.operation.name"] == "invoke_agent" or span.attributes["gen_ai.operation.name"] == "invoke_workflow" or span.attributes["openinference.span.kind"] == "AGENT" or span.attributes["traceloop.span.kind"] == "agent" or span.attributes["traceloop.span.kind"] == "workflow" or IsRootSpan())"#;

/// The HTTP response status (current or pre-1.21 attribute) matches `re`; ints match as text.
fn http_status(re: &str) -> String {
    format!(
        "({} or {})",
        matches(r#"span.attributes["http.response.status_code"]"#, re),
        matches(r#"span.attributes["http.status_code"]"#, re)
    )
}

// --- Words -------------------------------------------------------------------------------------

const TONE_WORDS: &str = "(?i)tone|brand|polite|toxic|profan|rude|insult|offensive|hate.?speech|(^|[_. -])hate|harass|obscen|vulgar|nsfw|style|(^|[_. -])voice|sentiment|formal|professional|empathy|courte|friendl|civil|competitor|slang|emoji|concise|verbos";
const TONE_LABELS: &str = "(?i)^(toxic|rude|off.?brand|impolite|unprofessional|offensive|inappropriate|too.?formal|too.?casual)$";
const TOPIC_WORDS: &str = "(?i)topic|scope|denied.?topic|allow.?list|off.?domain|out.?of.?domain";
const GROUNDING_WORDS: &str = "(?i)ground(ed|ing)|hallucinat|faithful|fact.?(check|ual)|(^|[_. -])facts?([_. -]|$)|provenance|citation|attribution|unsupported.?claim";
const GROUNDING_LABELS: &str =
    "(?i)^(hallucinated|hallucination|unfaithful|not.?grounded|ungrounded)$";
const RETRIEVAL_EVAL_WORDS: &str = "(?i)context.?(precision|recall|relevan|sufficien|utili|entit)|contextual.?(precision|recall|relevan)|retriev|doc(ument)?.?relevan|ndcg|mrr|hit.?rate|fresh|stale";
const STALE_LABELS: &str = "(?i)^(stale|outdated|out.?of.?date|expired)$";
const FORMAT_WORDS: &str = "(?i)json|schema|(^|[_. -])format|valid.?(sql|url|python|choice|length|range)|regex|sql|pars(e|ing|er)|structur";
const TOOL_EVAL_WORDS: &str = "(?i)tool|function.?call|argument|parameter|json.?correct|schema|action.?(correct|accura|select)";
const SCOPE_EVAL_WORDS: &str = "(?i)scope|intent.?resol|topic.?adher|coverage|refus|answerab|escalat|capabilit|handoff|deflect";
const REFUSAL_LABELS: &str = "(?i)^(refused|refusal|escalate|escalated|out.?of.?scope|off.?topic|unanswerable|unsupported.?(intent|request|language|product)|handoff|deflected)$";

const REFUSAL_TEXT: &str = "(?i)(can.?t|cannot|unable to|not able to|not allowed to) (help|assist|answer|do that|support)|outside (of )?(my|the|our) (scope|expertise|capabilit)|beyond (my|the|our) (scope|capabilit)|connect(ing)? you (with|to) (a |an )?(human|person|agent|representative|specialist)|(escalat|transferr?)(e|ed|ing)? (this |you )?to (a |an )?(human|person|agent|representative|support|specialist)|out of scope|unsupported (language|product|request|region|locale)";

const TONE_FEEDBACK: &str = "(?i)rude|tone|condescend|patroni|robotic|unprofessional|impolite|sarcas|offensive|disrespect|snark|arrogant|pushy|preachy|too (long|verbose|wordy|formal|casual)|off.?brand|brand voice|not our (voice|brand)|emoji|slang";
const DATA_FEEDBACK: &str = "(?i)out.?of.?date|outdated|stale|old (info|information|data|price|policy|version)|(wrong|incorrect|inaccurate) (price|address|date|hours|number|info|information|data|details|policy|stock|availability)|no longer (valid|available|true|accurate|exists?)|doesn.?t exist anymore|broken link|dead link|missing (info|information|data|details)";
const COVERAGE_FEEDBACK: &str = "(?i)(can.?t|couldn.?t|cannot|could not|didn.?t|did not|won.?t|unable to) (help|answer|understand|assist)|not what i asked|(talk|speak) to (a |an )?(human|person|real|agent|representative)|real person|live agent|human agent|doesn.?t (support|handle|cover)|not supported|no option for";

const UNKNOWN_TOOL: &str = "(?i)is not a valid tool|not a valid (tool|function)|(tool|function) .{0,80}not found in|tool.?not.?found|unknown (tool|function)|no such (tool|function)|NoSuchTool|unavailable tool|no tool (named|called|matching)|don.?t exist, these are the only available";
const OUT_OF_SCOPE: &str = "(?i)out of scope|outside (the |of )?(supported |allowed )?scope|unsupported.?(language|locale|product|region|country|currency|market|intent|request.?type|query.?type)|(language|locale|product|region|country|currency|intent).{0,40} not supported|no (matching|suitable) (intent|handler|route|skill|agent|workflow)|no (intent|handler|route|skill) (found|matched|available)|intent not (found|recognized|recognised)|fallback intent|NoMatchingIntent|cannot handle (this|the) request";
const ESCALATION: &str = "(?i)escalat|human.?(in.?the.?loop|handoff|review|takeover)|hand.?off to (a )?(human|person|agent)|transfer(red)? to (a |an )?(human|live|agent|representative)|needs? (a )?human";

const EMPTY_RETRIEVAL: &str = "(?i)no (documents|docs|results|matches|hits|records|chunks|passages|context|relevant)|(empty|zero|0) (results|documents|docs|hits|records|chunks|context|index|collection)|nothing (was )?found|returned no (results|documents|data|records|matches|hits)|found 0 |not found in (the )?(knowledge.?base|kb|index|collection|corpus|docs|documentation|catalog|faq)|knowledge.?base (is )?(empty|missing|unavailable)|(index|collection) (is )?empty|no such (index|collection)|(index|collection) .{0,60}(does not exist|not found)";
const STALE_TEXT: &str = "(?i)stale (data|documents?|content|index|cache|records?|prices?|info|information|embeddings?|results?)|outdated|out.?of.?date|expired (data|document|record|content|price|listing|offer|policy|cache)|no longer accurate|superseded|freshness";
const MALFORMED_RECORD: &str = "(?i)KeyError|missing (required )?(field|key|column|attribute|property|value|metadata)|malformed|corrupt|invalid (record|document|row|data|format|encoding|metadata|embedding)|JSONDecodeError|UnicodeDecodeError|null value|NoneType|unexpected null|empty (document|record|field|content|text|page_content)|schema (mismatch|violation)|dimension mismatch|could not (parse|decode)|parse error";
const SQL_INVALID: &str = "(?i)syntax error|no such (column|table)|unknown column|(column|relation|table) .{0,80}does not exist|ambiguous column|ProgrammingError|UndefinedColumn|UndefinedTable|SQLSyntaxError";
const DB_DATA: &str = "(?i)constraint|duplicate key|foreign key|unique|violat|no rows|NoResultFound|DoesNotExist|RecordNotFound|EntityNotFound|not found|invalid input (syntax|value)|data type mismatch|out of range|IntegrityError|DataError|InvalidTextRepresentation|NumericValueOutOfRange|CardinalityViolation|MultipleResultsFound";

const MAX_ITERATIONS: &str = "(?i)MaxTurnsExceeded|max(imum)?.?(turns|iterations|steps|rounds|tool.?calls) (exceeded|reached)|(turn|iteration|step|recursion|tool.?call) limit|GraphRecursionError|RecursionError|UsageLimitExceeded|request_limit|too many (steps|iterations|turns|tool calls)|loop detected|infinite loop|stopped due to (iteration|max)|exceeded maximum retries";
const RATE_LIMIT: &str = "(?i)rate.?limit|too many requests|quota|throttl|ResourceExhausted|RESOURCE_EXHAUSTED|overloaded|^429$|^529$";
const TIMEOUT: &str =
    r"(?i)time.?outs?(\b|_|error|exception)|timed.?out|deadline.?exceeded|^408$|^504$";
const CONTEXT_WINDOW: &str = "(?i)context.?length.?exceeded|maximum context length|context.?window|prompt is too long|too many tokens|token limit|input is too long|ContextWindowExceeded";
const AUTH: &str = "(?i)AuthenticationError|PermissionDenied|PERMISSION_DENIED|Unauthenticated|unauthori[sz]ed|forbidden|invalid.?api.?key|incorrect api key|access denied|missing credentials|^401$|^403$";
const SCHEMA_PARSE: &str = "(?i)ValidationError|validation (error|failed)|JSONDecodeError|json|schema|invalid (argument|parameter|input|tool.?input|tool.?call|function.?call|type)|missing (required )?(argument|parameter|field|property)|unexpected (keyword )?argument|required (positional )?argument|TypeError|InvalidToolInput|ToolInputError|OutputParserException|could not parse|failed to parse|parse error|ParseError|malformed|ModelBehaviorError|UnexpectedModelBehavior|FunctionCallInvalidArguments|BadRequestError|UnprocessableEntity|^400$|^422$";
const CONNECTION: &str = "(?i)APIConnectionError|ConnectionError|ConnectError|connection (refused|reset|aborted|closed|error)|ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENOTFOUND|name resolution|getaddrinfo|SSLError|certificate verify|UNAVAILABLE|service unavailable|BrokenPipe|RemoteDisconnected|max retries exceeded";
const CODE_EXCEPTION: &str = "(?i)TypeError|AttributeError|KeyError|IndexError|NameError|ValueError|AssertionError|ZeroDivisionError|UnboundLocalError|NotImplementedError|NullPointerException|IllegalArgumentException|IllegalStateException|ClassCastException|ReferenceError|panicked|nil pointer|is not a function|NoneType|cannot read propert";

fn default_pack() -> Vec<RuleSpec> {
    let retrieval = retrieval_span();
    vec![
        // Guardrails: the guardrail's name says what it checks.
        rule(
            "guardrail-tone-brand",
            "tone_brand",
            0.95,
            "A tone, politeness, toxicity, profanity, brand-voice or competitor-mention guardrail fired.",
            format!("{GUARDRAIL} and {}", guardrail_text(TONE_WORDS)),
        ),
        rule(
            "guardrail-off-topic",
            "coverage_gap",
            0.9,
            "A topic or scope guardrail (topical rail, denied topic, restrict-to-topic) blocked an out-of-scope request.",
            format!("{GUARDRAIL} and {}", guardrail_text(TOPIC_WORDS)),
        ),
        rule(
            "guardrail-grounding",
            "data_quality",
            0.8,
            "A grounding, hallucination, fact-check or provenance guardrail found an answer unsupported by the retrieved context.",
            format!("{GUARDRAIL} and {}", guardrail_text(GROUNDING_WORDS)),
        ),
        rule(
            "guardrail-output-format",
            "logic_tool",
            0.85,
            "A JSON, schema, SQL or format validator rejected a tool call or structured output.",
            format!("{GUARDRAIL} and {}", guardrail_text(FORMAT_WORDS)),
        ),
        rule(
            "content-filter",
            "tone_brand",
            0.7,
            "The model provider's content filter stopped the response (finish reason content_filter).",
            r#"signal.kind == "guardrail" and signal.name == "content_filter""#.to_string(),
        ),
        // Evaluations: the evaluator's name or label says what failed.
        rule(
            "eval-retrieval-quality",
            "data_quality",
            0.9,
            "A retrieval evaluation (context precision/recall/relevance, document relevance, freshness) failed.",
            format!("{EVALUATION} and {}", matches("signal.name", RETRIEVAL_EVAL_WORDS)),
        ),
        rule(
            "label-stale",
            "data_quality",
            0.9,
            "An evaluation or feedback labelled the answer stale or out of date.",
            matches("signal.label", STALE_LABELS),
        ),
        rule(
            "eval-tone-brand",
            "tone_brand",
            0.9,
            "A tone, brand-voice, politeness, toxicity or style evaluation failed.",
            format!(
                "{EVALUATION} and ({} or {})",
                matches("signal.name", TONE_WORDS),
                matches("signal.label", TONE_LABELS)
            ),
        ),
        rule(
            "eval-tool-use",
            "logic_tool",
            0.85,
            "A tool-call evaluation (tool correctness, argument correctness, tool selection, JSON correctness) failed.",
            format!("{EVALUATION} and {}", matches("signal.name", TOOL_EVAL_WORDS)),
        ),
        rule(
            "eval-scope",
            "coverage_gap",
            0.85,
            "A scope, intent-resolution, topic-adherence or refusal evaluation failed, or an evaluator labelled the request out of scope.",
            format!(
                "{EVALUATION} and ({} or {})",
                matches("signal.name", SCOPE_EVAL_WORDS),
                matches("signal.label", REFUSAL_LABELS)
            ),
        ),
        rule(
            "eval-grounding",
            "data_quality",
            0.75,
            "A faithfulness, groundedness or hallucination evaluation failed: the answer is not supported by the context it was given.",
            format!(
                "{EVALUATION} and ({} or {})",
                matches("signal.name", GROUNDING_WORDS),
                matches("signal.label", GROUNDING_LABELS)
            ),
        ),
        rule(
            "eval-on-retriever",
            "data_quality",
            0.8,
            "Any failing evaluation attached to a retriever span.",
            format!("{EVALUATION} and {retrieval}"),
        ),
        rule(
            "eval-on-tool",
            "logic_tool",
            0.7,
            "Any failing evaluation attached to a tool-call span.",
            format!("{EVALUATION} and {TOOL_SPAN}"),
        ),
        rule(
            "label-unsupported",
            "coverage_gap",
            0.6,
            "An evaluation or feedback labelled the request unsupported (and no grounding evaluation explains it).",
            format!("({EVALUATION} or {FEEDBACK}) and {}", matches("signal.label", "(?i)^(unsupported|not.?supported)$")),
        ),
        // User feedback: the comment says what the user disliked.
        rule(
            "feedback-tone",
            "tone_brand",
            0.8,
            "Negative user feedback about tone, rudeness, verbosity or brand voice.",
            format!("{FEEDBACK} and {}", matches("signal.message", TONE_FEEDBACK)),
        ),
        rule(
            "feedback-stale-data",
            "data_quality",
            0.75,
            "Negative user feedback about outdated, wrong or missing facts (prices, hours, policies, links).",
            format!("{FEEDBACK} and {}", matches("signal.message", DATA_FEEDBACK)),
        ),
        rule(
            "feedback-coverage",
            "coverage_gap",
            0.75,
            "Negative user feedback that the agent could not help, did not understand, or that the user wanted a human.",
            format!("{FEEDBACK} and {}", matches("signal.message", COVERAGE_FEEDBACK)),
        ),
        rule(
            "refusal-or-escalation",
            "coverage_gap",
            0.8,
            "The agent refused (\"I can't help with that\", finish reason refusal) or handed the user to a human.",
            format!(
                "(((signal.kind == \"evaluation\" or signal.kind == \"feedback\" or {GUARDRAIL}) and {}) or {} or {})",
                matches("signal.message", REFUSAL_TEXT),
                matches(r#"span.attributes["gen_ai.response.finish_reasons"]"#, "^refusal$"),
                matches("signal.label", REFUSAL_LABELS)
            ),
        ),
        // Errors, by what their type and message say.
        rule(
            "unknown-tool",
            "coverage_gap",
            0.85,
            "The model asked for a tool the agent does not have (\"is not a valid tool\", \"Tool x not found in agent y\", NoSuchToolError).",
            format!("{ERROR} and {}", signal_text(UNKNOWN_TOOL)),
        ),
        rule(
            "out-of-scope-request",
            "coverage_gap",
            0.85,
            "The request is outside what the agent supports: unsupported language, product or region, no matching intent or route.",
            format!("{ERROR} and {}", signal_text(OUT_OF_SCOPE)),
        ),
        rule(
            "escalation-to-human",
            "coverage_gap",
            0.75,
            "The run ended in an escalation or hand-off to a human.",
            format!("{ERROR} and {}", signal_text(ESCALATION)),
        ),
        rule(
            "retrieval-empty",
            "data_quality",
            0.85,
            "A lookup found nothing: no documents or results, empty index or collection, not found in the knowledge base.",
            format!("{ERROR} and {}", signal_text(EMPTY_RETRIEVAL)),
        ),
        rule(
            "stale-data",
            "data_quality",
            0.8,
            "An error reports stale, outdated, expired or superseded data.",
            format!("{ERROR} and {}", signal_text(STALE_TEXT)),
        ),
        rule(
            "retrieval-record-malformed",
            "data_quality",
            0.85,
            "A retriever or database span failed on a malformed record: missing field, bad encoding, null or empty content, embedding dimension mismatch.",
            format!("{ERROR} and ({retrieval} or {DB_SPAN}) and {}", signal_text(MALFORMED_RECORD)),
        ),
        rule(
            "db-query-invalid",
            "logic_tool",
            0.8,
            "A database rejected the query itself (syntax error, unknown table or column): usually a generated query with wrong arguments.",
            format!("{ERROR} and {DB_SPAN} and {}", signal_text(SQL_INVALID)),
        ),
        rule(
            "db-data-error",
            "data_quality",
            0.8,
            "A database error about the data: record not found, constraint or uniqueness violation, invalid or out-of-range value.",
            format!("{ERROR} and {DB_SPAN} and {}", signal_text(DB_DATA)),
        ),
        rule(
            "max-iterations",
            "logic_tool",
            0.9,
            "The agent looped: max turns or iterations exceeded, recursion limit, usage limit, loop detected.",
            format!("{ERROR} and {}", signal_text(MAX_ITERATIONS)),
        ),
        rule(
            "rate-limited",
            "logic_tool",
            0.9,
            "A tool or model call was rate limited, throttled or over quota (HTTP 429, RESOURCE_EXHAUSTED, overloaded).",
            format!("{ERROR} and ({} or {})", signal_text(RATE_LIMIT), http_status("^429$")),
        ),
        rule(
            "tool-timeout",
            "logic_tool",
            0.95,
            "A tool call timed out.",
            format!(
                r#"{ERROR} and {TOOL_SPAN} and ({} or AnyEvent(spanevent.name == "exception" and {}))"#,
                signal_text(TIMEOUT),
                matches(r#"spanevent.attributes["exception.type"]"#, TIMEOUT)
            ),
        ),
        rule(
            "timeout",
            "logic_tool",
            0.75,
            "A model, HTTP or other downstream call timed out (fix: timeouts, retries, or a faster path).",
            format!("{ERROR} and ({} or {})", signal_text(TIMEOUT), http_status("^(408|504)$")),
        ),
        rule(
            "context-window-exceeded",
            "logic_tool",
            0.85,
            "The prompt no longer fits the model's context window (fix: truncation, summarisation or config).",
            format!("{ERROR} and {}", signal_text(CONTEXT_WINDOW)),
        ),
        rule(
            "auth-or-permission",
            "logic_tool",
            0.8,
            "A tool or model call was refused for credentials or permissions (401, 403, invalid API key).",
            format!("{ERROR} and ({} or {})", signal_text(AUTH), http_status("^(401|403)$")),
        ),
        rule(
            "tool-http-error",
            "logic_tool",
            0.9,
            "A tool call got an HTTP 4xx or 5xx response.",
            format!(
                "{ERROR} and {TOOL_SPAN} and ({} or {})",
                http_status("^[45][0-9][0-9]$"),
                matches("signal.name", "^[45][0-9][0-9]$")
            ),
        ),
        rule(
            "tool-args-or-output-invalid",
            "logic_tool",
            0.85,
            "Tool arguments or a structured output failed to parse or validate (JSON, schema, pydantic, output parser, unexpected argument).",
            format!("{ERROR} and {}", signal_text(SCHEMA_PARSE)),
        ),
        rule(
            "connection-error",
            "logic_tool",
            0.75,
            "A tool or model endpoint could not be reached (connection refused or reset, DNS, TLS, unavailable).",
            format!("{ERROR} and {}", signal_text(CONNECTION)),
        ),
        rule(
            "upstream-http-error",
            "logic_tool",
            0.65,
            "An HTTP call inside the agent got a 5xx response.",
            format!("{ERROR} and {}", http_status("^5[0-9][0-9]$")),
        ),
        // Catch-alls by span kind, lower confidence.
        rule(
            "retriever-error",
            "data_quality",
            0.6,
            "Any other error on a retriever span.",
            format!("{ERROR} and {retrieval}"),
        ),
        rule(
            "tool-error",
            "logic_tool",
            0.65,
            "Any other error on a tool-call span.",
            format!("{ERROR} and {TOOL_SPAN}"),
        ),
        rule(
            "agent-code-exception",
            "logic_tool",
            0.55,
            "A programming error in agent code (TypeError, KeyError, NullPointerException, ...).",
            format!("{EXCEPTION} and {}", matches("signal.name", CODE_EXCEPTION)),
        ),
    ]
}

// --- MAST (Multi-Agent System failure Taxonomy) ------------------------------------------------

const PREMATURE_EVAL: &str =
    "(?i)premature|early.?(stop|termination|exit)|incomplete|completeness|unfinished|truncat";
const PREMATURE_TEXT: &str = "(?i)LengthFinishReasonError|stopped early|terminated (early|prematurely)|premature|incomplete (output|response|answer|result)|truncated (output|response|answer)|max.?tokens reached";
const SPEC_EVAL: &str = "(?i)role.?adher|role.?play|persona|instruction|prompt.?align|task.?adher|plan.?adher|guideline|policy.?adher|system.?prompt|specification|constraint|format.?adher";
const REPETITION_EVAL: &str =
    "(?i)repet|loop|step.?efficien|redundan|terminat|stop.?condition|plan.?efficien";
const MEMORY_EVAL: &str =
    "(?i)knowledge.?retention|memory|context.?retention|conversation.?history|recall.?of.?conversation";
const HANDOFF_TEXT: &str =
    "(?i)handoff|hand.?off|transfer_to_|delegat|sub.?agent|InvalidHandoff|multiple handoffs";
const INTER_AGENT_EVAL: &str = "(?i)clarif|derail|drift|off.?track|withh|information.?shar|ignor|acknowledg|reasoning.?action|action.?align|coordinat|collaborat|communicat|handoff|conversation.?reset|misalign";
const REASONING_ACTION_EVAL: &str =
    "(?i)tool.?(correct|select|call|use|accura)|function.?call|argument.?correct|action.?(correct|accura|select)";
const VERIFY_EVAL: &str = "(?i)verif|task.?(completion|success)|goal.?accura|agent.?goal|correct|final.?answer|test|solution|resolution|success";
const VERIFY_TEXT: &str = "(?i)AssertionError|verification (failed|error)|verifier|tests? failed|failing tests?|checks? failed|OutputGuardrailTripwireTriggered";
const CLARIFY_FEEDBACK: &str = "(?i)clarif|misunderst|didn.?t ask|never asked|not what i (asked|meant|wanted)|wrong (question|thing|topic|task)|ignored (my|what)|off.?track|went off";
const REPEAT_FEEDBACK: &str =
    "(?i)repeat|loop|same (answer|thing|question|response)|kept (asking|saying|doing)|over and over|again and again";
const FORGOT_FEEDBACK: &str = "(?i)forg[eo]t|already (told|said|gave|provided)|lost (track|context)|(doesn.?t|didn.?t|does not|did not) remember";
const INCOMPLETE_FEEDBACK: &str = "(?i)incomplete|unfinished|(didn.?t|did not|never) (finish|complete)|stopped (early|halfway|mid)|cut off|gave up|half.?done|only (did|answered) (part|half)";
const ROLE_GUARDRAIL: &str = "(?i)topic|scope|policy|role|persona|instruction|denied|tone|brand";

fn mast_pack() -> Vec<RuleSpec> {
    vec![
        rule(
            "mast-premature-termination",
            "task_verification",
            0.85,
            "FM-3.1 premature termination: a completeness/early-stop evaluation failed, or the run stopped on a length limit or early exit.",
            format!(
                "(({EVALUATION} and {}) or ({ERROR} and {}))",
                matches("signal.name", PREMATURE_EVAL),
                signal_text(PREMATURE_TEXT)
            ),
        ),
        rule(
            "mast-role-spec-eval",
            "specification",
            0.9,
            "FM-1.1/1.2 disobeying the task or role specification: an instruction-following, role-adherence, task- or plan-adherence evaluation failed.",
            format!("{EVALUATION} and {}", matches("signal.name", SPEC_EVAL)),
        ),
        rule(
            "mast-step-repetition",
            "specification",
            0.9,
            "FM-1.3/1.5 step repetition or unaware of termination conditions: max turns or recursion limit hit, or a loop/step-efficiency evaluation failed.",
            format!(
                "(({ERROR} and {}) or ({EVALUATION} and {}))",
                signal_text(MAX_ITERATIONS),
                matches("signal.name", REPETITION_EVAL)
            ),
        ),
        rule(
            "mast-conversation-history",
            "specification",
            0.8,
            "FM-1.4 loss of conversation history: a knowledge-retention or memory evaluation failed.",
            format!("{EVALUATION} and {}", matches("signal.name", MEMORY_EVAL)),
        ),
        rule(
            "mast-handoff-failure",
            "inter_agent_misalignment",
            0.85,
            "A hand-off or delegation between agents failed.",
            format!(
                "{ERROR} and ({} or {})",
                signal_text(HANDOFF_TEXT),
                matches("span.name", "(?i)handoff|transfer_to_")
            ),
        ),
        rule(
            "mast-inter-agent-eval",
            "inter_agent_misalignment",
            0.85,
            "FM-2.x: a clarification, derailment, information-sharing, ignored-input or reasoning-action evaluation failed.",
            format!("{EVALUATION} and {}", matches("signal.name", INTER_AGENT_EVAL)),
        ),
        rule(
            "mast-reasoning-action-mismatch",
            "inter_agent_misalignment",
            0.65,
            "FM-2.6 reasoning-action mismatch: a tool-correctness or tool-selection evaluation failed.",
            format!("{EVALUATION} and {}", matches("signal.name", REASONING_ACTION_EVAL)),
        ),
        rule(
            "mast-verification-eval",
            "task_verification",
            0.85,
            "FM-3.2/3.3 no or incorrect verification: a task-completion, goal-accuracy, correctness or test evaluation of the result failed.",
            format!("{EVALUATION} and {}", matches("signal.name", VERIFY_EVAL)),
        ),
        rule(
            "mast-verification-error",
            "task_verification",
            0.8,
            "A verifier, test or output check failed at run time.",
            format!("{ERROR} and {}", signal_text(VERIFY_TEXT)),
        ),
        rule(
            "mast-feedback-clarification",
            "inter_agent_misalignment",
            0.7,
            "FM-2.2/2.3 user feedback that the agent misunderstood, never asked for clarification, or went off track.",
            format!("{FEEDBACK} and {}", matches("signal.message", CLARIFY_FEEDBACK)),
        ),
        rule(
            "mast-feedback-repetition",
            "specification",
            0.7,
            "FM-1.3 user feedback that the agent repeated itself or looped.",
            format!("{FEEDBACK} and {}", matches("signal.message", REPEAT_FEEDBACK)),
        ),
        rule(
            "mast-feedback-forgot",
            "specification",
            0.7,
            "FM-1.4 user feedback that the agent forgot what it had been told.",
            format!("{FEEDBACK} and {}", matches("signal.message", FORGOT_FEEDBACK)),
        ),
        rule(
            "mast-feedback-incomplete",
            "task_verification",
            0.7,
            "FM-3.1 user feedback that the task was left unfinished.",
            format!("{FEEDBACK} and {}", matches("signal.message", INCOMPLETE_FEEDBACK)),
        ),
        rule(
            "mast-role-guardrail",
            "specification",
            0.7,
            "FM-1.2 disobeying the role specification: a topic, policy, persona or tone guardrail fired on the agent.",
            format!("{GUARDRAIL} and {}", guardrail_text(ROLE_GUARDRAIL)),
        ),
        rule(
            "mast-final-output-eval",
            "task_verification",
            0.65,
            "Any other failing evaluation of an agent's final output (on the agent or root span).",
            format!("{EVALUATION} and {AGENT_OR_ROOT_SPAN}"),
        ),
        rule(
            "mast-final-output-feedback",
            "task_verification",
            0.5,
            "Any other negative user feedback on an agent's final output: the result went out unverified.",
            format!("{FEEDBACK} and {AGENT_OR_ROOT_SPAN}"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::rules::{compile_rule, first_match, CompiledRule, EvalContext};
    use crate::classify::signals::{Signal, SignalConfig, SignalKind};
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
    use std::sync::OnceLock;

    const PRESETS: [&str; 2] = ["default", "mast"];

    fn compiled(preset: &str) -> Vec<CompiledRule> {
        pack(preset)
            .iter()
            .map(|r| compile_rule(r).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// Compiled packs, built once: regex compilation is slow in debug builds.
    fn cached(preset: &str) -> &'static [CompiledRule] {
        static DEFAULT: OnceLock<Vec<CompiledRule>> = OnceLock::new();
        static MAST: OnceLock<Vec<CompiledRule>> = OnceLock::new();
        match preset {
            "mast" => MAST.get_or_init(|| compiled("mast")),
            _ => DEFAULT.get_or_init(|| compiled("default")),
        }
    }

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(key: &str, v: &str) -> KeyValue {
        kv(key, Value::StringValue(v.to_string()))
    }

    fn event(name: &str, attrs: Vec<KeyValue>) -> Event {
        Event {
            name: name.to_string(),
            attributes: attrs,
            ..Default::default()
        }
    }

    fn exception(ty: &str, msg: &str) -> Event {
        event(
            "exception",
            vec![s("exception.type", ty), s("exception.message", msg)],
        )
    }

    fn evaluation(name: &str, label: Option<&str>, score: Option<f64>, why: &str) -> Event {
        let mut a = vec![s("gen_ai.evaluation.name", name)];
        if let Some(l) = label {
            a.push(s("gen_ai.evaluation.score.label", l));
        }
        if let Some(x) = score {
            a.push(kv("gen_ai.evaluation.score.value", Value::DoubleValue(x)));
        }
        a.push(s("gen_ai.evaluation.explanation", why));
        event("gen_ai.evaluation.result", a)
    }

    fn error_status(msg: &str) -> Option<Status> {
        Some(Status {
            message: msg.to_string(),
            code: StatusCode::Error as i32,
        })
    }

    fn span(name: &str, attrs: Vec<KeyValue>, events: Vec<Event>, status: Option<Status>) -> Span {
        Span {
            name: name.to_string(),
            kind: 1,
            parent_span_id: vec![9; 8],
            attributes: attrs,
            events,
            status,
            ..Default::default()
        }
    }

    fn tool(tool_name: &str) -> Vec<KeyValue> {
        vec![
            s("gen_ai.operation.name", "execute_tool"),
            s("gen_ai.tool.name", tool_name),
        ]
    }

    /// Runs real signal detection, then the pack; returns (rule, class) of the first match.
    fn classify(preset: &str, sp: &Span) -> Option<(String, String)> {
        let signals = SignalConfig::default().detect(sp);
        let signal: &Signal = signals
            .first()
            .unwrap_or_else(|| panic!("span {:?} carries no failure signal", sp.name));
        let ctx = EvalContext {
            span: sp,
            resource: None,
            scope: None,
            signal,
        };
        first_match(cached(preset), &ctx).map(|r| (r.name.clone(), r.class.clone()))
    }

    fn class_of(preset: &str, sp: &Span) -> Option<String> {
        classify(preset, sp).map(|(_, c)| c)
    }

    #[test]
    fn every_builtin_rule_compiles_and_is_well_formed() {
        for preset in PRESETS {
            let rules = pack(preset);
            assert!(!rules.is_empty());
            let mut names = std::collections::HashSet::new();
            for r in &rules {
                assert!(
                    compile_rule(r).is_ok(),
                    "{preset}/{}: {:?}",
                    r.name,
                    compile_rule(r).err()
                );
                assert!(
                    names.insert(r.name.clone()),
                    "duplicate rule name {}",
                    r.name
                );
                assert!(
                    r.name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "{} is not kebab-case",
                    r.name
                );
                assert!((0.0..=1.0).contains(&r.confidence), "{}", r.name);
                assert!(r.description.ends_with('.'), "{}", r.name);
                assert!(r.condition != "true", "{} matches everything", r.name);
            }
        }
        assert!(pack("nope").is_empty());
        let classes = |p: &str| {
            let mut c: Vec<String> = pack(p).into_iter().map(|r| r.class).collect();
            c.sort();
            c.dedup();
            c
        };
        assert_eq!(
            classes("default"),
            ["coverage_gap", "data_quality", "logic_tool", "tone_brand"]
        );
        assert_eq!(
            classes("mast"),
            [
                "inter_agent_misalignment",
                "specification",
                "task_verification"
            ]
        );
    }

    #[test]
    fn no_rule_matches_every_signal() {
        // A bare status error on a plain internal span with no text is left to the fallback.
        let sp = span("process", vec![], vec![], error_status(""));
        assert_eq!(classify("default", &sp), None);
        assert_eq!(classify("mast", &sp), None);
    }

    #[test]
    fn default_tone_brand() {
        // Guardrails AI ToxicLanguage validator on an OpenInference GUARDRAIL span.
        let sp = span(
            "guard.validate",
            vec![
                s("openinference.span.kind", "GUARDRAIL"),
                s("guardrail.name", "ToxicLanguage"),
            ],
            vec![],
            error_status("Validation failed for field with errors: The following sentences were found to be toxic"),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("guardrail-tone-brand")
        );
        // A brand-voice LLM judge on the chat span.
        let sp = span(
            "chat gpt-4o",
            vec![s("gen_ai.operation.name", "chat")],
            vec![evaluation(
                "brand_voice",
                Some("off_brand"),
                Some(0.2),
                "Uses slang the style guide forbids",
            )],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("tone_brand"));
        // Azure OpenAI content filter.
        let sp = span(
            "chat gpt-4o",
            vec![
                s("gen_ai.operation.name", "chat"),
                kv(
                    "gen_ai.response.finish_reasons",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::StringValue("content_filter".into())),
                        }],
                    }),
                ),
            ],
            vec![],
            None,
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("content-filter")
        );
        // Thumbs-down about tone.
        let sp = span(
            "invoke_agent support",
            vec![
                s("gen_ai.operation.name", "invoke_agent"),
                s("user.feedback.label", "thumbs_down"),
                s(
                    "user.feedback.comment",
                    "The bot was condescending and rude",
                ),
            ],
            vec![],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("tone_brand"));
    }

    #[test]
    fn default_logic_tool() {
        // httpx timeout inside a tool.
        let sp = span(
            "execute_tool get_weather",
            tool("get_weather"),
            vec![exception(
                "httpx.ReadTimeout",
                "The read operation timed out",
            )],
            error_status("The read operation timed out"),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("tool-timeout")
        );
        // Tool got an HTTP 503 (status only, error.type = status code).
        let mut attrs = tool("create_ticket");
        attrs.push(kv("http.response.status_code", Value::IntValue(503)));
        attrs.push(s("error.type", "503"));
        let sp = span(
            "execute_tool create_ticket",
            attrs,
            vec![],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("tool-http-error")
        );
        // Pydantic validation of tool arguments (OpenInference TOOL span).
        let sp = span(
            "lookup_order",
            vec![
                s("openinference.span.kind", "TOOL"),
                s("tool.name", "lookup_order"),
            ],
            vec![exception(
                "pydantic_core._pydantic_core.ValidationError",
                "1 validation error for LookupOrderArgs\norder_id\n  Field required",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("tool-args-or-output-invalid")
        );
        // OpenAI Agents SDK loop.
        let sp = span(
            "invoke_agent triage",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![exception(
                "agents.exceptions.MaxTurnsExceeded",
                "Max turns (10) exceeded",
            )],
            error_status("Max turns (10) exceeded"),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("max-iterations")
        );
        // LangGraph recursion limit.
        let sp = span(
            "LangGraph",
            vec![s("openinference.span.kind", "CHAIN")],
            vec![exception(
                "langgraph.errors.GraphRecursionError",
                "Recursion limit of 25 reached without hitting a stop condition.",
            )],
            error_status(""),
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("logic_tool"));
        // Rate limit from the model provider, reported only through error.type.
        let sp = span(
            "chat gpt-4o",
            vec![
                s("gen_ai.operation.name", "chat"),
                s("error.type", "openai.RateLimitError"),
            ],
            vec![],
            error_status("Error code: 429 - Rate limit reached for gpt-4o"),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("rate-limited")
        );
        // A plain exception in a tool.
        let sp = span(
            "execute_tool calc",
            tool("calc"),
            vec![exception("ZeroDivisionError", "division by zero")],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("tool-error")
        );
        // Text-to-SQL: generated SQL names a column that does not exist.
        let sp = span(
            "SELECT shop",
            vec![s("db.system.name", "postgresql"), s("error.type", "42703")],
            vec![exception(
                "psycopg.errors.UndefinedColumn",
                "column \"total_price\" does not exist",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("db-query-invalid")
        );
    }

    #[test]
    fn default_data_quality() {
        // OpenInference retriever that found nothing.
        let sp = span(
            "retrieve",
            vec![s("openinference.span.kind", "RETRIEVER")],
            vec![exception(
                "RetrievalError",
                "No documents found for query 'refund policy 2024'",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("retrieval-empty")
        );
        // Ragas context precision judged on the chat span.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![evaluation(
                "context_precision",
                None,
                Some(0.12),
                "Retrieved chunks are about a different product",
            )],
            None,
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("eval-retrieval-quality")
        );
        // Phoenix hallucination eval.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![evaluation(
                "Hallucination",
                Some("hallucinated"),
                None,
                "Cites a warranty term not in the context",
            )],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("data_quality"));
        // A record in the vector store misses a field.
        let sp = span(
            "qdrant.search",
            vec![s("db.system.name", "qdrant")],
            vec![exception("KeyError", "'page_content'")],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("retrieval-record-malformed")
        );
        // RAG exposed as a tool, knowledge base returns nothing.
        let sp = span(
            "execute_tool search_knowledge_base",
            tool("search_knowledge_base"),
            vec![],
            error_status("not found in the knowledge base"),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("retrieval-empty")
        );
        // User says the price was outdated.
        let sp = span(
            "invoke_agent sales",
            vec![
                s("gen_ai.operation.name", "invoke_agent"),
                kv("user.feedback.score", Value::DoubleValue(-1.0)),
                s(
                    "user.feedback.comment",
                    "That price is outdated, it changed last month",
                ),
            ],
            vec![],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("data_quality"));
        // DB unique violation.
        let sp = span(
            "INSERT orders",
            vec![s("db.system.name", "postgresql")],
            vec![exception(
                "psycopg.errors.UniqueViolation",
                "duplicate key value violates unique constraint \"orders_pkey\"",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("db-data-error")
        );
    }

    #[test]
    fn default_coverage_gap() {
        // LangChain: model asked for a tool the agent lacks.
        let sp = span(
            "AgentExecutor",
            vec![s("openinference.span.kind", "AGENT")],
            vec![exception(
                "langchain_core.exceptions.OutputParserException",
                "book_flight is not a valid tool, try one of [search_faq, get_order].",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("unknown-tool")
        );
        // OpenAI Agents SDK variant.
        let sp = span(
            "invoke_agent support",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![exception(
                "agents.exceptions.ModelBehaviorError",
                "Tool cancel_subscription not found in agent Support",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("unknown-tool")
        );
        // NeMo topical rail.
        let sp = span(
            "guardrail",
            vec![
                s("openinference.span.kind", "GUARDRAIL"),
                s("guardrail.name", "topical_rail_off_topic"),
            ],
            vec![],
            error_status("User asked about stock tips"),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("guardrail-off-topic")
        );
        // An evaluator labelled the run a refusal.
        let sp = span(
            "invoke_agent support",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![evaluation(
                "answer_quality",
                Some("refused"),
                None,
                "Agent said: I can't help with that request.",
            )],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("coverage_gap"));
        // Unsupported language error from a router.
        let sp = span(
            "route_intent",
            vec![],
            vec![exception(
                "UnsupportedLanguageError",
                "Language 'pt-BR' is not supported",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("out-of-scope-request")
        );
        // The user wanted a human.
        let sp = span(
            "invoke_agent support",
            vec![
                s("gen_ai.operation.name", "invoke_agent"),
                s("user.feedback.label", "negative"),
                s("user.feedback.comment", "useless, let me talk to a human"),
            ],
            vec![],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("coverage_gap"));
    }

    #[test]
    fn default_near_misses() {
        // A timeout on a non-tool span is still logic_tool but via the generic, less sure rule.
        let sp = span(
            "chat gpt-4o",
            vec![s("gen_ai.operation.name", "chat")],
            vec![exception("openai.APITimeoutError", "Request timed out.")],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("timeout")
        );
        // A 404 on a plain HTTP span is not a tool error and not a 5xx: unclassified.
        let sp = span(
            "GET",
            vec![
                kv("http.response.status_code", Value::IntValue(404)),
                s("error.type", "404"),
            ],
            vec![],
            error_status(""),
        );
        assert_eq!(classify("default", &sp), None);
        // "tone" in an unrelated error message does not make it a tone failure.
        let sp = span(
            "process",
            vec![],
            vec![exception("CustomError", "milestone missing")],
            error_status(""),
        );
        assert_eq!(classify("default", &sp), None);
        // Tool-name words in an evaluation on a chat span: tool eval, not retrieval.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![evaluation(
                "tool_call_accuracy",
                None,
                Some(0.1),
                "called search with wrong date",
            )],
            None,
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("logic_tool"));
        // A generic failing evaluation on a chat span with an unknown name: fallback.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![evaluation("helpfulness", Some("fail"), None, "not helpful")],
            None,
        );
        assert_eq!(classify("default", &sp), None);
        // Feedback without a comment that says why: fallback.
        let sp = span(
            "chat",
            vec![s("user.feedback.label", "thumbs_down")],
            vec![],
            None,
        );
        assert_eq!(classify("default", &sp), None);
        // Retriever timeout is a logic/config problem, not data.
        let sp = span(
            "retrieve",
            vec![s("openinference.span.kind", "RETRIEVER")],
            vec![exception("TimeoutError", "")],
            error_status(""),
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("logic_tool"));
        // A search *tool* for flights is not a retriever: its validation error is logic_tool.
        let sp = span(
            "execute_tool search_flights",
            tool("search_flights"),
            vec![exception(
                "ValidationError",
                "departure_date: invalid date format",
            )],
            error_status(""),
        );
        assert_eq!(class_of("default", &sp).as_deref(), Some("logic_tool"));
    }

    #[test]
    fn wording_traps() {
        // An exception raised on a guardrail span is the guardrail firing, not a validation bug.
        let sp = span(
            "guard",
            vec![s("openinference.span.kind", "GUARDRAIL")],
            vec![exception(
                "guardrails.errors.ValidationError",
                "Validation failed for field with errors: The following sentences were found to be toxic",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("guardrail-tone-brand")
        );
        // "returned non-zero exit status" is not an empty retrieval.
        let sp = span(
            "run_script",
            vec![],
            vec![exception(
                "subprocess.CalledProcessError",
                "Command 'make' returned non-zero exit status 2.",
            )],
            error_status(""),
        );
        assert_eq!(classify("default", &sp), None);
        // "runtime output" is not a timeout; a stale DOM element is not stale data.
        let sp = span(
            "execute_tool browser",
            tool("browser"),
            vec![exception(
                "selenium.common.exceptions.StaleElementReferenceException",
                "stale element reference: element is not attached; runtime output follows",
            )],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("tool-error")
        );
        // A technical "unable to support" is not the agent refusing a user.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![],
            error_status("Model unable to support streaming with parallel tool calls"),
        );
        assert_eq!(classify("default", &sp), None);
        // An invoice evaluation is not about voice.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![evaluation("invoice_total_accuracy", Some("fail"), None, "")],
            None,
        );
        assert_eq!(classify("default", &sp), None);
        // Timeout spelled as an exception type with suffix.
        let sp = span(
            "chat",
            vec![s("gen_ai.operation.name", "chat")],
            vec![exception("asyncio.exceptions.TimeoutError", "")],
            error_status(""),
        );
        assert_eq!(
            classify("default", &sp).map(|x| x.0).as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn mast_classes() {
        let sp = span(
            "invoke_agent planner",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![evaluation(
                "role_adherence",
                None,
                Some(0.2),
                "Planner wrote code instead of delegating",
            )],
            None,
        );
        assert_eq!(class_of("mast", &sp).as_deref(), Some("specification"));
        let sp = span(
            "invoke_agent coder",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![exception(
                "agents.exceptions.MaxTurnsExceeded",
                "Max turns (25) exceeded",
            )],
            error_status(""),
        );
        assert_eq!(class_of("mast", &sp).as_deref(), Some("specification"));
        let sp = span(
            "handoff",
            vec![],
            vec![exception("HandoffError", "Multiple handoffs requested")],
            error_status(""),
        );
        assert_eq!(
            class_of("mast", &sp).as_deref(),
            Some("inter_agent_misalignment")
        );
        let sp = span(
            "invoke_agent researcher",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![evaluation(
                "task_derailment",
                Some("fail"),
                None,
                "Drifted into an unrelated sub-task",
            )],
            None,
        );
        assert_eq!(
            class_of("mast", &sp).as_deref(),
            Some("inter_agent_misalignment")
        );
        let sp = span(
            "invoke_agent verifier",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![evaluation(
                "task_completion",
                None,
                Some(0.0),
                "Returned before running the tests",
            )],
            None,
        );
        assert_eq!(class_of("mast", &sp).as_deref(), Some("task_verification"));
        let sp = span(
            "invoke_agent writer",
            vec![s("gen_ai.operation.name", "invoke_agent")],
            vec![evaluation(
                "response_completeness",
                None,
                Some(0.3),
                "Stopped after 2 of 5 sections",
            )],
            None,
        );
        assert_eq!(
            classify("mast", &sp).map(|x| x.0).as_deref(),
            Some("mast-premature-termination")
        );
        // Near miss: a tool timeout is not a MAST failure mode; left to the fallback.
        let sp = span(
            "execute_tool fetch",
            tool("fetch"),
            vec![exception("TimeoutError", "timed out")],
            error_status(""),
        );
        assert_eq!(classify("mast", &sp), None);
    }

    #[test]
    fn signal_kind_literals_match_the_detector() {
        for k in SignalKind::ALL {
            let lit = format!("\"{}\"", k.as_str());
            let used = pack("default")
                .iter()
                .chain(pack("mast").iter())
                .any(|r| r.condition.contains(&lit));
            if matches!(
                k,
                SignalKind::Status | SignalKind::Exception | SignalKind::Log
            ) {
                assert!(used, "{lit} not used");
            }
        }
    }

    /// The rule listings in docs/rules.md are generated from the packs; keep them in step.
    #[test]
    fn docs_list_every_rule() {
        let docs = include_str!("../../docs/rules.md");
        for preset in PRESETS {
            let (table, yaml) = docs_listing(preset);
            assert!(
                docs.contains(&table) && docs.contains(&yaml),
                "docs/rules.md is out of date for preset {preset}; regenerate with \
                 `cargo test print_rule_listings -- --ignored --nocapture`"
            );
        }
    }

    /// A markdown table of the pack and the pack as YAML (copyable into a config).
    fn docs_listing(preset: &str) -> (String, String) {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut table = String::from(
            "| # | name | class | confidence | what it catches |\n| --- | --- | --- | --- | --- |\n",
        );
        let mut yaml = String::from("```yaml\n");
        for (i, r) in pack(preset).iter().enumerate() {
            table.push_str(&format!(
                "| {} | `{}` | {} | {} | {} |\n",
                i + 1,
                r.name,
                r.class,
                r.confidence,
                r.description.replace('|', "\\|")
            ));
            yaml.push_str(&format!(
                "- name: {}\n  class: {}\n  confidence: {}\n  description: {}\n  condition: {}\n",
                r.name,
                r.class,
                r.confidence,
                quote(&r.description),
                quote(&r.condition)
            ));
        }
        yaml.push_str("```\n");
        (table, yaml)
    }

    #[test]
    #[ignore]
    fn print_rule_listings() {
        for preset in PRESETS {
            let (table, yaml) = docs_listing(preset);
            println!("=== {preset} table\n{table}\n=== {preset} yaml\n{yaml}");
        }
    }
}
