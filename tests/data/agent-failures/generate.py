#!/usr/bin/env python3
"""Generates the labelled agent-failure corpus in this directory (python3 stdlib only).

Writes traces-<agent>.jsonl (one OTLP/JSON ExportTraceServiceRequest per line, one failed agent
run each) and labels.jsonl ({"trace_id", "class", "note"} per line; note = the failure pattern).
Deterministic: the same seed gives the same bytes. Run from anywhere:

    python3 tests/data/agent-failures/generate.py [--seed 4] [--traces 640]
"""

import argparse
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_750_000_000_000_000_000  # ns

# Span kinds (OTLP enum values).
INTERNAL, SERVER, CLIENT = 1, 2, 3
ERROR = 2


# --- OTLP/JSON helpers ---------------------------------------------------------------------------

def val(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [val(x) for x in v]}}
    return {"stringValue": str(v)}


def attrs(d):
    return [{"key": k, "value": val(v)} for k, v in d.items() if v is not None]


class Trace:
    """Builds the spans of one agent run."""

    def __init__(self, rng, start_ns):
        self.rng = rng
        self.trace_id = "%032x" % rng.getrandbits(128)
        self.spans = []
        self.clock = start_ns

    def span(self, name, kind, parent=None, attributes=None, dur_ms=None):
        rng = self.rng
        self.clock += rng.randint(1, 40) * 1_000_000
        start = self.clock
        dur = (dur_ms if dur_ms is not None else rng.randint(20, 1500)) * 1_000_000
        s = {
            "traceId": self.trace_id,
            "spanId": "%016x" % (rng.getrandbits(64) | 1),
            "name": name,
            "kind": kind,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + dur),
            "attributes": attrs(attributes or {}),
            "status": {},
        }
        if parent is not None:
            s["parentSpanId"] = parent["spanId"]
        self.spans.append(s)
        return s

    def finish(self):
        # Parents end after their children.
        by_id = {s["spanId"]: s for s in self.spans}
        for s in reversed(self.spans):
            p = by_id.get(s.get("parentSpanId"))
            if p and int(p["endTimeUnixNano"]) < int(s["endTimeUnixNano"]):
                p["endTimeUnixNano"] = str(int(s["endTimeUnixNano"]) + 1_000_000)


def error(span, message=""):
    span["status"] = {"code": ERROR, "message": message}


def exception(span, etype, message, stack=True):
    a = {"exception.type": etype, "exception.message": message}
    if stack:
        a["exception.stacktrace"] = "Traceback (most recent call last):\n  ...\n%s: %s" % (etype, message)
    span.setdefault("events", []).append(
        {"timeUnixNano": span["endTimeUnixNano"], "name": "exception", "attributes": attrs(a)})


def evaluation(span, name, label=None, score=None, explanation=None):
    a = {"gen_ai.evaluation.name": name, "gen_ai.evaluation.score.label": label,
         "gen_ai.evaluation.score.value": score, "gen_ai.evaluation.explanation": explanation}
    span.setdefault("events", []).append(
        {"timeUnixNano": span["endTimeUnixNano"], "name": "gen_ai.evaluation.result",
         "attributes": attrs(a)})


def oi_evaluation(span, i, name, label=None, score=None, explanation=None):
    for k, v in (("name", name), ("label", label), ("score", score), ("explanation", explanation)):
        if v is not None:
            span["attributes"].append({"key": "evaluations.%d.evaluation.%s" % (i, k), "value": val(v)})


def feedback(span, label, comment, score=None):
    a = {"user.feedback.label": label, "user.feedback.comment": comment, "user.feedback.score": score}
    span.setdefault("events", []).append(
        {"timeUnixNano": span["endTimeUnixNano"], "name": "user.feedback", "attributes": attrs(a)})


def set_attr(span, key, value):
    """Sets attribute `key` (replacing it if present: OTLP keys are unique)."""
    span["attributes"] = [a for a in span["attributes"] if a["key"] != key]
    span["attributes"].append({"key": key, "value": val(value)})


# --- Agents ------------------------------------------------------------------------------------

