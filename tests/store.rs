//! One store test suite, run against SQLite (a temp file) and PostgreSQL (a fresh schema per test).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[path = "support/postgres.rs"]
mod pg_support;
#[path = "support/records.rs"]
mod records;

use pg_support::connect_or_skip;
use records::record;
use serde_json::json;
use triage_loop::classify::Source;
use triage_loop::failure::detail::{FailureDetail, RootSpan, TraceSnapshot};
use triage_loop::remediation::store::{
    self, FailureRecord, IssueCount, IssueFilter, IssueState, JudgementRecord, QueueReason,
    Relabel, Store, StoreError, GIVEN_UP, SAMPLE_CAP,
};

/// What each suite function gets: the store and the URL it was opened from.
struct Harness {
    store: Arc<dyn Store>,
    url: String,
}

/// A batch for `record_failures` from (record, sinks) pairs.
fn to_batch(pairs: Vec<(FailureRecord, Vec<String>)>) -> triage_loop::remediation::store::Batch {
    pairs
        .into_iter()
        .map(|(r, s)| (r, s.into()))
        .collect::<Vec<_>>()
        .into()
}

fn sinks(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `record` on another service version.
fn record_on(fingerprint: &str, n: u64, observed_at: i64, version: Option<&str>) -> FailureRecord {
    FailureRecord {
        service_version: version.map(str::to_string),
        ..record(fingerprint, n, observed_at)
    }
}

/// Runs SQL on the store's database behind its back (a second connection).
async fn exec_raw(url: &str, sql: &str) -> Result<(), String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let (path, sql) = (path.to_string(), sql.to_string());
        tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
            c.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            c.execute_batch(&sql).map_err(|e| e.to_string())
        })
        .await
        .unwrap()
    } else {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        c.batch_execute(sql).await.map_err(|e| e.to_string())
    }
}

/// `record` waiting for a person for `reason`, with feature tokens and a detail.
fn queued(fingerprint: &str, n: u64, observed_at: i64, reason: QueueReason) -> FailureRecord {
    FailureRecord {
        queue_reason: Some(reason),
        rule: None,
        confidence: 0.0,
        trace: Some(TraceSnapshot::of_parts(
            FailureDetail {
                root: RootSpan {
                    name: "execute_tool".into(),
                    kind: "internal".into(),
                    attributes: vec![("gen_ai.tool.name".into(), "search".into())],
                    signals: Vec::new(),
                },
                tree: Vec::new(),
                truncated: 0,
            },
            vec!["span:tool".into(), format!("fp:{fingerprint}")],
        )),
        ..record(fingerprint, n, observed_at)
    }
}

fn relabel(failure_id: i64, class: &str, source: Source, sinks_: &[&str], at: i64) -> Relabel {
    Relabel {
        failure_id,
        class: class.into(),
        remediation: format!("{class}_path"),
        source,
        confidence: if source == Source::Human { 1.0 } else { 0.8 },
        note: "looked at the trace".into(),
        sinks: sinks(sinks_),
        at,
    }
}

// ---------------------------------------------------------------------------------------------
// The suite: each function runs once per backend.
// ---------------------------------------------------------------------------------------------

