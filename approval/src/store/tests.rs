//! The store's state machine driven with a clock of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::check::{binding_of, parse};
use serde_json::json;

fn input(args: serde_json::Value, approvers: &[&str], ttl: u64) -> CheckInput {
    let call = json!({"agent": "a1", "arguments": args, "chain": ["u1"],
                      "service": "tickets", "tool": "close"})
    .to_string();
    let body = json!({"binding": binding_of(&call), "call": call, "approvers": approvers,
                      "ttl_s": ttl, "decision_id": "d"});
    parse(body.to_string().as_bytes()).unwrap()
}

fn pending_id(a: &Answer) -> String {
    match a {
        Answer::Pending(p) => p.id.clone(),
        Answer::Used { pending, .. } | Answer::Expired { pending, .. } => pending.id.clone(),
        other => panic!("no pending in {other:?}"),
    }
}

#[test]
fn pending_then_approved_once_then_used_with_a_fresh_pending() {
    let mut s = Store::new(Limits::default());
    let i = input(json!({"id": 7}), &["alice"], 300);
    let a = s.check(&i, 1000, "r1".into()).unwrap();
    assert_eq!(
        a,
        Answer::Pending(Pending {
            id: "r1".into(),
            expires_at: 1300
        })
    );
    // Asked again before anyone decided: the same record.
    assert_eq!(s.check(&i, 1010, "r2".into()).unwrap(), a);
    assert_eq!(s.len(), 1);

    let d = s.decide("r1", "alice", true, 1100).unwrap();
    assert!(d.approved);
    assert_eq!(d.expires_at, 1400);

    let Answer::Approved(g) = s.check(&i, 1200, "r3".into()).unwrap() else {
        panic!("not approved")
    };
    assert_eq!(g.id, "r1");
    assert_eq!(g.approver, "alice");
    assert_eq!(g.approved_at, 1100);
    assert_eq!(g.exp, 1400);
    assert_eq!(g.binding, i.binding);

    // A replay: used, and a new pending in its place.
    let a = s.check(&i, 1201, "r4".into()).unwrap();
    assert_eq!(
        a,
        Answer::Used {
            id: "r1".into(),
            pending: Pending {
                id: "r4".into(),
                expires_at: 1501
            }
        }
    );
    assert_eq!(
        s.get("r1").unwrap().shown(1201),
        Shown::Used("alice".into())
    );
    // The old record cannot be approved again.
    assert_eq!(
        s.decide("r1", "alice", true, 1202),
        Err(DecideError::Closed(Shown::Used("alice".into())))
    );
    // The new one waits for its own approval.
    assert_eq!(pending_id(&s.check(&i, 1203, "r5".into()).unwrap()), "r4");
}

#[test]
fn another_binding_is_another_record() {
    let mut s = Store::new(Limits::default());
    let i = input(json!({"id": 7}), &["alice"], 300);
    let j = input(json!({"id": 8}), &["alice"], 300);
    s.check(&i, 0, "r1".into()).unwrap();
    s.decide("r1", "alice", true, 1).unwrap();
    // Edited arguments: not the approved call.
    assert_eq!(pending_id(&s.check(&j, 2, "r2".into()).unwrap()), "r2");
    assert!(matches!(
        s.check(&i, 3, "r3".into()),
        Ok(Answer::Approved(_))
    ));
}

#[test]
fn an_unanswered_pending_expires_after_its_ttl() {
    let mut s = Store::new(Limits::default());
    let i = input(json!({}), &["alice"], 60);
    s.check(&i, 100, "r1".into()).unwrap();
    assert_eq!(pending_id(&s.check(&i, 159, "x".into()).unwrap()), "r1");
    // Too late to approve it.
    assert_eq!(
        s.decide("r1", "alice", true, 160),
        Err(DecideError::Closed(Shown::Expired))
    );
    let a = s.check(&i, 160, "r2".into()).unwrap();
    assert_eq!(
        a,
        Answer::Expired {
            id: "r1".into(),
            pending: Pending {
                id: "r2".into(),
                expires_at: 220
            }
        }
    );
}

#[test]
fn an_approval_not_collected_in_time_expires() {
    let mut s = Store::new(Limits::default());
    let i = input(json!({}), &["alice"], 60);
    s.check(&i, 100, "r1".into()).unwrap();
    s.decide("r1", "alice", true, 150).unwrap();
    // Approved at 150: collectable until 210, past the pending's 160.
    assert!(matches!(
        s.check(&i, 209, "x".into()),
        Ok(Answer::Approved(_))
    ));
    let mut s = Store::new(Limits::default());
    s.check(&i, 100, "r1".into()).unwrap();
    s.decide("r1", "alice", true, 150).unwrap();
    assert!(matches!(
        s.check(&i, 210, "r2".into()),
        Ok(Answer::Expired { ref id, .. }) if id == "r1"
    ));
}

#[test]
fn a_rejection_holds_for_its_ttl() {
    let mut s = Store::new(Limits::default());
    let i = input(json!({}), &["alice", "bob"], 60);
    s.check(&i, 100, "r1".into()).unwrap();
    let d = s.decide("r1", "bob", false, 110).unwrap();
    assert!(!d.approved);
    let rejected = Answer::Rejected {
        id: "r1".into(),
        approver: "bob".into(),
    };
    assert_eq!(s.check(&i, 111, "x".into()).unwrap(), rejected);
    assert_eq!(s.check(&i, 169, "x".into()).unwrap(), rejected);
    // Alice cannot overturn it.
    assert_eq!(
        s.decide("r1", "alice", true, 120),
        Err(DecideError::Closed(Shown::Rejected("bob".into())))
    );
    assert!(matches!(
        s.check(&i, 170, "r2".into()),
        Ok(Answer::Expired { ref id, .. }) if id == "r1"
    ));
}