AGENTS = {
    "support": dict(service="support-agent", version="2.4.1", style="genai", model="gpt-4o",
                    provider="openai", tools=["lookup_order", "refund_order", "create_ticket"],
                    retriever="kb_search", db="postgresql"),
    "travel": dict(service="travel-planner", version="1.9.0", style="openinference",
                   model="claude-3-5-sonnet", provider="anthropic",
                   tools=["search_flights", "book_hotel", "weather_lookup"],
                   retriever="policy_docs", db=None),
    "sales": dict(service="sales-assistant", version="0.14.2", style="genai",
                  model="gemini-1.5-pro", provider="gcp.gemini",
                  tools=["price_quote", "crm_update", "send_email"],
                  retriever="product_catalog_search", db="mysql"),
    "hr": dict(service="hr-helpdesk", version="3.0.0", style="openinference", model="gpt-4o-mini",
               provider="openai", tools=["leave_balance", "payroll_api", "employee_directory"],
               retriever="handbook_retriever", db="postgresql"),
    "billing": dict(service="billing-copilot", version="1.2.7", style="genai",
                    model="mistral-large", provider="mistral_ai",
                    tools=["invoice_lookup", "apply_credit", "update_card"],
                    retriever="billing_faq_search", db="postgresql"),
}

CUSTOMERS = ["Dana", "Ravi", "Mei", "Jonas", "Amara", "Lucía", "Tomasz", "Aiko", "Omar", "Sofia"]
PRODUCTS = ["Pro plan", "Team plan", "X200 router", "travel insurance", "annual pass",
            "gift card", "premium seat", "cloud backup", "starter kit", "support add-on"]
CITIES = ["Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Quito", "Hanoi", "Porto"]


class Run:
    """One agent run: invoke_agent → chat → (execute_tool | retrieval) → chat, GenAI or
    OpenInference attributes depending on the agent."""

    def __init__(self, rng, agent, start_ns):
        self.rng = rng
        self.name = agent
        self.a = AGENTS[agent]
        self.t = Trace(rng, start_ns)
        oi = self.oi
        root_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
                      "gen_ai.agent.id": "agt_%06x" % rng.getrandbits(24),
                      "gen_ai.conversation.id": "conv-%08x" % rng.getrandbits(32)}
        if oi:
            root_attrs = {"openinference.span.kind": "AGENT", "gen_ai.agent.name": agent,
                          "session.id": "sess-%08x" % rng.getrandbits(32),
                          "input.value": "(redacted)"}
        self.root = self.t.span("invoke_agent %s" % agent, SERVER if not oi else INTERNAL,
                                None, root_attrs)
        self.chat1 = self.chat(self.root)

    @property
    def oi(self):
        return self.a["style"] == "openinference"

    def chat(self, parent, finish="tool_calls"):
        a = self.a
        rng = self.rng
        if self.oi:
            attributes = {"openinference.span.kind": "LLM", "llm.model_name": a["model"],
                          "llm.provider": a["provider"],
                          "llm.token_count.prompt": rng.randint(300, 4000),
                          "llm.token_count.completion": rng.randint(20, 600),
                          "llm.input_messages.0.message.role": "system",
                          "llm.input_messages.1.message.role": "user"}
        else:
            attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": a["provider"],
                          "gen_ai.request.model": a["model"], "gen_ai.response.model": a["model"],
                          "gen_ai.usage.input_tokens": rng.randint(300, 4000),
                          "gen_ai.usage.output_tokens": rng.randint(20, 600),
                          "gen_ai.response.finish_reasons": [finish]}
        return self.t.span("chat %s" % a["model"], CLIENT, parent, attributes)

    def tool(self, name=None, parent=None, extra=None):
        name = name or self.rng.choice(self.a["tools"])
        if self.oi:
            attributes = {"openinference.span.kind": "TOOL", "tool.name": name,
                          "tool.parameters": "{\"id\": %d}" % self.rng.randint(1, 99999)}
        else:
            attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                          "gen_ai.tool.call.id": "call_%010x" % self.rng.getrandbits(40),
                          "gen_ai.tool.type": "function"}
        attributes.update(extra or {})
        return self.t.span("execute_tool %s" % name, INTERNAL, parent or self.chat1, attributes)

    def retrieval(self, parent=None):
        name = self.a["retriever"]
        if self.oi:
            attributes = {"openinference.span.kind": "RETRIEVER", "tool.name": name,
                          "retrieval.documents.0.document.id": "doc-%d" % self.rng.randint(1, 9999)}
            return self.t.span("retrieve %s" % name, INTERNAL, parent or self.chat1, attributes)
        attributes = {"gen_ai.operation.name": "retrieval",
                      "gen_ai.data_source.id": "%s-index" % name}
        return self.t.span("retrieval %s" % name, CLIENT, parent or self.chat1, attributes)

    def db(self, parent, statement):
        system = self.a["db"] or "postgresql"
        return self.t.span("SELECT %s" % system, CLIENT, parent,
                           {"db.system.name": system, "db.query.text": statement,
                            "server.address": "db-%d.internal" % self.rng.randint(1, 4)})

    def http(self, parent, method, url, status):
        return self.t.span("%s" % method, CLIENT, parent,
                           {"http.request.method": method, "url.full": url,
                            "http.response.status_code": status})

    def step(self, name, parent=None, extra=None):
        return self.t.span(name, INTERNAL, parent or self.root, extra or {})

    def final(self):
        return self.chat(self.root, finish="stop")

    def propagate(self, message="agent run failed"):
        """The error surfaces on the agent span too (the root cause stays the deeper span)."""
        if self.rng.random() < 0.6:
            error(self.root, message)

    def request(self):
        self.t.finish()
        a = self.a
        return {"resourceSpans": [{
            "resource": {"attributes": attrs({
                "service.name": a["service"], "service.version": a["version"],
                "deployment.environment.name": "production",
                "telemetry.sdk.language": "python"})},
            "scopeSpans": [{
                "scope": {"name": "openinference.instrumentation" if self.oi
                          else "opentelemetry.instrumentation.openai_agents", "version": "0.9.2"},
                "spans": self.t.spans}]}]}