async fn upsert_counts_and_seen(h: Harness) {
    let s = &h.store;
    let a1 = s
        .record_failure(&record("fp-a", 1, 2_000), &[], 2_250)
        .await
        .unwrap();
    assert!(a1.new_issue && !a1.regressed);
    assert_eq!(
        (a1.occurrences, a1.cycle, a1.state),
        (1, 1, IssueState::Open)
    );

    let mut r = record("fp-a", 2, 1_000); // earlier than the first one: first_seen moves back
    r.agent = "writer".into();
    r.service_version = Some("1.1.0".into());
    let a2 = s.record_failure(&r, &[], r.observed_at).await.unwrap();
    assert_eq!(a2.issue_id, a1.issue_id);
    assert!(!a2.new_issue);
    assert_eq!(a2.occurrences, 2);

    let a3 = s
        .record_failure(&record("fp-a", 3, 5_000), &[], 5_000)
        .await
        .unwrap();
    assert_eq!(a3.occurrences, 3);

    let b = s
        .record_failure(&record("fp-b", 4, 3_000), &[], 3_000)
        .await
        .unwrap();
    assert!(b.new_issue);
    assert_ne!(b.issue_id, a1.issue_id);

    let d = s
        .get_issue(a1.issue_id, 2)
        .await
        .unwrap()
        .expect("issue exists");
    assert_eq!(d.issue.fingerprint, "fp-a");
    assert_eq!(d.issue.occurrences, 3);
    assert_eq!((d.issue.first_seen, d.issue.last_seen), (1_000, 5_000));
    assert_eq!(
        d.issue.classified_at,
        Some(2_250),
        "when it was recorded; a later record leaves it"
    );
    assert_eq!(d.issue.source, Source::Rule);
    assert_eq!(d.agents, vec!["planner", "writer"]);
    assert_eq!(d.services, vec!["agent-svc"]);
    assert_eq!(d.versions, vec!["1.0.0", "1.1.0"]);
    assert_eq!(
        d.recent_occurrences.len(),
        2,
        "recent is capped by the argument"
    );
    assert_eq!(d.recent_occurrences[0].observed_at, 5_000);
    assert_eq!(d.recent_occurrences[0].trace_id, format!("{:032x}", 3));
    assert_eq!(d.recent_occurrences[0].signal["type"], "TimeoutError");
    assert_eq!(d.transitions.len(), 1);
    assert_eq!(d.transitions[0].from_state, None);
    assert_eq!(d.transitions[0].to_state, IssueState::Open);

    // The trace id sample stays bounded and keeps the newest.
    for n in 0..(SAMPLE_CAP as u64 + 5) {
        s.record_failure(
            &record("fp-c", 100 + n, 10_000 + n as i64),
            &[],
            10_000 + n as i64,
        )
        .await
        .unwrap();
    }
    let c = s.list_issues(&IssueFilter::default()).await.unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].fingerprint, "fp-c", "newest last_seen first");
    let dc = s.get_issue(c[0].id, 100).await.unwrap().unwrap();
    assert_eq!(dc.sample_trace_ids.len(), SAMPLE_CAP as usize);
    assert_eq!(
        dc.sample_trace_ids[0],
        format!("{:032x}", 100 + SAMPLE_CAP as u64 + 4)
    );
    assert_eq!(dc.recent_occurrences.len(), SAMPLE_CAP as usize + 5);

    // Filters.
    let by_agent = s
        .list_issues(&IssueFilter {
            agent: Some("planner".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_agent.len(), 3);
    let none = s
        .list_issues(&IssueFilter {
            class: Some("tone_brand".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let open = s
        .list_issues(&IssueFilter {
            state: Some(IssueState::Open),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
    assert!(s.get_issue(999_999, 5).await.unwrap().is_none());
}

async fn concurrent_same_fingerprint(h: Harness) {
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let mut joins = Vec::new();
    for t in 0..TASKS {
        let s = h.store.clone();
        joins.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                let n = t * 1000 + i;
                out.push(
                    s.record_failure(
                        &record("fp-race", n, n as i64),
                        &sinks(&["webhook"]),
                        n as i64,
                    )
                    .await
                    .unwrap(),
                );
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for j in joins {
        outcomes.extend(j.await.unwrap());
    }
    let ids: HashSet<i64> = outcomes.iter().map(|o| o.issue_id).collect();
    assert_eq!(ids.len(), 1, "one issue for one fingerprint");
    assert_eq!(outcomes.iter().filter(|o| o.new_issue).count(), 1);
    let counts: HashSet<i64> = outcomes.iter().map(|o| o.occurrences).collect();
    assert_eq!(
        counts.len() as u64,
        TASKS * EACH,
        "every count handed out once"
    );
    let id = *ids.iter().next().unwrap();
    let d = h.store.get_issue(id, 1_000).await.unwrap().unwrap();
    assert_eq!(d.issue.occurrences as u64, TASKS * EACH);
    assert_eq!(d.recent_occurrences.len() as u64, TASKS * EACH);
    assert_eq!(d.transitions.len(), 1);
    // Exactly one dispatch, by the record that opened the issue.
    let enq: Vec<_> = outcomes
        .iter()
        .filter(|o| o.dispatches_enqueued > 0)
        .collect();
    assert_eq!(enq.len(), 1);
    assert!(enq[0].new_issue && enq[0].dispatches_enqueued == 1);
    assert_eq!(d.dispatches.len(), 1);

    // Concurrent recurrences of a shipped issue: exactly one regresses and enqueues cycle 2.
    h.store
        .transition(id, IssueState::Shipped, 100_000, "fix", Some("1.0.0"))
        .await
        .unwrap();
    let mut joins = Vec::new();
    for t in 0..TASKS {
        let s = h.store.clone();
        joins.push(tokio::spawn(async move {
            let n = 900_000 + t;
            s.record_failure(
                &record("fp-race", n, n as i64),
                &sinks(&["webhook"]),
                n as i64,
            )
            .await
            .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for j in joins {
        outcomes.push(j.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.regressed).count(), 1);
    assert!(outcomes
        .iter()
        .all(|o| o.cycle == 2 && o.state == IssueState::Regressed));
    assert_eq!(
        outcomes.iter().map(|o| o.dispatches_enqueued).sum::<u32>(),
        1
    );
    let ds = h.store.list_dispatches(id).await.unwrap();
    assert_eq!(
        ds.iter().map(|d| d.cycle).collect::<Vec<_>>(),
        vec![1, 2],
        "{ds:?}"
    );
}

async fn lifecycle_transitions(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-l", 1, 1_000), &[], 1_000)
        .await
        .unwrap()
        .issue_id;

    let err = s
        .transition(id, IssueState::Verified, 1_500, "skip ahead", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidTransition {
                from: IssueState::Open,
                to: IssueState::Verified,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("open -> verified"), "{err}");

    s.transition(id, IssueState::Dispatched, 2_000, "dispatched", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 3_000, "fix shipped", Some("2.0"))
        .await
        .unwrap();
    let t = s
        .transition(id, IssueState::Verified, 4_000, "quiet for 24h", None)
        .await
        .unwrap();
    assert_eq!(t.from_state, Some(IssueState::Shipped));

    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.issue.state, IssueState::Verified);
    assert_eq!(d.issue.dispatched_at, Some(2_000));
    assert_eq!(d.issue.shipped_at, Some(3_000));
    assert_eq!(d.issue.shipped_version.as_deref(), Some("2.0"));
    assert_eq!(d.issue.verified_at, Some(4_000));
    let path: Vec<_> = d.transitions.iter().map(|t| (t.to_state, t.at)).collect();
    assert_eq!(
        path,
        vec![
            (IssueState::Open, 1_000),
            (IssueState::Dispatched, 2_000),
            (IssueState::Shipped, 3_000),
            (IssueState::Verified, 4_000),
        ]
    );
    assert_eq!(d.transitions[2].reason, "fix shipped");

    s.transition(id, IssueState::Ignored, 5_000, "won't fix", None)
        .await
        .unwrap();
    assert!(matches!(
        s.transition(id, IssueState::Ignored, 5_001, "again", None)
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        s.transition(424_242, IssueState::Dispatched, 1, "nope", None)
            .await,
        Err(StoreError::IssueNotFound(424_242))
    ));
    // A refused transition stores nothing.
    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.transitions.len(), 5);
}

async fn regression_bumps_cycle(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-r", 1, 1_000), &[], 1_000)
        .await
        .unwrap()
        .issue_id;
    s.transition(id, IssueState::Dispatched, 2_000, "d", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 3_000, "s", Some("1.0.0"))
        .await
        .unwrap();
    // A recurrence before shipping would not regress; after shipping (on the shipped version) it does.
    let o = s
        .record_failure(&record("fp-r", 2, 3_500), &[], 3_500)
        .await
        .unwrap();
    assert!(o.regressed && !o.new_issue);
    assert_eq!(
        (o.cycle, o.state, o.occurrences),
        (2, IssueState::Regressed, 2)
    );
    assert_eq!(o.dispatches_enqueued, 0, "no sinks given");
    // Further recurrences stay in the same cycle.
    let o = s
        .record_failure(&record("fp-r", 3, 3_600), &[], 3_600)
        .await
        .unwrap();
    assert!(!o.regressed);
    assert_eq!((o.cycle, o.state), (2, IssueState::Regressed));

    let t = s
        .transition(id, IssueState::Dispatched, 4_000, "cycle 2", None)
        .await
        .unwrap();
    assert_eq!(t.cycle, 2);
    s.transition(id, IssueState::Shipped, 5_000, "s2", Some("2.1"))
        .await
        .unwrap();
    s.transition(id, IssueState::Verified, 6_000, "v", None)
        .await
        .unwrap();
    // Regression from verified, this time decided by the verifier.
    let t = s
        .transition(id, IssueState::Regressed, 7_000, "recurred on 2.1", None)
        .await
        .unwrap();
    assert_eq!(t.cycle, 3);

    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.issue.cycle, 3);
    let regs: Vec<_> = d
        .transitions
        .iter()
        .filter(|t| t.to_state == IssueState::Regressed)
        .map(|t| (t.from_state, t.cycle, t.at))
        .collect();
    assert_eq!(
        regs,
        vec![
            (Some(IssueState::Shipped), 2, 3_500),
            (Some(IssueState::Verified), 3, 7_000)
        ]
    );
    let first_regression = d
        .transitions
        .iter()
        .find(|t| t.to_state == IssueState::Regressed)
        .unwrap();
    assert!(
        first_regression.reason.contains(&format!("{:032x}", 2)),
        "{first_regression:?}"
    );
}

async fn outbox_idempotency_and_claims(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-o", 1, 1_000), &[], 1_000)
        .await
        .unwrap()
        .issue_id;
    let payload = json!({"title": "TimeoutError in planner", "n": 1});

    let e1 = s
        .enqueue_dispatch(id, 1, "webhook", &payload, 10_000)
        .await
        .unwrap();
    assert!(e1.created);
    let e1b = s
        .enqueue_dispatch(id, 1, "webhook", &json!({"other": true}), 10_500)
        .await
        .unwrap();
    assert_eq!((e1b.dispatch_id, e1b.created), (e1.dispatch_id, false));
    let e2 = s
        .enqueue_dispatch(id, 1, "jsonl", &payload, 10_000)
        .await
        .unwrap();
    let e3 = s
        .enqueue_dispatch(id, 2, "webhook", &payload, 20_000)
        .await
        .unwrap();
    assert!(e2.created && e3.created);
    assert_eq!(
        HashSet::from([e1.dispatch_id, e2.dispatch_id, e3.dispatch_id]).len(),
        3
    );

    // Only what is due is claimed, and a claim leases it.
    let c = s.claim_due_dispatches(10_000, 10, 1_000).await.unwrap();
    assert_eq!(
        c.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![e1.dispatch_id, e2.dispatch_id]
    );
    assert!(c.iter().all(|d| d.attempts == 1));
    assert_eq!(c[0].payload, payload, "the first payload wins");
    assert_eq!(
        c[0].idempotency_key,
        store::idempotency_key(id, 1, "webhook")
    );
    assert!(s
        .claim_due_dispatches(10_500, 10, 1_000)
        .await
        .unwrap()
        .is_empty());

    s.mark_failed(e1.dispatch_id, 10_600, "HTTP 500")
        .await
        .unwrap();
    s.mark_delivered(e2.dispatch_id, 10_700).await.unwrap();
    s.mark_delivered(e2.dispatch_id, 99_999).await.unwrap(); // idempotent

    let c = s.claim_due_dispatches(10_600, 10, 1_000).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].id, c[0].attempts), (e1.dispatch_id, 2));
    assert_eq!(c[0].last_error.as_deref(), Some("HTTP 500"));
    // Lease runs out (the claimer "crashed"): it is claimed again, with e3 now due too.
    let c = s.claim_due_dispatches(20_000, 10, 1_000).await.unwrap();
    assert_eq!(
        c.iter().map(|d| (d.id, d.attempts)).collect::<Vec<_>>(),
        vec![(e1.dispatch_id, 3), (e3.dispatch_id, 1)]
    );
    s.mark_delivered(e1.dispatch_id, 20_100).await.unwrap();
    s.mark_delivered(e3.dispatch_id, 20_100).await.unwrap();
    assert!(s
        .claim_due_dispatches(1_000_000, 10, 1_000)
        .await
        .unwrap()
        .is_empty());

    // Errors say what is wrong.
    assert!(matches!(
        s.mark_delivered(777_777, 1).await,
        Err(StoreError::DispatchNotFound(777_777))
    ));
    assert!(matches!(
        s.mark_failed(777_777, 1, "x").await,
        Err(StoreError::DispatchNotFound(777_777))
    ));
    assert!(matches!(
        s.enqueue_dispatch(888_888, 1, "webhook", &payload, 1).await,
        Err(StoreError::IssueNotFound(888_888))
    ));
    assert!(matches!(
        s.enqueue_dispatch(id, 1, "", &payload, 1).await,
        Err(StoreError::Invalid(_))
    ));

    // Concurrent claimers never get the same dispatch.
    for n in 0..20 {
        s.enqueue_dispatch(id, 10 + n, "webhook", &payload, 50_000)
            .await
            .unwrap();
    }
    let mut joins = Vec::new();
    for _ in 0..4 {
        let s = h.store.clone();
        joins.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = s.claim_due_dispatches(50_000, 3, 60_000).await.unwrap();
                if c.is_empty() {
                    return got;
                }
                got.extend(c.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut all = Vec::new();
    for j in joins {
        all.extend(j.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (20, 20));
}

async fn migrations_applied_once(h: Harness) {
    assert_eq!(h.store.schema_version().await.unwrap(), 5);
    let id = h
        .store
        .record_failure(&record("fp-m", 1, 1_000), &[], 1_000)
        .await
        .unwrap()
        .issue_id;
    // Reopening (a restart, or a second instance) applies nothing and keeps the data.
    for _ in 0..2 {
        let again = store::open(&h.url).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), 5);
        let d = again.get_issue(id, 5).await.unwrap().unwrap();
        assert_eq!(d.issue.occurrences, 1);
    }
    // Two instances opening at once both succeed.
    let (a, b) = tokio::join!(store::open(&h.url), store::open(&h.url));
    assert_eq!(a.unwrap().schema_version().await.unwrap(), 5);
    assert_eq!(b.unwrap().schema_version().await.unwrap(), 5);
}

async fn bad_input_is_refused(h: Harness) {
    let s = &h.store;
    let mut r = record("fp-x", 1, 1);
    r.trace_id = "not-hex".into();
    let e = s.record_failure(&r, &[], r.observed_at).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid(_)) && e.to_string().contains("trace_id"),
        "{e}"
    );
    let mut r = record("fp-x", 1, 1);
    r.confidence = f64::NAN;
    assert!(matches!(
        s.record_failure(&r, &[], r.observed_at).await,
        Err(StoreError::Invalid(_))
    ));
    let mut r = record("", 1, 1);
    r.fingerprint.clear();
    assert!(matches!(
        s.record_failure(&r, &[], r.observed_at).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(s
        .list_issues(&IssueFilter::default())
        .await
        .unwrap()
        .is_empty());
}

async fn outbox_rows_come_with_the_record(h: Harness) {
    let s = &h.store;
    let both = sinks(&["webhook", "jsonl"]);
    let rec = record("fp-ob", 1, 1_000);
    let o = s
        .record_failure(&rec, &both, rec.observed_at)
        .await
        .unwrap();
    assert!(o.new_issue);
    assert_eq!(o.dispatches_enqueued, 2);
    let id = o.issue_id;
    let ds = s.list_dispatches(id).await.unwrap();
    assert_eq!(
        ds.iter().map(|d| d.sink.as_str()).collect::<Vec<_>>(),
        vec!["webhook", "jsonl"],
        "oldest first"
    );
    for d in &ds {
        assert_eq!(d.idempotency_key, store::idempotency_key(id, 1, &d.sink));
        assert_eq!((d.cycle, d.attempts), (1, 0));
        assert_eq!((d.created_at, d.next_attempt_at), (1_000, 1_000));
        assert_eq!(d.delivered_at, None);
        assert_eq!(d.payload["cycle"], 1);
        assert_eq!(d.payload["trace_id"], rec.trace_id);
        assert_eq!(d.payload["fingerprint"], "fp-ob");
        assert_eq!(d.payload["signal"], rec.signal.value());
        assert_eq!(d.payload, store::dispatch_payload(&rec, 1).unwrap());
    }
    // Due at observed_at: claimable then, not before.
    assert!(s
        .claim_due_dispatches(999, 10, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.pending_dispatches().await.unwrap(), 2);

    // A recurrence in the same cycle enqueues nothing, whatever the sinks.
    let o = s
        .record_failure(
            &record("fp-ob", 2, 1_100),
            &sinks(&["webhook", "slack"]),
            1_100,
        )
        .await
        .unwrap();
    assert_eq!((o.dispatches_enqueued, o.occurrences), (0, 2));
    s.transition(id, IssueState::Dispatched, 1_200, "sent", None)
        .await
        .unwrap();
    let o = s
        .record_failure(&record("fp-ob", 3, 1_300), &both, 1_300)
        .await
        .unwrap();
    assert_eq!((o.dispatches_enqueued, o.regressed), (0, false));
    assert_eq!(s.list_dispatches(id).await.unwrap().len(), 2);

    // A regression enqueues the new cycle, with the regressing failure as payload.
    s.transition(id, IssueState::Shipped, 2_000, "fix", Some("1.0.0"))
        .await
        .unwrap();
    let reg = record("fp-ob", 4, 3_000);
    let o = s
        .record_failure(&reg, &both, reg.observed_at)
        .await
        .unwrap();
    assert!(o.regressed);
    assert_eq!((o.cycle, o.dispatches_enqueued), (2, 2));
    let ds = s.list_dispatches(id).await.unwrap();
    assert_eq!(ds.len(), 4);
    assert!(ds[..2].iter().all(|d| d.cycle == 1));
    for d in &ds[2..] {
        assert_eq!(d.cycle, 2);
        assert_eq!(d.idempotency_key, store::idempotency_key(id, 2, &d.sink));
        assert_eq!(d.payload["cycle"], 2);
        assert_eq!(d.payload["trace_id"], reg.trace_id);
        assert_eq!(d.next_attempt_at, 3_000);
    }
    let detail = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(detail.dispatches, ds);
    assert!(ds.windows(2).all(|w| w[0].id < w[1].id));

    // The same sink twice is one dispatch; no sinks, none.
    let o = s
        .record_failure(
            &record("fp-ob2", 5, 1_000),
            &sinks(&["webhook", "webhook"]),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(o.dispatches_enqueued, 1);
    let o = s
        .record_failure(&record("fp-ob3", 6, 1_000), &[], 1_000)
        .await
        .unwrap();
    assert_eq!(o.dispatches_enqueued, 0);
    assert!(s.list_dispatches(o.issue_id).await.unwrap().is_empty());
    assert!(s.list_dispatches(123_456).await.unwrap().is_empty());
    // An empty sink name is refused before anything is stored.
    assert!(matches!(
        s.record_failure(&record("fp-ob4", 7, 1_000), &sinks(&["webhook", ""]), 1_000)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let n_issues = s.list_issues(&IssueFilter::default()).await.unwrap().len();
    assert_eq!(n_issues, 3);
}

async fn failed_record_enqueues_nothing(h: Harness) {
    let s = &h.store;
    let both = sinks(&["webhook", "jsonl"]);
    // Break a step of record_failure after the outbox insert, so the transaction fails there.
    exec_raw(&h.url, "ALTER TABLE occurrences RENAME TO occurrences_away")
        .await
        .unwrap();
    let err = s
        .record_failure(&record("fp-atomic", 1, 1_000), &both, 1_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("storing occurrence"), "{err}");
    // Nothing of it stayed: no issue, no outbox row, no version.
    assert!(s
        .list_issues(&IssueFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.pending_dispatches().await.unwrap(), 0);
    assert!(s
        .claim_due_dispatches(i64::MAX - 1, 10, 1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.version_first_seen("agent-svc", "1.0.0").await.unwrap(),
        None
    );
    // Retried once the store works again, the failure opens the issue with its dispatches.
    exec_raw(&h.url, "ALTER TABLE occurrences_away RENAME TO occurrences")
        .await
        .unwrap();
    let o = s
        .record_failure(&record("fp-atomic", 1, 1_000), &both, 1_000)
        .await
        .unwrap();
    assert!(o.new_issue);
    assert_eq!(o.dispatches_enqueued, 2);
    assert_eq!(s.pending_dispatches().await.unwrap(), 2);
}

async fn ignored_issue_counts_but_never_dispatches(h: Harness) {
    let s = &h.store;
    let hook = sinks(&["webhook"]);
    let id = s
        .record_failure(&record("fp-ig", 1, 1_000), &hook, 1_000)
        .await
        .unwrap()
        .issue_id;
    s.transition(id, IssueState::Ignored, 1_500, "noise", None)
        .await
        .unwrap();
    let o = s
        .record_failure(&record("fp-ig", 2, 2_000), &hook, 2_000)
        .await
        .unwrap();
    assert_eq!(
        (
            o.state,
            o.cycle,
            o.occurrences,
            o.regressed,
            o.dispatches_enqueued
        ),
        (IssueState::Ignored, 1, 2, false, 0)
    );
    // Ignored after shipping: a recurrence on the shipped version does not regress either.
    let id2 = s
        .record_failure(&record("fp-ig2", 3, 1_000), &hook, 1_000)
        .await
        .unwrap()
        .issue_id;
    s.transition(id2, IssueState::Shipped, 1_100, "fix", Some("1.0.0"))
        .await
        .unwrap();
    s.transition(id2, IssueState::Ignored, 1_200, "won't fix", None)
        .await
        .unwrap();
    let o = s
        .record_failure(&record("fp-ig2", 4, 2_000), &hook, 2_000)
        .await
        .unwrap();
    assert_eq!(
        (o.state, o.cycle, o.regressed, o.dispatches_enqueued),
        (IssueState::Ignored, 1, false, 0)
    );
    assert_eq!(s.list_dispatches(id).await.unwrap().len(), 1);
    assert_eq!(s.list_dispatches(id2).await.unwrap().len(), 1);
    let d = s.get_issue(id2, 10).await.unwrap().unwrap();
    assert_eq!(d.issue.occurrences, 2);
    assert!(d
        .transitions
        .iter()
        .all(|t| t.to_state != IssueState::Regressed));
}

async fn semver_regression_needs_shipped_or_later(h: Harness) {
    let s = &h.store;
    let hook = sinks(&["webhook"]);
    let id = s
        .record_failure(&record_on("fp-sv", 1, 1_000, Some("1.0.0")), &hook, 1_000)
        .await
        .unwrap()
        .issue_id;
    // open -> shipped directly: the fix shipped before the dispatch was delivered.
    s.transition(id, IssueState::Shipped, 2_000, "fix", Some("v1.2.0"))
        .await
        .unwrap();
    // Older versions are still running: their failures only add occurrences.
    for (n, v) in [(2, "1.1.0"), (3, "1.2.0-rc.1"), (4, "v1.1.9")] {
        let o = s
            .record_failure(
                &record_on("fp-sv", n, 3_000 + n as i64, Some(v)),
                &hook,
                3_000 + n as i64,
            )
            .await
            .unwrap();
        assert!(!o.regressed, "{v}");
        assert_eq!(
            (o.state, o.cycle, o.dispatches_enqueued),
            (IssueState::Shipped, 1, 0),
            "{v}"
        );
    }
    // Semver decides over first-seen: 1.10.0 is newer than v1.2.0 though never seen before.
    let o = s
        .record_failure(&record_on("fp-sv", 5, 4_000, Some("1.10.0")), &hook, 4_000)
        .await
        .unwrap();
    assert!(o.regressed);
    assert_eq!(
        (o.state, o.cycle, o.occurrences, o.dispatches_enqueued),
        (IssueState::Regressed, 2, 5, 1)
    );
    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(d.issue.cycle_started_at, 4_000);
    let last = d.transitions.last().unwrap();
    assert_eq!(
        (last.from_state, last.to_state, last.cycle, last.at),
        (Some(IssueState::Shipped), IssueState::Regressed, 2, 4_000)
    );
    assert!(last.reason.contains("1.10.0"), "{}", last.reason);

    // regressed -> shipped directly, then verified; a failure on exactly the shipped version
    // (with a `v` or without) regresses from verified.
    s.transition(id, IssueState::Shipped, 5_000, "fix 2", Some("2.0.0"))
        .await
        .unwrap();
    s.transition(id, IssueState::Verified, 6_000, "quiet", None)
        .await
        .unwrap();
    let o = s
        .record_failure(&record_on("fp-sv", 6, 6_500, Some("1.10.0")), &hook, 6_500)
        .await
        .unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Verified, false));
    let o = s
        .record_failure(&record_on("fp-sv", 7, 7_000, Some("v2.0.0")), &hook, 7_000)
        .await
        .unwrap();
    assert_eq!(
        (o.state, o.cycle, o.regressed, o.dispatches_enqueued),
        (IssueState::Regressed, 3, true, 1)
    );
    // A failure without a version regresses only once the shipped version runs, and only if it
    // was observed since then.
    s.transition(id, IssueState::Shipped, 8_000, "fix 3", Some("3.0.0"))
        .await
        .unwrap();
    let o = s
        .record_failure(&record_on("fp-sv", 8, 9_000, None), &hook, 9_000)
        .await
        .unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Shipped, false));
    s.record_version_seen("agent-svc", "3.0.0", 9_500)
        .await
        .unwrap();
    let o = s
        .record_failure(&record_on("fp-sv", 10, 9_400, None), &hook, 9_600)
        .await
        .unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Shipped, false));
    let o = s
        .record_failure(&record_on("fp-sv", 11, 9_500, None), &hook, 9_700)
        .await
        .unwrap();
    assert_eq!((o.cycle, o.regressed), (4, true));
    // Any failure after the ship regresses when the fix shipped without a version.
    s.transition(id, IssueState::Shipped, 10_000, "fix 4", None)
        .await
        .unwrap();
    let o = s
        .record_failure(&record_on("fp-sv", 12, 9_999, None), &hook, 10_500)
        .await
        .unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Shipped, false));
    let o = s
        .record_failure(&record_on("fp-sv", 9, 11_000, Some("0.0.1")), &hook, 11_000)
        .await
        .unwrap();
    assert_eq!((o.cycle, o.regressed), (5, true));
    let ds = s.list_dispatches(id).await.unwrap();
    assert_eq!(
        ds.iter().map(|d| d.cycle).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

async fn sha_versions_ordered_by_first_seen(h: Harness) {
    let s = &h.store;
    let hook = sinks(&["webhook"]);
    // The pipeline reports versions as it sees them.
    assert_eq!(
        s.record_version_seen("sha-svc", "aaa1111", 1_000)
            .await
            .unwrap(),
        1_000
    );
    assert_eq!(
        s.record_version_seen("sha-svc", "aaa1111", 500)
            .await
            .unwrap(),
        1_000,
        "first seen is kept"
    );
    assert_eq!(
        s.record_version_seen("sha-svc", "bbb2222", 2_000)
            .await
            .unwrap(),
        2_000
    );
    assert_eq!(
        s.version_first_seen("sha-svc", "aaa1111").await.unwrap(),
        Some(1_000)
    );
    assert_eq!(
        s.version_first_seen("other-svc", "aaa1111").await.unwrap(),
        None
    );
    assert!(matches!(
        s.record_version_seen("", "aaa1111", 1).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.record_version_seen("sha-svc", "", 1).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.record_version_seen("sha-svc", &"x".repeat(10_000), 1)
            .await,
        Err(StoreError::Invalid(_))
    ));

    let mut r = record_on("fp-sha", 1, 1_500, Some("aaa1111"));
    r.service = "sha-svc".into();
    let id = s
        .record_failure(&r, &hook, r.observed_at)
        .await
        .unwrap()
        .issue_id;
    s.transition(id, IssueState::Dispatched, 1_600, "sent", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 2_100, "fix", Some("bbb2222"))
        .await
        .unwrap();
    // Still on the old sha (first seen before the shipped one): no regression.
    let mut r = record_on("fp-sha", 2, 3_000, Some("aaa1111"));
    r.service = "sha-svc".into();
    let o = s.record_failure(&r, &hook, r.observed_at).await.unwrap();
    assert_eq!(
        (o.state, o.regressed, o.cycle),
        (IssueState::Shipped, false, 1)
    );
    // A sha never seen before is new: recorded as seen now, at or after the shipped one.
    let mut r = record_on("fp-sha", 3, 4_000, Some("ccc3333"));
    r.service = "sha-svc".into();
    let o = s.record_failure(&r, &hook, r.observed_at).await.unwrap();
    assert_eq!(
        (o.state, o.regressed, o.cycle, o.dispatches_enqueued),
        (IssueState::Regressed, true, 2, 1)
    );
    assert_eq!(
        s.version_first_seen("sha-svc", "ccc3333").await.unwrap(),
        Some(4_000),
        "record_failure records the version it ran on"
    );

    // A shipped sha never seen running: nothing is at or after it yet.
    let mut r = record_on("fp-sha2", 4, 5_000, Some("ddd4444"));
    r.service = "sha-svc".into();
    let id2 = s
        .record_failure(&r, &hook, r.observed_at)
        .await
        .unwrap()
        .issue_id;
    s.transition(id2, IssueState::Shipped, 5_100, "fix", Some("eee5555"))
        .await
        .unwrap();
    let mut r = record_on("fp-sha2", 5, 6_000, Some("fff6666"));
    r.service = "sha-svc".into();
    let o = s.record_failure(&r, &hook, r.observed_at).await.unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Shipped, false));
    // Once it is seen, a failure on it (or a later sha) regresses.
    s.record_version_seen("sha-svc", "eee5555", 6_500)
        .await
        .unwrap();
    let mut r = record_on("fp-sha2", 6, 7_000, Some("fff6666"));
    r.service = "sha-svc".into();
    let o = s.record_failure(&r, &hook, r.observed_at).await.unwrap();
    assert_eq!(
        (o.state, o.regressed),
        (IssueState::Shipped, false),
        "fff6666 was first seen at 6000, before eee5555"
    );
    let mut r = record_on("fp-sha2", 7, 7_500, Some("eee5555"));
    r.service = "sha-svc".into();
    let o = s.record_failure(&r, &hook, r.observed_at).await.unwrap();
    assert_eq!(
        (o.state, o.regressed, o.cycle),
        (IssueState::Regressed, true, 2)
    );
}

async fn cycle_started_at_follows_cycles(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-cs", 1, 2_000), &[], 2_000)
        .await
        .unwrap()
        .issue_id;
    let cs = |d: store::IssueDetail| (d.issue.cycle, d.issue.cycle_started_at);
    assert_eq!(cs(s.get_issue(id, 0).await.unwrap().unwrap()), (1, 2_000));
    // An earlier failure arriving late moves first_seen, and with it the start of cycle 1.
    s.record_failure(&record("fp-cs", 2, 1_000), &[], 1_000)
        .await
        .unwrap();
    assert_eq!(cs(s.get_issue(id, 0).await.unwrap().unwrap()), (1, 1_000));
    s.transition(id, IssueState::Shipped, 3_000, "fix", Some("1.0.0"))
        .await
        .unwrap();
    s.record_failure(&record("fp-cs", 3, 5_000), &[], 5_000)
        .await
        .unwrap();
    assert_eq!(cs(s.get_issue(id, 0).await.unwrap().unwrap()), (2, 5_000));
    // Later failures and transitions within the cycle leave it alone.
    s.record_failure(&record("fp-cs", 4, 4_000), &[], 4_000)
        .await
        .unwrap();
    s.transition(id, IssueState::Dispatched, 5_500, "sent", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 6_000, "fix 2", Some("1.1.0"))
        .await
        .unwrap();
    s.transition(id, IssueState::Verified, 7_000, "quiet", None)
        .await
        .unwrap();
    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(
        (d.issue.first_seen, d.issue.cycle_started_at),
        (1_000, 5_000)
    );
    // A regression decided by the verifier starts the cycle at the transition.
    s.transition(id, IssueState::Regressed, 9_000, "recurred", None)
        .await
        .unwrap();
    assert_eq!(cs(s.get_issue(id, 0).await.unwrap().unwrap()), (3, 9_000));
    let listed = s.list_issues(&IssueFilter::default()).await.unwrap();
    assert_eq!(listed[0].cycle_started_at, 9_000);
}

async fn new_transitions_to_shipped(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-nt", 1, 1_000), &[], 1_000)
        .await
        .unwrap()
        .issue_id;
    let t = s
        .transition(
            id,
            IssueState::Shipped,
            2_000,
            "shipped early",
            Some("1.0.0"),
        )
        .await
        .unwrap();
    assert_eq!(
        (t.from_state, t.to_state),
        (Some(IssueState::Open), IssueState::Shipped)
    );
    s.transition(id, IssueState::Regressed, 3_000, "recurred", None)
        .await
        .unwrap();
    let t = s
        .transition(id, IssueState::Shipped, 4_000, "fix 2", Some("1.1.0"))
        .await
        .unwrap();
    assert_eq!(
        (t.from_state, t.to_state, t.cycle),
        (Some(IssueState::Regressed), IssueState::Shipped, 2)
    );
    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    assert_eq!(
        (
            d.issue.shipped_at,
            d.issue.shipped_version.as_deref(),
            d.issue.dispatched_at
        ),
        (Some(4_000), Some("1.1.0"), None)
    );
    // Still refused: verified -> shipped.
    s.transition(id, IssueState::Verified, 5_000, "quiet", None)
        .await
        .unwrap();
    assert!(matches!(
        s.transition(id, IssueState::Shipped, 6_000, "again", Some("1.2.0"))
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
}

/// The `*_at` of an issue as a tuple: classified, dispatched, shipped, verified, cycle start.
type Stamps = (Option<i64>, Option<i64>, Option<i64>, Option<i64>, i64);

async fn stamps(s: &Arc<dyn Store>, id: i64) -> (Stamps, Option<String>) {
    let i = s.get_issue(id, 0).await.unwrap().unwrap().issue;
    (
        (
            i.classified_at,
            i.dispatched_at,
            i.shipped_at,
            i.verified_at,
            i.cycle_started_at,
        ),
        i.shipped_version,
    )
}

async fn timestamps_describe_the_current_cycle(h: Harness) {
    let s = &h.store;
    // Observed at 1000, recorded (classified) at 1250.
    let id = s
        .record_failure(&record("fp-ts", 1, 1_000), &[], 1_250)
        .await
        .unwrap()
        .issue_id;
    assert_eq!(
        stamps(s, id).await,
        ((Some(1_250), None, None, None, 1_000), None)
    );
    s.transition(id, IssueState::Dispatched, 2_000, "sent", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 3_000, "fix", Some("1.0.0"))
        .await
        .unwrap();
    s.transition(id, IssueState::Verified, 4_000, "quiet", None)
        .await
        .unwrap();
    assert_eq!(
        stamps(s, id).await,
        (
            (Some(1_250), Some(2_000), Some(3_000), Some(4_000), 1_000),
            Some("1.0.0".into())
        )
    );
    // A regression recorded from a failure: the new cycle starts at the failure, is classified
    // when recorded, and has not been dispatched, shipped or verified; the fix that regressed stays named.
    let o = s
        .record_failure(&record("fp-ts", 2, 5_000), &[], 5_300)
        .await
        .unwrap();
    assert!(o.regressed);
    assert_eq!(
        stamps(s, id).await,
        ((Some(5_300), None, None, None, 5_000), Some("1.0.0".into()))
    );
    // No negative latency anywhere in the new cycle.
    s.transition(id, IssueState::Dispatched, 6_000, "sent 2", None)
        .await
        .unwrap();
    s.transition(id, IssueState::Shipped, 7_000, "fix 2", Some("1.1.0"))
        .await
        .unwrap();
    s.transition(id, IssueState::Verified, 8_000, "quiet 2", None)
        .await
        .unwrap();
    let ((c, d, sh, v, start), _) = stamps(s, id).await;
    let c = c.unwrap();
    assert!(start <= c && c <= d.unwrap() && d <= sh && sh <= v);
    // A regression decided by a transition: classified (and started) at the transition.
    s.transition(id, IssueState::Regressed, 9_000, "recurred", None)
        .await
        .unwrap();
    assert_eq!(
        stamps(s, id).await,
        ((Some(9_000), None, None, None, 9_000), Some("1.1.0".into()))
    );
    // The history of the earlier cycles is in the transitions.
    let d = s.get_issue(id, 0).await.unwrap().unwrap();
    let shipped: Vec<_> = d
        .transitions
        .iter()
        .filter(|t| t.to_state == IssueState::Shipped)
        .map(|t| (t.cycle, t.at))
        .collect();
    assert_eq!(shipped, vec![(1, 3_000), (2, 7_000)]);
}

async fn late_or_old_failures_do_not_regress(h: Harness) {
    let s = &h.store;
    let hook = sinks(&["webhook"]);
    let id = s
        .record_failure(&record_on("fp-late", 1, 1_000, Some("1.0.0")), &hook, 1_000)
        .await
        .unwrap()
        .issue_id;
    s.transition(id, IssueState::Shipped, 5_000, "fix", Some("1.1.0"))
        .await
        .unwrap();
    s.record_version_seen("agent-svc", "1.1.0", 4_000)
        .await
        .unwrap();
    // Observed before the ship, recorded after it (the assembler held the trace): no regression,
    // whatever version it ran, or none.
    for (n, v) in [(2, Some("1.1.0")), (3, Some("2.0.0")), (4, None)] {
        let o = s
            .record_failure(&record_on("fp-late", n, 4_990, v), &hook, 5_010)
            .await
            .unwrap();
        assert_eq!(
            (o.state, o.regressed, o.dispatches_enqueued),
            (IssueState::Shipped, false, 0),
            "{v:?}"
        );
    }
    // The old build still failing during the rollout: no regression.
    let o = s
        .record_failure(&record_on("fp-late", 5, 6_000, Some("1.0.0")), &hook, 6_000)
        .await
        .unwrap();
    assert!(!o.regressed);
    // The same holds for a verified issue.
    s.transition(id, IssueState::Verified, 7_000, "quiet", None)
        .await
        .unwrap();
    let o = s
        .record_failure(&record_on("fp-late", 6, 4_999, None), &hook, 7_100)
        .await
        .unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Verified, false));
    // Observed after the ship, without a version, the shipped version running since 4000: regressed.
    let o = s
        .record_failure(&record_on("fp-late", 7, 7_200, None), &hook, 7_300)
        .await
        .unwrap();
    assert_eq!(
        (o.state, o.regressed, o.cycle, o.dispatches_enqueued),
        (IssueState::Regressed, true, 2, 1)
    );

    // The shipped version seen only under another service does not count for this issue's.
    let id2 = s
        .record_failure(&record_on("fp-late2", 8, 1_000, None), &hook, 1_000)
        .await
        .unwrap()
        .issue_id;
    s.transition(id2, IssueState::Shipped, 2_000, "fix", Some("9.9.9"))
        .await
        .unwrap();
    s.record_version_seen("other-svc", "9.9.9", 2_500)
        .await
        .unwrap();
    let o = s
        .record_failure(&record_on("fp-late2", 9, 3_000, None), &hook, 3_000)
        .await
        .unwrap();
    assert_eq!((o.state, o.regressed), (IssueState::Shipped, false));
    assert_eq!(s.list_dispatches(id2).await.unwrap().len(), 1);
}

async fn reship_restarts_the_verify_clock(h: Harness) {
    let s = &h.store;
    let id = s
        .record_failure(&record("fp-rs", 1, 1_000), &[], 1_000)
        .await
        .unwrap()
        .issue_id;
    s.transition(id, IssueState::Shipped, 2_000, "fix", Some("1.0.0"))
        .await
        .unwrap();
    s.record_version_seen("agent-svc", "1.0.0", 2_500)
        .await
        .unwrap();
    let due = |now| async move {
        s.due_for_verification(now, 10_000, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(due(12_500).await, vec![id]);
    // A newer version ships the fix again.
    let t = s
        .transition(id, IssueState::Shipped, 3_000, "fix again", Some("1.0.1"))
        .await
        .unwrap();
    assert_eq!(
        (t.from_state, t.to_state, t.cycle),
        (Some(IssueState::Shipped), IssueState::Shipped, 1)
    );
    // A verifier that read 1.0.0 before the re-ship does not verify 1.0.1.
    assert!(matches!(
        s.transition(id, IssueState::Verified, 3_200, "stale", Some("1.0.0"))
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
    // The same version again (a concurrent retry) is refused inside the transaction and
    // changes nothing.
    assert!(matches!(
        s.transition(id, IssueState::Shipped, 3_500, "retry", Some("1.0.1"))
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));
    let i = s.get_issue(id, 0).await.unwrap().unwrap().issue;
    assert_eq!(
        (i.state, i.shipped_at, i.shipped_version.as_deref()),
        (IssueState::Shipped, Some(3_000), Some("1.0.1"))
    );
    // Not due until 1.0.1 runs, then a full window after it was first seen.
    assert!(due(1_000_000).await.is_empty());
    s.record_version_seen("agent-svc", "1.0.1", 4_000)
        .await
        .unwrap();
    assert!(due(13_999).await.is_empty());
    assert_eq!(due(14_000).await, vec![id]);
    // Recurrences are now weighed against 1.0.1.
    let o = s
        .record_failure(&record_on("fp-rs", 2, 5_000, Some("1.0.0")), &[], 5_000)
        .await
        .unwrap();
    assert!(!o.regressed);
    let o = s
        .record_failure(&record_on("fp-rs", 3, 5_100, Some("1.0.1")), &[], 5_100)
        .await
        .unwrap();
    assert!(o.regressed);
}

async fn due_for_verification_in_one_query(h: Harness) {
    let s = &h.store;
    let window = 10_000;
    let mut ids = Vec::new();
    for n in 1..=7 {
        ids.push(
            s.record_failure(&record(&format!("fp-due-{n}"), n, 1_000), &[], 1_000)
                .await
                .unwrap()
                .issue_id,
        );
    }
    // 0: shipped without a version at 3000: its clock starts then.
    s.transition(ids[0], IssueState::Shipped, 3_000, "fix", None)
        .await
        .unwrap();
    // 1: shipped 2.0.0 at 2000, 2.0.0 first seen at 2500: starts at 2500.
    s.transition(ids[1], IssueState::Shipped, 2_000, "fix", Some("2.0.0"))
        .await
        .unwrap();
    s.record_version_seen("agent-svc", "2.0.0", 2_500)
        .await
        .unwrap();
    // 2: shipped 2.0.0 too, but at 4000 (after it was seen): starts at 4000.
    s.transition(ids[2], IssueState::Shipped, 4_000, "fix", Some("2.0.0"))
        .await
        .unwrap();
    // 3: shipped a version never seen (only another service runs it): never due.
    s.transition(ids[3], IssueState::Shipped, 1_500, "fix", Some("3.0.0"))
        .await
        .unwrap();
    s.record_version_seen("other-svc", "3.0.0", 1_600)
        .await
        .unwrap();
    // 4: verified, 5: regressed, 6: open — not shipped, never due.
    s.transition(ids[4], IssueState::Shipped, 1_100, "fix", None)
        .await
        .unwrap();
    s.transition(ids[4], IssueState::Verified, 1_200, "quiet", None)
        .await
        .unwrap();
    s.transition(ids[5], IssueState::Shipped, 1_100, "fix", None)
        .await
        .unwrap();
    s.transition(ids[5], IssueState::Regressed, 1_200, "recurred", None)
        .await
        .unwrap();

    let due = |now, limit| async move {
        s.due_for_verification(now, window, limit)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>()
    };
    assert!(due(12_499, 10).await.is_empty());
    assert_eq!(due(12_500, 10).await, vec![ids[1]]);
    assert_eq!(due(13_000, 10).await, vec![ids[1], ids[0]], "oldest first");
    assert_eq!(due(14_000, 10).await, vec![ids[1], ids[0], ids[2]]);
    assert_eq!(due(i64::MAX, 10).await, vec![ids[1], ids[0], ids[2]]);
    assert_eq!(due(14_000, 2).await, vec![ids[1], ids[0]]);
    assert!(due(14_000, 0).await.is_empty());
    // The rows are whole issues.
    let got = s.due_for_verification(14_000, window, 1).await.unwrap();
    assert_eq!(got[0], s.get_issue(ids[1], 0).await.unwrap().unwrap().issue);
    // Once 3.0.0 runs on this service, issue 3 is due a window after that.
    s.record_version_seen("agent-svc", "3.0.0", 5_000)
        .await
        .unwrap();
    assert_eq!(due(15_000, 10).await, vec![ids[1], ids[0], ids[2], ids[3]]);
    // Verified issues leave the list.
    s.transition(ids[1], IssueState::Verified, 15_000, "quiet", None)
        .await
        .unwrap();
    assert_eq!(due(15_000, 10).await, vec![ids[0], ids[2], ids[3]]);
    assert!(matches!(
        s.due_for_verification(15_000, -1, 10).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn ignore_from_any_state_is_final(h: Harness) {
    let s = &h.store;
    let hook = sinks(&["webhook"]);
    let paths: [&[IssueState]; 5] = [
        &[],
        &[IssueState::Dispatched],
        &[IssueState::Shipped],
        &[IssueState::Shipped, IssueState::Verified],
        &[IssueState::Shipped, IssueState::Regressed],
    ];
    for (n, path) in paths.iter().enumerate() {
        let n = n as u64 + 1;
        let id = s
            .record_failure(&record(&format!("fp-ign-{n}"), n, 1_000), &hook, 1_000)
            .await
            .unwrap()
            .issue_id;
        for (k, to) in path.iter().enumerate() {
            s.transition(id, *to, 2_000 + k as i64, "step", Some("1.0.0"))
                .await
                .unwrap();
        }
        let before = s.get_issue(id, 0).await.unwrap().unwrap().issue;
        let t = s
            .transition(id, IssueState::Ignored, 3_000, "noise", None)
            .await
            .unwrap();
        assert_eq!(
            (t.from_state, t.to_state, t.cycle),
            (Some(before.state), IssueState::Ignored, before.cycle),
            "{path:?}"
        );
        // Nothing but the state changes.
        let ignored = s.get_issue(id, 0).await.unwrap().unwrap().issue;
        assert_eq!(
            ignored,
            store::Issue {
                state: IssueState::Ignored,
                ..before.clone()
            }
        );
        // Ignored is final: nothing leads out, and a recurrence only counts.
        for to in IssueState::ALL {
            assert!(
                matches!(
                    s.transition(id, to, 3_500, "nope", None).await,
                    Err(StoreError::InvalidTransition {
                        from: IssueState::Ignored,
                        ..
                    })
                ),
                "ignored -> {to}"
            );
        }
        let o = s
            .record_failure(
                &record(&format!("fp-ign-{n}"), 100 + n, 5_000),
                &hook,
                5_000,
            )
            .await
            .unwrap();
        assert_eq!(
            (o.state, o.regressed, o.dispatches_enqueued),
            (IssueState::Ignored, false, 0)
        );
    }
}

async fn counts_by_class_and_state(h: Harness) {
    let s = &h.store;
    assert!(s.count_issues().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for (n, class) in [
        (1, "logic_tool"),
        (2, "logic_tool"),
        (3, "logic_tool"),
        (4, "tone_brand"),
        (5, "data_quality"),
    ] {
        let mut r = record(&format!("fp-cnt-{n}"), n, 1_000);
        r.class = class.into();
        ids.push(
            s.record_failure(&r, &[], r.observed_at)
                .await
                .unwrap()
                .issue_id,
        );
        // Occurrences do not count twice.
        s.record_failure(&r, &[], r.observed_at).await.unwrap();
    }
    s.transition(ids[0], IssueState::Dispatched, 2_000, "d", None)
        .await
        .unwrap();
    s.transition(ids[1], IssueState::Ignored, 2_000, "i", None)
        .await
        .unwrap();
    s.transition(ids[3], IssueState::Shipped, 2_000, "s", None)
        .await
        .unwrap();
    let c = |class: &str, state, count| IssueCount {
        class: class.into(),
        state,
        count,
    };
    assert_eq!(
        s.count_issues().await.unwrap(),
        vec![
            c("data_quality", IssueState::Open, 1),
            c("logic_tool", IssueState::Dispatched, 1),
            c("logic_tool", IssueState::Ignored, 1),
            c("logic_tool", IssueState::Open, 1),
            c("tone_brand", IssueState::Shipped, 1),
        ]
    );
    // Large list limits work (and are capped).
    for limit in [100_000, u32::MAX] {
        let all = s
            .list_issues(&IssueFilter {
                limit: Some(limit),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 5);
    }
}

async fn pending_and_given_up_dispatches(h: Harness) {
    let s = &h.store;
    let three = sinks(&["a", "b", "c"]);
    let id = s
        .record_failure(&record("fp-p", 1, 1_000), &three, 1_000)
        .await
        .unwrap()
        .issue_id;
    assert_eq!(s.pending_dispatches().await.unwrap(), 3);
    let claimed = s.claim_due_dispatches(1_000, 10, 500).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(
        s.pending_dispatches().await.unwrap(),
        3,
        "claimed but undelivered is still pending"
    );
    let (a, b) = (claimed[0].id, claimed[1].id);
    s.mark_delivered(a, 1_100).await.unwrap();
    s.mark_failed(b, GIVEN_UP, "gave up after 10 attempts")
        .await
        .unwrap();
    assert_eq!(s.pending_dispatches().await.unwrap(), 1);
    let ds = s.list_dispatches(id).await.unwrap();
    let given_up = ds.iter().find(|d| d.id == b).unwrap();
    assert_eq!(given_up.next_attempt_at, i64::MAX);
    assert_eq!(
        given_up.last_error.as_deref(),
        Some("gave up after 10 attempts")
    );
    assert_eq!(given_up.delivered_at, None);
    // Never claimed again, even at the end of time; the third is, once its lease ran out.
    let c = s.claim_due_dispatches(i64::MAX, 10, 1_000).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].id, claimed[2].id);
    assert!(
        c[0].next_attempt_at < i64::MAX,
        "a lease never looks given up"
    );
    assert_eq!(s.pending_dispatches().await.unwrap(), 1);
    s.mark_delivered(c[0].id, 2_000).await.unwrap();
    assert_eq!(s.pending_dispatches().await.unwrap(), 0);
    // Only the given-up row is undelivered, and it stays unclaimed.
    assert!(s
        .claim_due_dispatches(i64::MAX, 10, 1_000)
        .await
        .unwrap()
        .is_empty());
    let still = s.list_dispatches(id).await.unwrap();
    let given_up = still.iter().find(|d| d.id == b).unwrap();
    assert_eq!((given_up.attempts, given_up.delivered_at), (1, None));
}

async fn migration_2_backfills(h: Harness) {
    // Rebuild the database as schema version 1 with data, then let the store migrate it.
    let v1 = if h.store.backend() == "sqlite" {
        include_str!("../src/remediation/store/migrations/sqlite/0001_init.sql")
    } else {
        include_str!("../src/remediation/store/migrations/postgres/0001_init.sql")
    };
    exec_raw(
        &h.url,
        "DROP TABLE judgements; DROP TABLE labels; DROP TABLE models;
         DROP TABLE outbox; DROP TABLE transitions; DROP TABLE occurrences;
         DROP TABLE issue_seen; DROP TABLE IF EXISTS issue_samples; DROP TABLE service_versions;
         DROP TABLE issues; DROP TABLE schema_migrations;",
    )
    .await
    .unwrap();
    exec_raw(&h.url, v1).await.unwrap();
    exec_raw(
        &h.url,
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
         INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0);
         INSERT INTO issues (fingerprint, class, source, confidence, agent, service, remediation,
                             state, cycle, occurrences, first_seen, last_seen)
         VALUES ('fp-v1-a', 'logic_tool', 'rule', 0.9, 'planner', 'svc', 'tool_fix',
                 'open', 1, 2, 1000, 3000),
                ('fp-v1-b', 'logic_tool', 'rule', 0.9, 'planner', 'svc', 'tool_fix',
                 'regressed', 2, 2, 1500, 5000);
         INSERT INTO transitions (issue_id, from_state, to_state, cycle, at, reason)
         VALUES ((SELECT id FROM issues WHERE fingerprint = 'fp-v1-b'),
                 'shipped', 'regressed', 2, 5000, 'recurred');
         INSERT INTO occurrences (issue_id, trace_id, root_span_id, class, source, confidence,
                                  agent, service, service_version, observed_at, signal)
         VALUES ((SELECT id FROM issues WHERE fingerprint = 'fp-v1-a'), 't1', 's1', 'logic_tool',
                 'rule', 0.9, 'planner', 'svc', '1.0.0', 3000, '{}'),
                ((SELECT id FROM issues WHERE fingerprint = 'fp-v1-a'), 't2', 's2', 'logic_tool',
                 'rule', 0.9, 'planner', 'svc', '1.0.0', 1000, '{}'),
                ((SELECT id FROM issues WHERE fingerprint = 'fp-v1-b'), 't3', 's3', 'logic_tool',
                 'rule', 0.9, 'planner', 'svc', 'abc1234', 5000, '{}'),
                ((SELECT id FROM issues WHERE fingerprint = 'fp-v1-b'), 't4', 's4', 'logic_tool',
                 'rule', 0.9, 'planner', 'svc', NULL, 1500, '{}');",
    )
    .await
    .unwrap();
    let s = store::open(&h.url).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 5);
    let issues = s
        .list_issues(&IssueFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.fingerprint, i.cycle, i.cycle_started_at))
        .collect::<Vec<_>>();
    assert_eq!(
        issues,
        vec![
            ("fp-v1-b".to_string(), 2, 5_000),
            ("fp-v1-a".to_string(), 1, 1_000)
        ]
    );
    assert_eq!(
        s.version_first_seen("svc", "1.0.0").await.unwrap(),
        Some(1_000)
    );
    assert_eq!(
        s.version_first_seen("svc", "abc1234").await.unwrap(),
        Some(5_000)
    );
    // The migrated store works as usual.
    let o = s
        .record_failure(&record("fp-v1-c", 9, 9_000), &sinks(&["webhook"]), 9_000)
        .await
        .unwrap();
    assert!(o.new_issue && o.dispatches_enqueued == 1);
}

/// `queued(..)` that does not wait for a person: a plain failure that carries its detail (kept
/// when it opens its issue).
fn with_detail(fingerprint: &str, n: u64, observed_at: i64) -> FailureRecord {
    FailureRecord {
        queue_reason: None,
        ..queued(fingerprint, n, observed_at, QueueReason::Fallback)
    }
}

async fn prune_keeps_what_is_still_needed(h: Harness) {
    let s = &h.store;
    let put = |r: FailureRecord| async move {
        s.record_failure(&r, &none(), r.observed_at).await.unwrap()
    };
    // Issue A: its first failure keeps the detail (the newest such row of A, kept); the ones
    // after it keep none (a4 carries one but does not open the issue), so they go once
    // observed before the cutoff; the one after the cutoff stays.
    let a1 = put(with_detail("fp-p-a", 1, 1_000)).await;
    let a2 = put(record("fp-p-a", 2, 2_000)).await;
    let a3 = put(record("fp-p-a", 3, 3_000)).await;
    let a4 = put(with_detail("fp-p-a", 4, 4_000)).await;
    let a5 = put(record("fp-p-a", 5, 9_000)).await;
    // Issue B: waiting for a person, kept however old.
    let b1 = put(queued("fp-p-b", 6, 1_500, QueueReason::Fallback)).await;
    // Issue C: its first failure kept the detail, a later one waited and a person labelled it:
    // the label keeps that one, and the first is no longer the newest with a detail.
    let c1 = put(with_detail("fp-p-c", 7, 1_100)).await;
    let c2 = put(queued("fp-p-c", 8, 1_200, QueueReason::LowConfidence)).await;
    s.relabel(&relabel(
        c2.failure_id,
        "tone_brand",
        Source::Human,
        &[],
        1_300,
    ))
    .await
    .unwrap();
    // Issue D: a judgement keeps its waiting failure after a person resolved the issue.
    let d1 = put(queued("fp-p-d", 9, 1_400, QueueReason::LowConfidence)).await;
    let d2 = put(queued("fp-p-d", 10, 1_450, QueueReason::LowConfidence)).await;
    s.record_judgement(&JudgementRecord {
        failure_id: d1.failure_id,
        at: 1_460,
        outcome: "answered".into(),
        class: Some("coverage_gap".into()),
        confidence: Some(0.5),
        rationale: None,
        raw: None,
        model: None,
        latency_ms: None,
        tokens: None,
        applied: false,
    })
    .await
    .unwrap();
    s.relabel(&relabel(
        d2.failure_id,
        "coverage_gap",
        Source::Human,
        &[],
        1_470,
    ))
    .await
    .unwrap();

    // Oldest first, at most `limit`.
    assert_eq!(s.prune_failures(5_000, 1).await.unwrap(), 1);
    assert!(s.get_failure(c1.failure_id).await.unwrap().is_none());
    assert_eq!(s.prune_failures(5_000, 100).await.unwrap(), 3);
    assert_eq!(s.prune_failures(5_000, 100).await.unwrap(), 0);
    for gone in [&a2, &a3, &a4] {
        assert!(s.get_failure(gone.failure_id).await.unwrap().is_none());
    }
    for kept in [&a1, &a5, &b1, &c2, &d1, &d2] {
        assert!(
            s.get_failure(kept.failure_id).await.unwrap().is_some(),
            "failure {} was kept",
            kept.failure_id
        );
    }
    // a4 kept no detail (it did not open its issue), so a1 is still A's newest one.
    // Issues keep their counts; the queue and the labels are untouched.
    let a = s.get_issue(a1.issue_id, 10).await.unwrap().unwrap();
    assert_eq!(a.issue.occurrences, 5);
    assert_eq!(a.recent_occurrences.len(), 2);
    let queue = s.queue(10).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].failure.id, b1.failure_id);
    assert_eq!(s.labels_since(0, 100).await.unwrap().len(), 2);
    let d = s.get_failure(d1.failure_id).await.unwrap().unwrap();
    assert_eq!(d.judgements.len(), 1);

    // A later cutoff takes what was after the first, never the kept ones.
    assert_eq!(s.prune_failures(10_000, 100).await.unwrap(), 1);
    assert!(s.get_failure(a5.failure_id).await.unwrap().is_none());
    assert_eq!(s.prune_failures(i64::MAX, 100).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------------------------

async fn sqlite_harness() -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    // A parent directory that does not exist yet: open() creates it.
    let url = format!("sqlite://{}/triage-data/triage.db", dir.path().display());
    let store = store::open(&url).await.unwrap();
    (dir, Harness { store, url })
}

/// Runs `test` against a fresh schema of the test PostgreSQL, or prints SKIPPED when there is none.
async fn with_postgres<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    static N: AtomicU64 = AtomicU64::new(0);
    let Some((admin, base)) = connect_or_skip(name).await else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = store::open(&url).await.unwrap();
    // Run on its own task so the schema is dropped even when the test fails.
    let result = tokio::spawn(test(Harness { store, url })).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn batches_record_like_single_records(h: Harness) {
    let s = &h.store;
    let sinks: std::sync::Arc<[String]> = ["jsonl".to_string()].into();
    let batch = vec![
        (record("fp-batch-a", 1, 1_000), sinks.clone()),
        (record("fp-batch-a", 2, 1_100), sinks.clone()),
        (record("fp-batch-b", 3, 1_200), sinks.clone()),
    ];
    let out = s.record_failures(batch.into(), 1_500).await.unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].new_issue && !out[1].new_issue && out[2].new_issue);
    assert_eq!(out[0].issue_id, out[1].issue_id);
    assert_eq!(out[1].occurrences, 2);
    assert_eq!(
        out.iter()
            .map(|o| o.dispatches_enqueued)
            .collect::<Vec<_>>(),
        [1, 0, 1],
        "one dispatch per issue cycle, not per occurrence"
    );
    let d = s.get_issue(out[0].issue_id, 10).await.unwrap().unwrap();
    assert_eq!(d.recent_occurrences.len(), 2);
    assert_eq!(d.issue.classified_at, Some(1_500));
    // An invalid record refuses the whole batch before anything is written.
    let mut bad = record("fp-batch-c", 4, 2_000);
    bad.trace_id = "nope".into();
    let err = s
        .record_failures(
            vec![
                (record("fp-batch-d", 5, 2_000), [].into()),
                (bad, [].into()),
            ]
            .into(),
            2_000,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(s
        .list_issues(&IssueFilter::default())
        .await
        .unwrap()
        .iter()
        .all(|i| i.fingerprint != "fp-batch-d"));
}

/// Several failures of one fingerprint in one batch (SQLite folds them into one issue update):
/// every outcome, the issue's counts and times, and its regression stay as if recorded one by one.
async fn batches_keep_recurrences_exact(h: Harness) {
    let s = &h.store;
    let sinks = sinks(&["jsonl"]);
    let first = s
        .record_failure(&record("fp-fold-a", 1, 1_000), &sinks, 1_000)
        .await
        .unwrap();
    let a = first.issue_id;
    s.transition(a, IssueState::Shipped, 2_000, "fix", Some("1.0.0"))
        .await
        .unwrap();
    let batch = vec![
        (record("fp-fold-a", 2, 1_500), sinks.clone()), // before the ship: no regression
        (record("fp-fold-b", 3, 3_000), sinks.clone()), // a new issue
        (record("fp-fold-a", 4, 3_100), sinks.clone()), // regresses
        (record("fp-fold-b", 5, 2_500), sinks.clone()),
        (record("fp-fold-a", 6, 3_200), sinks.clone()),
        (record("fp-fold-b", 7, 3_500), sinks.clone()),
        (record("fp-fold-a", 8, 3_050), sinks.clone()),
    ];
    let out = s.record_failures(to_batch(batch), 5_000).await.unwrap();
    let b = out[1].issue_id;
    let got: Vec<(i64, i64, IssueState, i64, bool, bool, u32)> = out
        .iter()
        .map(|o| {
            (
                o.issue_id,
                o.occurrences,
                o.state,
                o.cycle,
                o.new_issue,
                o.regressed,
                o.dispatches_enqueued,
            )
        })
        .collect();
    use IssueState::*;
    assert_eq!(
        got,
        vec![
            (a, 2, Shipped, 1, false, false, 0),
            (b, 1, Open, 1, true, false, 1),
            (a, 3, Regressed, 2, false, true, 1),
            (b, 2, Open, 1, false, false, 0),
            (a, 4, Regressed, 2, false, false, 0),
            (b, 3, Open, 1, false, false, 0),
            (a, 5, Regressed, 2, false, false, 0),
        ]
    );
    let ids: HashSet<i64> = out.iter().map(|o| o.failure_id).collect();
    assert_eq!(ids.len(), out.len(), "one stored failure each");
    let da = s.get_issue(a, 10).await.unwrap().unwrap();
    assert_eq!(
        (
            da.issue.occurrences,
            da.issue.first_seen,
            da.issue.last_seen
        ),
        (5, 1_000, 3_200)
    );
    assert_eq!((da.issue.state, da.issue.cycle), (Regressed, 2));
    assert_eq!(da.issue.cycle_started_at, 3_100, "the regressing failure");
    assert_eq!(da.recent_occurrences.len(), 5);
    let db = s.get_issue(b, 10).await.unwrap().unwrap();
    assert_eq!(
        (
            db.issue.occurrences,
            db.issue.first_seen,
            db.issue.last_seen
        ),
        (3, 2_500, 3_500)
    );
    assert_eq!(
        db.issue.cycle_started_at, 2_500,
        "cycle 1 starts at the earliest"
    );
    assert_eq!(db.recent_occurrences.len(), 3);
    assert_eq!(db.sample_trace_ids.len(), 3);
}

/// Recurrences folded in one batch keep what each would have stored on its own: every agent,
/// service and version seen, a version's first sighting, and a queued failure's detail.
async fn batches_keep_what_each_recurrence_saw(h: Harness) {
    let s = &h.store;
    let none: Vec<String> = Vec::new();
    let other_agent = FailureRecord {
        agent: "router".into(),
        service: "router-svc".into(),
        ..record_on("fp-seen", 2, 2_000, Some("1.1.0"))
    };
    let batch = vec![
        (record_on("fp-seen", 1, 1_000, Some("1.0.0")), none.clone()),
        (other_agent, none.clone()),
        (record_on("fp-seen", 3, 1_500, Some("1.1.0")), none.clone()),
        (
            queued("fp-seen", 4, 2_500, QueueReason::Audit),
            none.clone(),
        ),
        (record_on("fp-seen", 5, 3_000, None), none.clone()),
    ];
    let out = s.record_failures(to_batch(batch), 4_000).await.unwrap();
    let d = s.get_issue(out[0].issue_id, 10).await.unwrap().unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(d.agents.clone()), ["planner", "router"]);
    assert_eq!(sorted(d.services.clone()), ["agent-svc", "router-svc"]);
    assert_eq!(sorted(d.versions.clone()), ["1.0.0", "1.1.0"]);
    assert_eq!(d.issue.occurrences, 5);
    assert_eq!((d.issue.first_seen, d.issue.last_seen), (1_000, 3_000));
    // Each version is first seen with the first failure on it, in batch order.
    assert_eq!(
        s.version_first_seen("router-svc", "1.1.0").await.unwrap(),
        Some(2_000)
    );
    assert_eq!(
        s.version_first_seen("agent-svc", "1.1.0").await.unwrap(),
        Some(1_500)
    );
    // The audited recurrence waits for a person with its detail; the others keep none.
    let q = s.queue(10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].failure.id, out[3].failure_id);
    let f = s.get_failure(out[3].failure_id).await.unwrap().unwrap();
    assert!(f.detail.is_some(), "the queued failure keeps its detail");
    let f = s.get_failure(out[4].failure_id).await.unwrap().unwrap();
    assert!(f.detail.is_none());
    let ids: Vec<i64> = out.iter().map(|o| o.failure_id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids in batch order: {ids:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Human triage: the queue, relabels, labels, the model's snapshot, the judge's answers.
// ---------------------------------------------------------------------------------------------

async fn queue_holds_one_entry_per_undecided_issue(h: Harness) {
    let s = &h.store;
    let none: Vec<String> = Vec::new();
    let a1 = put_queued(s, "fp-q-a", 1, 1_000, QueueReason::Fallback).await;
    let a2 = put_queued(s, "fp-q-a", 2, 2_000, QueueReason::Fallback).await;
    let b = put_queued(s, "fp-q-b", 3, 3_000, QueueReason::Audit).await;
    // Decided confidently and not sampled: not queued; a recurrence keeps no detail.
    s.record_failure(&record("fp-q-c", 4, 4_000), &none, 4_000)
        .await
        .unwrap();
    let c2 = s
        .record_failure(&record("fp-q-c", 5, 5_000), &none, 5_000)
        .await
        .unwrap();
    assert_ne!(a1.failure_id, a2.failure_id);
    let q = s.queue(100).await.unwrap();
    let ids: Vec<i64> = q.iter().map(|i| i.failure.id).collect();
    assert_eq!(
        ids,
        vec![a2.failure_id, b.failure_id],
        "newest per issue, oldest first"
    );
    assert_eq!(q[0].occurrences, 2);
    assert_eq!(q[0].failure.queue_reason, Some(QueueReason::Fallback));
    assert_eq!(q[1].failure.queue_reason, Some(QueueReason::Audit));
    assert_eq!(s.queue(1).await.unwrap().len(), 1, "limit");

    let f = s.get_failure(a2.failure_id).await.unwrap().unwrap();
    assert_eq!(
        f.features,
        vec!["span:tool".to_string(), "fp:fp-q-a".into()]
    );
    let detail: FailureDetail = serde_json::from_value(f.detail.unwrap()).unwrap();
    assert_eq!(detail.root.attributes[0].1, "search");
    assert!(f.judgements.is_empty());
    let plain = s.get_failure(c2.failure_id).await.unwrap().unwrap();
    assert!(
        plain.detail.is_none() && plain.features.is_empty(),
        "{plain:?}"
    );
    assert_eq!(plain.failure.rule.as_deref(), Some("tool-timeout"));
    assert!(s.get_failure(999_999).await.unwrap().is_none());
}

async fn human_label_reroutes_resolves_and_sticks(h: Harness) {
    let s = &h.store;
    let first = s
        .record_failure(
            &queued("fp-l", 1, 1_000, QueueReason::Fallback),
            &sinks(&["jsonl"]),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(first.dispatches_enqueued, 1);
    let out = s
        .relabel(&relabel(
            first.failure_id,
            "tone_brand",
            Source::Human,
            &["jsonl", "slack"],
            5_000,
        ))
        .await
        .unwrap();
    assert!(out.applied && out.rerouted);
    assert_eq!(
        (out.from_class.as_str(), out.from_source),
        ("logic_tool", Source::Rule)
    );
    assert_eq!((out.superseded, out.dispatches_enqueued), (1, 2));
    assert_eq!(out.issue.class, "tone_brand");
    assert_eq!(out.issue.source, Source::Human);
    assert_eq!(out.issue.confidence, 1.0);
    assert_eq!(out.issue.remediation, "tone_brand_path");
    let label = out.label.expect("a human label is stored");
    assert_eq!(
        label.features,
        vec!["span:tool".to_string(), "fp:fp-l".into()]
    );
    assert_eq!(
        (label.from_class.as_str(), label.to_class.as_str()),
        ("logic_tool", "tone_brand")
    );

    let ds = s.list_dispatches(first.issue_id).await.unwrap();
    let keys: Vec<&str> = ds.iter().map(|d| d.idempotency_key.as_str()).collect();
    let id = first.issue_id;
    assert_eq!(
        keys,
        vec![
            format!("{id}:1:jsonl"),
            format!("{id}:1.1:jsonl"),
            format!("{id}:1.1:slack")
        ]
    );
    assert_eq!(ds[0].superseded_at, Some(5_000));
    assert_eq!(
        ds[0].next_attempt_at, GIVEN_UP,
        "a superseded dispatch is never delivered"
    );
    assert_eq!(ds[1].payload["class"], "tone_brand");
    assert_eq!(s.pending_dispatches().await.unwrap(), 2);
    let claimed = s.claim_due_dispatches(10_000, 10, 1_000).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|d| d.superseded_at.is_none()));
    assert!(
        s.queue(10).await.unwrap().is_empty(),
        "labelled issues leave the queue"
    );
    let resolved = s.get_failure(first.failure_id).await.unwrap().unwrap();
    assert_eq!(resolved.failure.resolved_by.as_deref(), Some("human"));

    // A later failure (even one the hot path still calls the fallback) keeps the person's class.
    let again = put_queued(s, "fp-l", 2, 6_000, QueueReason::Fallback).await;
    assert_eq!(again.issue_source, Source::Human);
    let issue = s.get_issue(first.issue_id, 0).await.unwrap().unwrap().issue;
    assert_eq!((issue.class.as_str(), issue.occurrences), ("tone_brand", 2));
    assert!(s.queue(10).await.unwrap().is_empty());

    // The same class again is a confirmation: nothing re-routed, a transition kept.
    let same = s
        .relabel(&relabel(
            again.failure_id,
            "tone_brand",
            Source::Human,
            &["jsonl"],
            7_000,
        ))
        .await
        .unwrap();
    assert!(same.applied && !same.rerouted);
    assert_eq!(same.dispatches_enqueued, 0);
    let labels = s.labels_since(0, 100).await.unwrap();
    assert_eq!(labels.len(), 2);
    assert_eq!(s.labels_since(labels[0].id, 100).await.unwrap().len(), 1);
    let t = s
        .get_issue(first.issue_id, 0)
        .await
        .unwrap()
        .unwrap()
        .transitions;
    let reasons: Vec<&str> = t.iter().map(|t| t.reason.as_str()).collect();
    assert!(
        reasons[1].starts_with("re-routed logic_tool → tone_brand by human"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("class tone_brand confirmed by human"),
        "{reasons:?}"
    );
}

fn none() -> Vec<String> {
    Vec::new()
}

/// Records `queued(..)` with no sinks, recorded when it was observed.
async fn put_queued(
    s: &Arc<dyn Store>,
    fingerprint: &str,
    n: u64,
    at: i64,
    reason: QueueReason,
) -> store::RecordOutcome {
    s.record_failure(&queued(fingerprint, n, at, reason), &none(), at)
        .await
        .unwrap()
}

async fn relabel_after_ship_does_not_reroute(h: Harness) {
    let s = &h.store;
    let r = s
        .record_failure(
            &queued("fp-ls", 1, 1_000, QueueReason::LowConfidence),
            &sinks(&["jsonl"]),
            1_000,
        )
        .await
        .unwrap();
    s.transition(
        r.issue_id,
        IssueState::Shipped,
        2_000,
        "shipped",
        Some("2.0.0"),
    )
    .await
    .unwrap();
    let out = s
        .relabel(&relabel(
            r.failure_id,
            "data_quality",
            Source::Human,
            &["jsonl"],
            3_000,
        ))
        .await
        .unwrap();
    assert!(out.applied && !out.rerouted);
    assert_eq!(out.issue.class, "data_quality");
    assert_eq!(out.issue.state, IssueState::Shipped);
    assert_eq!(s.list_dispatches(r.issue_id).await.unwrap().len(), 1);
}

async fn judge_never_overrides_a_person(h: Harness) {
    let s = &h.store;
    let a = put_queued(s, "fp-j-a", 1, 1_000, QueueReason::LowConfidence).await;
    let b = put_queued(s, "fp-j-b", 2, 1_000, QueueReason::Fallback).await;
    s.relabel(&relabel(
        a.failure_id,
        "tone_brand",
        Source::Human,
        &[],
        2_000,
    ))
    .await
    .unwrap();
    let refused = s
        .relabel(&relabel(
            a.failure_id,
            "coverage_gap",
            Source::Llm,
            &[],
            3_000,
        ))
        .await
        .unwrap();
    assert!(!refused.applied);
    assert_eq!(refused.issue.class, "tone_brand");
    let judged = s
        .relabel(&relabel(
            b.failure_id,
            "coverage_gap",
            Source::Llm,
            &[],
            3_000,
        ))
        .await
        .unwrap();
    assert!(judged.applied && judged.label.is_none());
    assert_eq!(judged.issue.source, Source::Llm);
    // Decided by the judge: out of the queue but for audit samples.
    assert!(s.queue(10).await.unwrap().is_empty());
    let j = JudgementRecord {
        failure_id: b.failure_id,
        at: 3_000,
        outcome: "answered".into(),
        class: Some("coverage_gap".into()),
        confidence: Some(0.8),
        rationale: Some("the agent had no tool for this".into()),
        raw: Some("{\"class\":\"coverage_gap\"}".into()),
        model: Some("qwen".into()),
        latency_ms: Some(120),
        tokens: Some(300),
        applied: true,
    };
    s.record_judgement(&j).await.unwrap();
    let f = s.get_failure(b.failure_id).await.unwrap().unwrap();
    assert_eq!(f.judgements, vec![j.clone()]);
    assert_eq!(f.failure.resolved_by.as_deref(), Some("llm"));
    let missing = JudgementRecord {
        failure_id: 987_654,
        ..j
    };
    assert!(matches!(
        s.record_judgement(&missing).await,
        Err(StoreError::FailureNotFound(987_654))
    ));
}

async fn relabel_refuses_bad_requests(h: Harness) {
    let s = &h.store;
    let r = put_queued(s, "fp-bad", 1, 1_000, QueueReason::Fallback).await;
    assert!(matches!(
        s.relabel(&relabel(424_242, "tone_brand", Source::Human, &[], 2_000))
            .await,
        Err(StoreError::FailureNotFound(424_242))
    ));
    for bad in [
        Relabel {
            source: Source::Rule,
            ..relabel(r.failure_id, "x", Source::Human, &[], 2_000)
        },
        Relabel {
            confidence: 1.5,
            ..relabel(r.failure_id, "x", Source::Human, &[], 2_000)
        },
        Relabel {
            class: String::new(),
            ..relabel(r.failure_id, "x", Source::Human, &[], 2_000)
        },
        Relabel {
            note: "n".repeat(5_000),
            ..relabel(r.failure_id, "x", Source::Human, &[], 2_000)
        },
    ] {
        assert!(
            matches!(s.relabel(&bad).await, Err(StoreError::Invalid(_))),
            "{bad:?}"
        );
    }
    let issue = s.get_issue(r.issue_id, 0).await.unwrap().unwrap().issue;
    assert_eq!(issue.class, "logic_tool", "nothing changed");
}

async fn model_snapshot_keeps_the_newest(h: Harness) {
    let s = &h.store;
    assert!(s.load_model("default").await.unwrap().is_none());
    s.save_model("default", 3, &json!({"labels": 3}), 1_000)
        .await
        .unwrap();
    s.save_model("default", 2, &json!({"labels": 2}), 2_000)
        .await
        .unwrap();
    assert_eq!(
        s.load_model("default").await.unwrap(),
        Some((3, json!({"labels": 3})))
    );
    s.save_model("default", 5, &json!({"labels": 5}), 3_000)
        .await
        .unwrap();
    assert_eq!(s.load_model("default").await.unwrap().unwrap().0, 5);
}

async fn failure_counts_bucket_by_issue_class(h: Harness) {
    let s = &h.store;
    for (n, at) in [(1, 1_000), (2, 1_500), (3, 2_500)] {
        s.record_failure(&record("fp-c-a", n, at), &none(), at)
            .await
            .unwrap();
    }
    let b = put_queued(s, "fp-c-b", 4, 2_600, QueueReason::Fallback).await;
    s.record_failure(&record("fp-c-a", 5, 9_000), &none(), 9_000)
        .await
        .unwrap();
    s.relabel(&relabel(
        b.failure_id,
        "tone_brand",
        Source::Human,
        &[],
        3_000,
    ))
    .await
    .unwrap();
    let counts = s.failure_counts(1_000, 3_000, 1_000).await.unwrap();
    let got: Vec<(String, i64, i64)> = counts
        .into_iter()
        .map(|c| (c.class, c.bucket, c.count))
        .collect();
    assert_eq!(
        got,
        vec![
            ("logic_tool".into(), 0, 2),
            ("logic_tool".into(), 1, 1),
            ("tone_brand".into(), 1, 1),
        ]
    );
    for (from, to, step) in [(0, 0, 1), (0, 10, 0), (0, 100_000, 1)] {
        assert!(matches!(
            s.failure_counts(from, to, step).await,
            Err(StoreError::Invalid(_))
        ));
    }
}

/// Declares one `#[tokio::test]` per backend for each suite function.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_dir, h) = super::sqlite_harness().await;
                    super::$name(h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_postgres(stringify!($name), super::$name).await;
                }
            )*
        }
    };
}

suite!(
    upsert_counts_and_seen,
    concurrent_same_fingerprint,
    lifecycle_transitions,
    regression_bumps_cycle,
    outbox_idempotency_and_claims,
    migrations_applied_once,
    bad_input_is_refused,
    outbox_rows_come_with_the_record,
    failed_record_enqueues_nothing,
    ignored_issue_counts_but_never_dispatches,
    semver_regression_needs_shipped_or_later,
    sha_versions_ordered_by_first_seen,
    cycle_started_at_follows_cycles,
    new_transitions_to_shipped,
    timestamps_describe_the_current_cycle,
    late_or_old_failures_do_not_regress,
    reship_restarts_the_verify_clock,
    due_for_verification_in_one_query,
    ignore_from_any_state_is_final,
    counts_by_class_and_state,
    pending_and_given_up_dispatches,
    migration_2_backfills,
    batches_record_like_single_records,
    batches_keep_recurrences_exact,
    batches_keep_what_each_recurrence_saw,
    queue_holds_one_entry_per_undecided_issue,
    human_label_reroutes_resolves_and_sticks,
    relabel_after_ship_does_not_reroute,
    judge_never_overrides_a_person,
    relabel_refuses_bad_requests,
    model_snapshot_keeps_the_newest,
    failure_counts_bucket_by_issue_class,
    prune_keeps_what_is_still_needed,
);

#[tokio::test]
async fn open_refuses_bad_urls() {
    for (url, want) in [
        ("mysql://x/y", "expected sqlite://PATH or postgres://"),
        ("sqlite://", "no file path"),
        ("postgres://u:secret@[bad", "invalid storage URL"),
    ] {
        let err = match store::open(url).await {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{url}: {err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
    }
}

#[tokio::test]
async fn unreachable_postgres_says_where() {
    let err = match store::open("postgres://postgres@127.0.0.1:1/test?connect_timeout=2").await {
        Ok(_) => panic!("port 1 answered"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("connecting to PostgreSQL at postgres://postgres@127.0.0.1:1/test"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("refused"),
        "the cause is shown: {err}"
    );
}

/// Issue ids on SQLite follow its AUTOINCREMENT sequence as an upsert per recorded failure left
/// it: a recurrence recorded on its own (not folded into a batch) uses up an id, as the upsert's
/// conflicting insert did; a recurrence folded into its batch does not.
#[tokio::test]
async fn sqlite_issue_ids_follow_the_upsert_sequence() {
    let (_dir, h) = sqlite_harness().await;
    let s = &h.store;
    let none: Vec<String> = Vec::new();
    let mut ids = Vec::new();
    for (n, fp) in ["fp-a", "fp-a", "fp-b", "fp-a", "fp-c"].iter().enumerate() {
        let o = s
            .record_failure(&record(fp, n as u64 + 1, 1_000), &none, 1_000)
            .await
            .unwrap();
        ids.push(o.issue_id);
    }
    let batch = ["fp-d", "fp-a", "fp-a", "fp-b", "fp-e", "fp-d", "fp-f"]
        .iter()
        .enumerate()
        .map(|(n, fp)| (record(fp, n as u64 + 10, 2_000), none.clone()))
        .collect::<Vec<_>>();
    let out = s.record_failures(to_batch(batch), 2_000).await.unwrap();
    ids.extend(out.iter().map(|o| o.issue_id));
    let next = s
        .record_failure(&record("fp-g", 20, 3_000), &none, 3_000)
        .await
        .unwrap();
    ids.push(next.issue_id);
    assert_eq!(ids, [1, 1, 3, 1, 5, 6, 1, 1, 3, 9, 6, 10, 11]);
}