#[test]
fn only_a_named_approver_decides() {
    let mut s = Store::new(Limits::default());
    let i = input(json!({}), &["alice"], 60);
    s.check(&i, 100, "r1".into()).unwrap();
    assert_eq!(
        s.decide("r1", "mallory", true, 101),
        Err(DecideError::NotApprover)
    );
    assert_eq!(
        s.decide("r1", "Alice", true, 101),
        Err(DecideError::NotApprover)
    );
    assert_eq!(
        s.decide("nope", "alice", true, 101),
        Err(DecideError::NotFound)
    );
    // Still pending after the attempts.
    assert_eq!(pending_id(&s.check(&i, 102, "x".into()).unwrap()), "r1");
    // A non-approver learns nothing of the state either.
    s.decide("r1", "alice", false, 103).unwrap();
    assert_eq!(
        s.decide("r1", "mallory", true, 104),
        Err(DecideError::NotApprover)
    );
}

#[test]
fn records_are_bounded_and_the_oldest_dead_go_first() {
    let mut s = Store::new(Limits {
        max_records: 3,
        max_bytes: 1 << 20,
        ..Limits::default()
    });
    let calls: Vec<CheckInput> = (0..5)
        .map(|n| input(json!({ "n": n }), &["alice"], 10))
        .collect();
    for (n, c) in calls.iter().take(3).enumerate() {
        s.check(c, n as u64, format!("r{n}")).unwrap();
    }
    // Three live records: no room for a fourth.
    assert_eq!(s.check(&calls[3], 5, "r3".into()), Err(Full));
    assert_eq!(s.len(), 3);
    // r0 lapses at 10, r1 at 11: at 11 both are dead, r0 (older) goes.
    assert!(s.check(&calls[3], 11, "r3".into()).is_ok());
    assert!(s.get("r0").is_none());
    assert!(s.get("r1").is_some());
    assert!(s.check(&calls[4], 11, "r4".into()).is_ok());
    assert!(s.get("r1").is_none());
    assert_eq!(s.len(), 3);
    // A forgotten record is a fresh pending for its binding, never a pass.
    assert_eq!(
        pending_id(&s.check(&calls[0], 12, "r5".into()).unwrap()),
        "r5"
    );
}

#[test]
fn a_used_record_is_evicted_before_a_live_one() {
    let mut s = Store::new(Limits {
        max_records: 2,
        max_bytes: 1 << 20,
        ..Limits::default()
    });
    let a = input(json!({"a": 1}), &["alice"], 100);
    let b = input(json!({"b": 1}), &["alice"], 100);
    s.check(&a, 0, "ra".into()).unwrap();
    s.check(&b, 1, "rb".into()).unwrap();
    s.decide("rb", "alice", true, 2).unwrap();
    assert!(matches!(
        s.check(&b, 3, "x".into()),
        Ok(Answer::Approved(_))
    ));
    // The replay needs a new record: the used one makes room, not `ra`.
    assert!(matches!(
        s.check(&b, 4, "rb2".into()),
        Ok(Answer::Used { .. })
    ));
    assert!(s.get("ra").is_some());
    assert!(s.get("rb").is_none());
}

#[test]
fn bytes_are_bounded_too() {
    let i = input(json!({"x": "y".repeat(100)}), &["alice"], 10);
    let mut s = Store::new(Limits {
        max_records: 100,
        max_bytes: i.size,
        ..Limits::default()
    });
    s.check(&i, 0, "r1".into()).unwrap();
    let j = input(json!({"x": "z".repeat(100)}), &["alice"], 10);
    assert_eq!(s.check(&j, 1, "r2".into()), Err(Full));
    let mut tiny = Store::new(Limits {
        max_records: 100,
        max_bytes: 10,
        ..Limits::default()
    });
    assert_eq!(tiny.check(&i, 0, "r1".into()), Err(Full));
}

#[test]
fn one_agent_flooding_pending_approvals_cannot_lock_out_the_others() {
    // Each ask with new arguments opens a record that lives up to a day:
    // one agent (whose own calls the approvers may ignore) must not fill
    // the store and so refuse every other agent's approvals.
    let mut s = Store::new(Limits {
        max_records: 10,
        max_bytes: 1 << 20,
        max_per_agent: 3,
    });
    let by = |agent: &str, n: u64| {
        let call = json!({"agent": agent, "arguments": {"n": n}, "chain": [],
                          "service": "tickets", "tool": "close"})
        .to_string();
        let body = json!({"binding": binding_of(&call), "call": call, "approvers": ["alice"],
                          "ttl_s": 100, "decision_id": "d"});
        parse(body.to_string().as_bytes()).unwrap()
    };
    for n in 0..3 {
        s.check(&by("flood", n), 1000, format!("f{n}")).unwrap();
    }
    assert_eq!(s.check(&by("flood", 3), 1000, "f3".into()), Err(Full));
    // Asking again about one it holds still answers.
    assert!(matches!(
        s.check(&by("flood", 0), 1001, "x".into()),
        Ok(Answer::Pending(_))
    ));
    for n in 0..3 {
        let a = s.check(&by("other", n), 1000, format!("o{n}")).unwrap();
        assert!(matches!(a, Answer::Pending(_)), "{a:?}");
    }
    // Once its records lapse, the agent may ask again.
    assert!(s.check(&by("flood", 3), 1100, "f3".into()).is_ok());
}