# --- Failure patterns ----------------------------------------------------------------------------
# Each takes a Run and adds one failure. Names say whether the built-in rules decide it
# ("ruled") or leave it to the fallback ("unruled"), as the corpus README explains.

def pick(r, xs):
    return r.rng.choice(xs)


def n(r, lo=1, hi=99999):
    return r.rng.randint(lo, hi)


# tone_brand ---------------------------------------------------------------------------------------

def tone_eval(r):  # ruled: eval-tone-brand
    name = pick(r, ["brand_voice", "tone", "politeness", "brand_guidelines"])
    label = pick(r, ["off_brand", "rude", "fail", "bad"])
    why = pick(r, [
        "Reply opened with 'Hey buddy' and used three exclamation marks",
        "The answer lectured the customer about reading the manual",
        "Used internal jargon ('SKU delta', 'RMA path') with a consumer",
        "Response sounded sarcastic when apologising for the delay",
    ])
    target = r.final()
    evaluation(target if r.rng.random() < 0.5 else r.root, name, label, None, why)


def tone_content_filter(r):  # ruled: content-filter
    c = r.chat(r.root, finish="content_filter")
    if r.oi:
        set_attr(c, "gen_ai.response.finish_reasons", ["content_filter"])
    error(c, pick(r, ["response blocked by provider content filter",
                      "The response was filtered due to the prompt triggering content management policy"]))


def tone_guardrail(r):  # ruled: guardrail-tone-brand
    g = r.step(pick(r, ["competitor_mention_guard", "profanity_filter", "brand_voice_rail"]), r.root,
               {"openinference.span.kind": "GUARDRAIL", "guardrail.triggered": True})
    error(g, pick(r, ["output mentions competitor %s" % pick(r, ["Acme", "Globex", "Initech"]),
                      "profanity detected in draft reply", "draft violates brand voice rules"]))


