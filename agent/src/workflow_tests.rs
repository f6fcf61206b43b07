#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use serde_json::json;

const SUPPORT: &str = include_str!("../../examples/workflows/support.yaml");

fn err(yaml: &str) -> String {
    Workflow::parse(yaml).unwrap_err().to_string()
}

#[test]
fn the_shipped_support_workflow_checks() {
    let wf = Workflow::parse(SUPPORT).unwrap();
    assert_eq!(wf.name, "support-ticket-triage");
    assert!(wf.steps.len() >= 4);
    assert_eq!(wf.steps[0].service, "customer-lookup");
}

#[test]
fn mistakes_are_reported_with_their_line() {
    let unknown = "name: x\nsteps:\n  - name: a\n    skill: s\n    path: /p\n    inptu: {}\n";
    let e = err(unknown);
    assert!(
        e.contains("6:5") && e.contains("unknown key \"inptu\""),
        "{e}"
    );
    let undefined = "name: x\nsteps:\n  - name: a\n    skill: s\n    path: /p\n    input:\n      t: $outputs.ticket.text\n";
    let e = err(undefined);
    assert!(
        e.contains("7:10") && e.contains("$outputs.ticket is not defined"),
        "{e}"
    );
    let later = "name: x\nsteps:\n  - name: a\n    skill: s\n    path: /$outputs.b.id\n  - name: b\n    skill: s\n    path: /p\n    output: {b: $response}\n";
    assert!(err(later).contains("5:11"), "{}", err(later));
    let undeclared =
        "name: x\ninputs: [a]\nsteps:\n  - name: s\n    skill: s\n    path: /$inputs.b\n";
    assert!(err(undeclared).contains("$inputs.b is not a declared input"));
    assert!(err("name: x\nsteps:\n  - name: a\n    path: /p\n").contains("`skill`"));
    assert!(err("name: x\nname: y\nsteps: []\n").contains("Duplicate key"));
    assert!(
        err("name: x\nsteps:\n  - {name: a, skill: s, path: /p, on_error: retry}\n")
            .contains("on_error")
    );
}

#[test]
fn inputs_outputs_defaults_and_paths_are_filled_in() {
    let wf = Workflow::parse(
        "name: x\nsteps:\n  - name: a\n    skill: s\n    path: /t/$inputs.id/r\n    output: {customer: $response.customer}\n  - name: b\n    skill: s\n    path: /p\n    input:\n      tier: $outputs.customer.tier\n      lang: $outputs.customer.lang || \"en\"\n      n: 3\n      quoted: \"3\"\n      list: [$inputs.id, x]\n",
    )
    .unwrap();
    let mut scope = Scope::default();
    scope.inputs.insert("id".into(), json!("T 1/2"));
    assert_eq!(
        scope.path(&wf.steps[0].path).unwrap(),
        "/t/T%201%2F2/r",
        "one segment"
    );
    scope
        .outputs
        .insert("customer".into(), json!({"tier": "gold", "lang": null}));
    let input = scope.render(wf.steps[1].input.as_ref().unwrap());
    assert_eq!(
        input,
        json!({"tier": "gold", "lang": "en", "n": 3, "quoted": "3", "list": ["T 1/2", "x"]})
    );
    let empty = Scope::default();
    assert!(empty.path(&wf.steps[0].path).is_err(), "no value: no call");
}

#[test]
fn conditions_compare_and_test_truth() {
    let wf = Workflow::parse(
        "name: x\nsteps:\n  - {name: a, skill: s, path: /p, output: {s: $response}}\n  - {name: b, skill: s, path: /p, when: $outputs.s.label == negative}\n  - {name: c, skill: s, path: /p, when: $outputs.s.urgent}\n  - {name: d, skill: s, path: /p, when: $outputs.s.score != 3}\n",
    )
    .unwrap();
    let mut scope = Scope::default();
    scope.outputs.insert(
        "s".into(),
        json!({"label": "negative", "urgent": false, "score": 3}),
    );
    let holds: Vec<bool> = wf.steps[1..]
        .iter()
        .map(|s| scope.holds(s.when.as_ref().unwrap()))
        .collect();
    assert_eq!(holds, [true, false, false]);
}