def tone_feedback(r):  # ruled: feedback-tone
    f = r.final()
    feedback(r.root, "thumbs_down", pick(r, [
        "way too long and wordy, I just wanted a yes or no",
        "the bot was rude to me",
        "so condescending, I know how to restart a router",
        "too many emoji for a bank",
        "sounded sarcastic",
    ]), -1.0)
    del f


def tone_persona_eval(r):  # unruled: the evaluator's name says nothing the rules read
    name = pick(r, ["persona_consistency", "house_rules", "customer_experience_review"])
    why = pick(r, [
        "Called the customer by a nickname and joked about the outage",
        "Signed off as 'your pal' instead of the company sign-off",
        "Answer was correct but cold and dismissive about the complaint",
        "Used exclamation marks and slang with an enterprise client",
        "Mentioned a rival retailer's prices unprompted",
    ])
    target = r.final()
    if r.oi:
        oi_evaluation(target, 0, name, "fail", 0.1, why)
    else:
        evaluation(target, name, "fail", None, why)


def tone_lint_error(r):  # unruled: a reply linter on an internal step
    s = r.step(pick(r, ["lint_reply", "compose_reply", "postprocess_answer"]), r.root)
    etype = pick(r, ["BrandLintError", "ReplyLintFailure", "VoiceCheckFailed"])
    msg = pick(r, [
        "reply greets enterprise customer %s by first name; salutation must be formal" % pick(r, CUSTOMERS),
        "reply contains %d exclamation marks (max 1)" % n(r, 2, 6),
        "reply mentions competitor product '%s'" % pick(r, ["Globex Cloud", "Acme Router", "Initech CRM"]),
        "reply uses banned phrase 'no worries' %d times" % n(r, 1, 4),
    ])
    exception(s, etype, msg)
    error(s, "%s: %s" % (etype, msg))
    r.propagate("reply rejected")


def tone_feedback_plain(r):  # unruled: the comment has none of the words the rules look for
    r.final()
    feedback(r.root, "thumbs_down", pick(r, [
        "felt cold and dismissive about my complaint",
        "not how your company usually talks to customers",
        "the answer made fun of my question",
        "it called me 'mate', that's weird from a bank",
        "way too pushy about upgrading to the %s" % pick(r, PRODUCTS),
    ]), -1.0)


# logic_tool ---------------------------------------------------------------------------------------

def logic_tool_timeout(r):  # ruled: tool-timeout
    t = r.tool()
    name = t["name"].split(" ", 1)[1]
    exception(t, pick(r, ["TimeoutError", "httpx.ReadTimeout", "asyncio.TimeoutError"]),
              "%s timed out after %ds" % (name, n(r, 10, 60)))
    error(t, "timed out")
    r.propagate("tool call failed")


def logic_rate_limit(r):  # ruled: rate-limited
    c = r.chat(r.root)
    exception(c, "openai.RateLimitError",
              "Error code: 429 - Rate limit reached for %s on tokens per min (TPM): Limit %d, Used %d"
              % (r.a["model"], n(r, 30000, 90000), n(r, 30000, 90000)))
    set_attr(c, "error.type", "429")
    error(c, "429 Too Many Requests")
    r.propagate()


def logic_bad_args(r):  # ruled: tool-args-or-output-invalid
    t = r.tool()
    name = t["name"].split(" ", 1)[1]
    exception(t, pick(r, ["pydantic.ValidationError", "ToolInputError"]),
              "1 validation error for %sArgs\n%s\n  field required" %
              ("".join(p.title() for p in name.split("_")), pick(r, ["amount", "order_id", "date", "currency"])))
    error(t, "invalid tool arguments")
    r.propagate()


def logic_loop(r):  # ruled: max-iterations
    for _ in range(n(r, 2, 4)):
        r.tool()
    etype, msg = pick(r, [
        ("GraphRecursionError", "Recursion limit of 25 reached without hitting a stop condition"),
        ("MaxTurnsExceeded", "Max turns (%d) exceeded" % n(r, 8, 20)),
        ("AgentLoopError", "loop detected: %s called %d times with the same arguments" % (pick(r, r.a["tools"]), n(r, 4, 9))),
    ])
    exception(r.root, etype, msg)
    error(r.root, msg)


def logic_http_5xx(r):  # ruled: tool-http-error / upstream-http-error
    t = r.tool()
    h = r.http(t, pick(r, ["GET", "POST"]), "https://api.internal/%s/%d" % (t["name"].split(" ")[1], n(r)),
               pick(r, [500, 502, 503]))
    error(h, "")
    error(t, "upstream returned an error")
    r.propagate()


def logic_code_bug(r):  # ruled: agent-code-exception
    s = r.step(pick(r, ["parse_tool_result", "merge_context", "build_prompt"]), r.root)
    etype, msg = pick(r, [
        ("AttributeError", "'NoneType' object has no attribute 'get'"),
        ("KeyError", "'choices'"),
        ("TypeError", "unsupported operand type(s) for +: 'int' and 'str'"),
        ("IndexError", "list index out of range"),
    ])
    exception(s, etype, msg)
    error(s, msg)
    r.propagate()


def logic_auth(r):  # ruled: auth-or-permission
    t = r.tool()
    exception(t, "PermissionDenied", "403 Forbidden: service account lacks scope %s.write" % t["name"].split(" ")[1])
    set_attr(t, "http.response.status_code", 403)
    error(t, "403")
    r.propagate()


def logic_tool_eval(r):  # ruled: eval-tool-use
    t = r.tool()
    evaluation(t if r.rng.random() < 0.5 else r.root, pick(r, ["tool_call_accuracy", "argument_correctness", "tool_selection"]),
               "incorrect", None, pick(r, [
                   "Called %s with the customer's name instead of the order id" % t["name"].split(" ")[1],
                   "Picked the wrong tool for a refund request",
                   "Passed the date in US format; the tool expects ISO 8601"]))


def logic_planner(r):  # unruled, and the fallback (logic_tool) happens to be right
    s = r.step(pick(r, ["plan", "planner", "decompose_task"]), r.root)
    etype = pick(r, ["PlannerError", "PlanValidationError", "StepOrderError"])
    msg = pick(r, [
        "plan has a cycle between steps %d and %d" % (n(r, 1, 4), n(r, 5, 9)),
        "step %d depends on output of a step that never runs" % n(r, 2, 7),
        "planner emitted %d parallel writes to the same booking" % n(r, 2, 5),
    ])
    exception(s, etype, msg)
    error(s, msg)
    r.propagate()


def logic_wrong_state(r):  # unruled: agent logic confused its own state
    s = r.step(pick(r, ["apply_action", "commit_changes"]), r.root)
    etype = pick(r, ["StateConflict", "IllegalTransition", "DoubleSubmit"])
    msg = pick(r, [
        "refund issued twice for the same request (action replayed after retry)",
        "tried to confirm booking before payment step finished",
        "agent cancelled the order it had just created in step %d" % n(r, 2, 6),
    ])
    exception(s, etype, msg)
    error(s, msg)
    r.propagate()


# data_quality -------------------------------------------------------------------------------------

def data_empty_retrieval(r):  # ruled: retrieval-empty
    s = r.retrieval()
    exception(s, pick(r, ["RetrievalError", "EmptyResultError"]),
              pick(r, ["No documents found for query about %s" % pick(r, PRODUCTS),
                       "index '%s-v%d' returned no results" % (r.a["retriever"], n(r, 1, 9)),
                       "found 0 matching chunks above similarity threshold %.2f" % r.rng.uniform(0.6, 0.9)]))
    error(s, "retrieval failed")
    r.propagate()


def data_context_eval(r):  # ruled: eval-retrieval-quality
    s = r.retrieval()
    name = pick(r, ["context_relevance", "context_precision", "document_relevance"])
    if r.oi:
        oi_evaluation(s, 0, name, None, round(r.rng.uniform(0.05, 0.4), 2),
                      "retrieved passages are about a different %s" % pick(r, ["product", "region", "policy"]))
    else:
        evaluation(s, name, None, round(r.rng.uniform(0.05, 0.4), 2),
                   "retrieved passages are about a different %s" % pick(r, ["product", "region", "policy"]))


def data_grounding_eval(r):  # ruled: eval-grounding
    r.retrieval()
    f = r.final()
    evaluation(f, pick(r, ["faithfulness", "groundedness", "hallucination"]), "hallucinated", None,
               pick(r, ["Answer cites a warranty period the documents do not mention",
                        "The quoted fee does not appear in any retrieved passage",
                        "Claims the %s ships to %s, which no source says" % (pick(r, PRODUCTS), pick(r, CITIES))]))


def data_stale(r):  # ruled: stale-data
    s = r.retrieval()
    exception(s, "StaleIndexWarning",
              pick(r, ["stale index: last refresh %d days ago" % n(r, 8, 90),
                       "document %s is outdated (superseded by v%d)" % ("DOC-%d" % n(r), n(r, 2, 9))]))
    error(s, "stale data")


def data_db_error(r):  # ruled: db-data-error
    t = r.tool()
    d = r.db(t, "SELECT * FROM orders WHERE id = $1")
    exception(d, pick(r, ["psycopg.errors.UniqueViolation", "sqlalchemy.exc.NoResultFound"]),
              pick(r, ["duplicate key value violates unique constraint \"orders_pkey\"",
                       "No row was found when one was required"]))
    error(d, "db error")
    error(t, "tool failed")
    r.propagate()


def data_bad_record_tool(r):  # ruled, but wrongly: tool-error says logic_tool
    t = r.tool()
    name = t["name"].split(" ", 1)[1]
    etype = pick(r, ["RecordIncomplete", "UpstreamDataError", "OrderDataError"])
    msg = pick(r, [
        "order %d has a shipping address with an empty postcode" % n(r),
        "customer %d has two active primary emails in CRM" % n(r),
        "price list for %s has currency blank for region %s" % (pick(r, PRODUCTS), pick(r, CITIES)),
        "record %d: date of birth is in the future" % n(r),
    ])
    exception(t, etype, msg)
    error(t, "%s failed" % name)
    r.propagate()


def data_price_mismatch(r):  # unruled: an answer check found wrong source data
    s = r.step(pick(r, ["verify_answer", "consistency_check"]), r.root)
    etype = pick(r, ["PriceMismatch", "FactMismatch", "CatalogueConflict"])
    msg = pick(r, [
        "quoted price %.2f differs from catalogue price %.2f for %s" % (r.rng.uniform(10, 99), r.rng.uniform(10, 99), pick(r, PRODUCTS)),
        "opening hours for the %s branch differ between CRM and website" % pick(r, CITIES),
        "catalogue lists %s as in stock; warehouse feed says discontinued" % pick(r, PRODUCTS),
    ])
    exception(s, etype, msg)
    error(s, msg)
    r.propagate()


def data_feedback_plain(r):  # unruled: the user says the facts were off, in other words
    r.final()
    feedback(r.root, "thumbs_down", pick(r, [
        "the %s branch closed last year, your bot still sends people there" % pick(r, CITIES),
        "that discount code expired in March",
        "the hours it gave me were off by two hours",
        "it says my plan includes backups, my contract says otherwise",
        "the phone number it gave goes to a different company",
    ]), -1.0)


def data_answer_eval(r):  # unruled: correctness eval on an answer built from bad data
    r.retrieval()
    f = r.final()
    name = pick(r, ["answer_correctness", "factual_accuracy_v2", "qa_check"])
    why = pick(r, [
        "Source table lists the old return window of 14 days; policy is 30 days since June",
        "Price in the product feed is from last quarter",
        "The employee record used has the manager field empty",
        "Flight schedule data is missing the winter timetable",
    ])
    if r.oi:
        oi_evaluation(f, 0, name, "incorrect", None, why)
    else:
        evaluation(f, name, "incorrect", None, why)


# coverage_gap -------------------------------------------------------------------------------------

def cov_refusal(r):  # ruled: refusal-or-escalation
    f = r.final()
    if r.oi or r.rng.random() < 0.5:
        evaluation(f, "answer_quality", "fail", None,
                   pick(r, ["Assistant said: I'm sorry, I can't help with %s requests" % pick(r, ["legal", "medical", "tax"]),
                            "Reply: that is outside my scope, connecting you with a human agent"]))
    else:
        set_attr(f, "gen_ai.response.finish_reasons", ["refusal"])
        evaluation(f, "helpfulness", "unhelpful", None, "model refused")


def cov_unknown_tool(r):  # ruled: unknown-tool
    c = r.chat(r.root)
    missing = pick(r, ["cancel_subscription", "transfer_booking", "change_seat", "split_invoice", "reissue_badge"])
    exception(c, pick(r, ["ModelBehaviorError", "ToolNotFoundError"]),
              "Tool %s not found in agent %s" % (missing, r.name))
    error(c, "unknown tool")
    r.propagate()


def cov_out_of_scope(r):  # ruled: out-of-scope-request
    s = r.step("route_request", r.root)
    msg = pick(r, ["unsupported language: %s" % pick(r, ["pt-BR", "tr", "vi", "sw"]),
                   "region %s not supported" % pick(r, ["BR", "IN", "ZA", "KR"]),
                   "no matching intent for utterance"])
    exception(s, "RoutingError", msg)
    error(s, msg)
    r.propagate()


def cov_escalation(r):  # ruled: escalation-to-human
    s = r.step("handoff", r.root)
    exception(s, "HumanHandoffRequired", pick(r, ["escalating to a human agent after %d failed attempts" % n(r, 2, 4),
                                                   "needs human review: customer disputes charge"]))
    error(s, "handoff")


def cov_scope_eval(r):  # ruled: eval-scope
    f = r.final()
    evaluation(f, pick(r, ["intent_resolution", "topic_adherence", "answerability"]), "fail", None,
               "The user's request could not be resolved with the available capabilities")


def cov_task_eval(r):  # unruled: the evaluator's name and label say nothing of scope
    f = r.final()
    name = pick(r, ["task_completion", "goal_met", "resolution_check"])
    why = pick(r, [
        "User asked to change a booking made by phone; the agent has no access to phone bookings",
        "Customer wanted to merge two accounts, which no tool supports",
        "Asked for an invoice in %s; only EUR and USD invoices exist" % pick(r, ["JPY", "BRL", "INR"]),
        "Request was for a bulk export of %d orders; only single-order lookup exists" % n(r, 50, 900),
        "Wanted to book a multi-city trip through %s; planner handles round trips only" % pick(r, CITIES),
    ])
    if r.oi:
        oi_evaluation(f, 0, name, "fail", 0.0, why)
    else:
        evaluation(f, name, "fail", None, why)


def cov_no_skill(r):  # unruled: a router with no skill for the request type
    s = r.step(pick(r, ["dispatch_skill", "select_workflow"]), r.root)
    etype = pick(r, ["SkillNotRegistered", "WorkflowMissing", "NoCapability"])
    kind = pick(r, ["warranty_claim", "bulk_refund", "account_merge", "group_booking", "visa_letter"])
    msg = pick(r, ["no skill registered for request type %s" % kind,
                   "request type '%s' has no workflow" % kind,
                   "capability %s is not implemented yet" % kind])
    exception(s, etype, msg)
    error(s, msg)
    r.propagate()


def cov_feedback_plain(r):  # unruled: the user wanted something the agent cannot do
    r.final()
    feedback(r.root, "thumbs_down", pick(r, [
        "kept suggesting articles but could not actually cancel my plan",
        "I asked to move my booking to another name and it just went in circles",
        "there is no way to ask about a group discount here",
        "it only does single orders, I have forty of them",
        "asked about my pension and it talked about holidays",
    ]), -1.0)


def generic_tool_error(cls):
    """The same exception type on a tool span for every class: only the message tells them
    apart. The rules see a tool error (tool-error: logic_tool)."""
    messages = {
        "tone_brand": [
            "draft reply for {c} rejected by style checker: greeting too informal",
            "generated message to {c} used a tone the account manager flagged as flippant",
            "email body mentions competitor pricing, blocked before sending",
        ],
        "logic_tool": [
            "retry budget exhausted after {n} attempts",
            "called with page={n} but the tool is zero-indexed",
            "tool returned before the async job {n} finished",
        ],
        "data_quality": [
            "upstream returned record {n} with price missing",
            "customer {c} has two conflicting addresses on file",
            "feed row {n} has a currency that does not match its region",
        ],
        "coverage_gap": [
            "operation 'bulk_update' is not offered for this account type",
            "currency XAU cannot be handled by this tool",
            "request for {c} needs a capability this agent does not have",
        ],
    }

    def pattern(r):
        t = r.tool()
        msg = pick(r, messages[cls]).format(n=n(r), c=pick(r, CUSTOMERS))
        exception(t, "ToolError", msg)
        error(t, msg)
        r.propagate()

    pattern.__name__ = "generic_tool_error_" + cls
    return pattern


PATTERNS = [
    # (class, pattern, weight)
    ("tone_brand", tone_eval, 4),
    ("tone_brand", tone_content_filter, 2),
    ("tone_brand", tone_guardrail, 2),
    ("tone_brand", tone_feedback, 2),
    ("tone_brand", tone_persona_eval, 3),
    ("tone_brand", tone_lint_error, 3),
    ("tone_brand", tone_feedback_plain, 2),
    ("logic_tool", logic_tool_timeout, 5),
    ("logic_tool", logic_rate_limit, 3),
    ("logic_tool", logic_bad_args, 4),
    ("logic_tool", logic_loop, 3),
    ("logic_tool", logic_http_5xx, 3),
    ("logic_tool", logic_code_bug, 3),
    ("logic_tool", logic_auth, 2),
    ("logic_tool", logic_tool_eval, 2),
    ("logic_tool", logic_planner, 3),
    ("logic_tool", logic_wrong_state, 2),
    ("data_quality", data_empty_retrieval, 4),
    ("data_quality", data_context_eval, 3),
    ("data_quality", data_grounding_eval, 3),
    ("data_quality", data_stale, 2),
    ("data_quality", data_db_error, 2),
    ("data_quality", data_bad_record_tool, 3),
    ("data_quality", data_price_mismatch, 3),
    ("data_quality", data_feedback_plain, 2),
    ("data_quality", data_answer_eval, 3),
    ("coverage_gap", cov_refusal, 3),
    ("coverage_gap", cov_unknown_tool, 3),
    ("coverage_gap", cov_out_of_scope, 2),
    ("coverage_gap", cov_escalation, 2),
    ("coverage_gap", cov_scope_eval, 2),
    ("coverage_gap", cov_task_eval, 4),
    ("coverage_gap", cov_no_skill, 3),
    ("coverage_gap", cov_feedback_plain, 2),
] + [(c, generic_tool_error(c), 2) for c in ("tone_brand", "logic_tool", "data_quality", "coverage_gap")]

# Plausible disagreements: a share of runs a person would file under the neighbouring class.
CONFUSABLE = {
    "tone_brand": "coverage_gap",
    "logic_tool": "data_quality",
    "data_quality": "logic_tool",
    "coverage_gap": "logic_tool",
}
NOISE = 0.04


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--traces", type=int, default=640)
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    weights = [w for _, _, w in PATTERNS]
    files = {a: [] for a in AGENTS}
    labels = []
    for i in range(args.traces):
        cls, pattern, _ = rng.choices(PATTERNS, weights)[0]
        agent = rng.choice(sorted(AGENTS))
        run = Run(rng, agent, T0 + i * 7_000_000_000)
        pattern(run)
        note = pattern.__name__
        if rng.random() < NOISE:
            cls = CONFUSABLE[cls]
            note += " (relabelled by a person)"
        files[agent].append(json.dumps(run.request(), separators=(",", ":"), ensure_ascii=False))
        labels.append(json.dumps({"trace_id": run.t.trace_id, "class": cls, "note": note}))
    for agent, lines in files.items():
        with open(os.path.join(args.out, "traces-%s.jsonl" % agent), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "labels.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")


if __name__ == "__main__":
    main()
