//! Generated inputs for the equivalence property in `compiled.rs`. Seeds
//! are the kata inputs and the shapes they lack (MCP calls and lists, a
//! session end, delegation, a transaction, a bound workload, agents with
//! limits), each then mutated a few times by a seeded PRNG: keys dropped
//! (undefined values), values set to null, wrong types, empty strings,
//! arrays and objects, array elements duplicated, reordered and dropped
//! (the policy treats them as sets), values swapped in from another seed
//! or between two places of the same input, names drawn from the data
//! (agents, teams, types, permissions, services, tools, actions,
//! methods), unknown keys, very long and non-ASCII strings, and clocks on
//! the hour and token-expiry boundaries. [`shrink`] cuts an input that
//! fails down to what still fails, so a report is small enough to read.

use serde_json::{json, Map, Value};

/// splitmix64: a seed gives the same inputs on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One step of a path into a JSON document.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Key(String),
    At(usize),
}

/// Every node below the root, each parent before its children.
pub fn paths(v: &Value) -> Vec<Vec<Step>> {
    fn walk(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, c)| (Step::Key(k.clone()), c)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (Step::At(i), c))
                .collect(),
            _ => Vec::new(),
        };
        for (step, child) in children {
            at.push(step);
            out.push(at.clone());
            walk(child, at, out);
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn get<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.as_object()?.get(k),
        Step::At(i) => v.as_array()?.get(*i),
    })
}

fn node<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.as_object_mut()?.get_mut(k),
        Step::At(i) => v.as_array_mut()?.get_mut(*i),
    })
}

/// Removes the node at `path`: a key from its object, an element from its
/// array. False when there is none.
pub fn remove(v: &mut Value, path: &[Step]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (node(v, parent), last) {
        (Some(Value::Object(m)), Step::Key(k)) => m.remove(k).is_some(),
        (Some(Value::Array(a)), Step::At(i)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Sets the node at `path`, making objects of what is missing or not an
/// object on the way (an index past an array's end changes nothing).
pub fn set(v: &mut Value, path: &[Step], new: Value) {
    let mut cur = v;
    for s in path {
        cur = match s {
            Step::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                match cur {
                    Value::Object(m) => m.entry(k.clone()).or_insert(Value::Null),
                    _ => return,
                }
            }
            Step::At(i) => match cur {
                Value::Array(a) if *i < a.len() => &mut a[*i],
                _ => return,
            },
        };
    }
    *cur = new;
}

/// Merges `patch` into `v`: objects member by member, anything else
/// replaced.
pub fn merge(v: &mut Value, patch: &Value) {
    match (v, patch) {
        (Value::Object(m), Value::Object(p)) => {
            for (k, pv) in p {
                merge(m.entry(k.clone()).or_insert(Value::Null), pv);
            }
        }
        (v, p) => *v = p.clone(),
    }
}

const HOUR: i64 = 3_600_000_000_000;
/// 2025-05-03 00:00 UTC, the kata's day.
const DAY: i64 = 1_746_230_400_000_000_000;
const SPIFFE: &str = "spiffe://corp/ns/agents/sa/triage";
const UNICODE: [&str; 12] = [
    "é",
    "e\u{301}",
    "Ω≈ç√",
    "😀",
    "\u{202e}noitcudorp",
    "a\u{0}b",
    "ß",
    "İ",
    "\u{feff}production",
    "日本語",
    "\u{10ffff}",
    "production ",
];

/// Seeds, names from the data and the input paths the policy reads.
pub struct Gen {
    seeds: Vec<Value>,
    /// (member name, the values that name takes in the data and seeds).
    names: Vec<(&'static str, Vec<Value>)>,
    permissions: Vec<Value>,
    tools: Vec<Value>,
    reads: Vec<Vec<Step>>,
}

impl Gen {
    /// `kata`: the case inputs; `allowed`: one of them the policy allows;
    /// `data`: the bundle's data; `reads`: the input paths it reads.
    pub fn new(kata: Vec<Value>, allowed: &Value, data: &Value, reads: &[Vec<String>]) -> Gen {
        let mut seeds = kata;
        seeds.extend(shapes(allowed));
        let cfg = &data["mcp"]["config"];
        let keys = |v: &Value| -> Vec<Value> {
            v.as_object()
                .map(|m| m.keys().map(|k| Value::from(k.as_str())).collect())
                .unwrap_or_default()
        };
        let flat = |v: &Value| -> Vec<Value> {
            let mut out = Vec::new();
            for x in v.as_object().into_iter().flat_map(|m| m.values()) {
                match x {
                    Value::Array(a) => out.extend(a.iter().cloned()),
                    other => out.push(other.clone()),
                }
            }
            out
        };
        let seen = |seeds: &[Value], pointer: &str| -> Vec<Value> {
            seeds
                .iter()
                .filter_map(|s| s.pointer(pointer))
                .cloned()
                .collect()
        };
        let mut permissions = flat(&cfg["action_permissions"]);
        permissions.extend(flat(&cfg["service_permissions"]));
        permissions.extend(flat(&cfg["tool_permissions"]));
        let mut tools = keys(&cfg["tool_permissions"]);
        for k in ["denied_tools", "destructive_tools"] {
            tools.extend(cfg[k].as_array().cloned().unwrap_or_default());
        }
        tools.extend(keys(&cfg["team_scoped_tools"]));
        tools.extend(keys(&cfg["tool_limits"]));
        tools.push("search_docs".into());
        let mut actions = keys(&cfg["action_permissions"]);
        actions.push("nope".into());
        let mut teams = keys(&data["teams"]);
        teams.extend(cfg["shared_teams"].as_array().cloned().unwrap_or_default());
        teams.extend(seen(&seeds, "/agent/team"));
        teams.extend(seen(&seeds, "/resource/metadata/team"));
        let mut types = keys(&data["agent_types"]);
        types.extend(keys(&cfg["delegation"]["may_act_for"]));
        types.extend(flat(&cfg["delegation"]["may_act_for"]));
        types.extend(seen(&seeds, "/resource/type"));
        types.extend(seen(&seeds, "/agent/type"));
        let mut ids = keys(&data["agents"]);
        ids.extend(keys(&cfg["service_permissions"]));
        ids.extend(seen(&seeds, "/agent/id"));
        ids.extend(seen(&seeds, "/resource/id"));
        let mut methods = cfg["high_risk_methods"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        methods.extend(
            [
                "GET",
                "POST",
                "delete",
                "tools/call",
                "tools/list",
                "prompts/list",
                "resources/list",
                "resources/templates/list",
                "initialize",
            ]
            .map(Value::from),
        );
        let envs = ["production", "staging", "", "Production"].map(Value::from);
        let names = vec![
            ("action", actions),
            ("tool", tools.clone()),
            ("team", teams),
            ("type", types.clone()),
            ("actor_type", types),
            ("id", ids.clone()),
            ("sub", ids.clone()),
            ("actor", ids),
            ("method", methods),
            ("environment", envs.to_vec()),
            ("protocol", ["mcp", "http", "MCP"].map(Value::from).to_vec()),
            (
                "workload_id",
                vec![SPIFFE.into(), format!("{SPIFFE}-x").into()],
            ),
            (
                "spiffe_id",
                vec![SPIFFE.into(), format!("{SPIFFE}-x").into()],
            ),
            ("registered", vec![true.into(), false.into(), "true".into()]),
            ("shared", vec![true.into(), false.into(), 1.into()]),
            ("valid", vec![true.into(), false.into(), "true".into()]),
            ("depth", [0, 1, 2, 3, -1].map(Value::from).to_vec()),
            (
                "pin",
                ["matches", "changed", "unpinned", "unseen", "Changed"]
                    .map(Value::from)
                    .to_vec(),
            ),
        ];
        Gen {
            seeds,
            names,
            permissions,
            tools,
            reads: reads
                .iter()
                .map(|p| p.iter().map(|k| Step::Key(k.clone())).collect())
                .collect(),
        }
    }

    pub fn seeds(&self) -> &[Value] {
        &self.seeds
    }

    /// A seed mutated one to four times.
    pub fn input(&self, rng: &mut Rng) -> Value {
        let mut v = rng.pick(&self.seeds).clone();
        for _ in 0..1 + rng.below(4) {
            self.mutate(&mut v, rng);
        }
        v
    }

    fn mutate(&self, v: &mut Value, rng: &mut Rng) {
        let existing = paths(v);
        let path = if !existing.is_empty() && rng.chance(65) {
            rng.pick(&existing).clone()
        } else {
            rng.pick(&self.reads).clone()
        };
        // The member the value sits under (an element: its array's name).
        let name = path.iter().rev().find_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::At(_) => None,
        });
        match rng.below(11) {
            0 | 1 => {
                remove(v, &path);
            }
            2 => set(v, &path, Value::Null),
            3 => set(v, &path, odd(rng)),
            4 => {
                if let Some(x) = self.named(name, rng) {
                    set(v, &path, x);
                }
            }
            5 => {
                let donor = rng.pick(&self.seeds);
                if let Some(x) = get(donor, &path) {
                    set(v, &path, x.clone());
                }
            }
            6 => {
                let other = rng.pick(&existing).clone();
                if let (Some(a), Some(b)) = (get(v, &path).cloned(), get(v, &other).cloned()) {
                    set(v, &path, b);
                    set(v, &other, a);
                }
            }
            7 => self.reshape(v, &path, rng),
            8 => {
                let key = format!("zz_{}", rng.pick(&["unknown", "é", "", "allow"]));
                let x = odd(rng);
                match node(v, &path) {
                    Some(Value::Object(m)) => {
                        m.insert(key, x);
                    }
                    _ => set(v, &[Step::Key(key)], x),
                }
            }
            9 => {
                if let Some(Value::String(s)) = node(v, &path) {
                    *s = match rng.below(4) {
                        0 => s.to_uppercase(),
                        1 => format!("{s} "),
                        2 => format!("{}{s}", rng.pick(&UNICODE)),
                        _ => s.repeat(2 + rng.below(500)),
                    };
                }
            }
            _ => clock(v, rng),
        }
    }

    /// A value of the kind `name` holds in the data, if the data names it.
    fn named(&self, name: Option<&str>, rng: &mut Rng) -> Option<Value> {
        let name = name?;
        let list = |pool: &[Value], rng: &mut Rng| -> Value {
            (0..rng.below(5)).map(|_| rng.pick(pool).clone()).collect()
        };
        match name {
            "permissions" | "actor_permissions" | "scope" => Some(list(&self.permissions, rng)),
            "listed" => Some(list(&self.tools, rng)),
            "arguments" => Some(json!({ "team": self.named(Some("team"), rng) })),
            _ => self
                .names
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, pool)| rng.pick(pool).clone()),
        }
    }

    /// Duplicates, reorders, drops or adds elements of the array at or
    /// above `path`.
    fn reshape(&self, v: &mut Value, path: &[Step], rng: &mut Rng) {
        let end = (0..=path.len())
            .rev()
            .find(|&n| matches!(get(v, &path[..n]), Some(Value::Array(_))));
        let Some(Value::Array(a)) = end.and_then(|n| node(v, &path[..n])) else {
            return;
        };
        if a.is_empty() {
            a.push(rng.pick(&self.permissions).clone());
            return;
        }
        let i = rng.below(a.len());
        match rng.below(5) {
            0 => {
                let x = a[i].clone();
                a.insert(rng.below(a.len() + 1), x);
            }
            1 => a.reverse(),
            2 => {
                a.remove(i);
            }
            3 => {
                let j = rng.below(a.len());
                a.swap(i, j);
            }
            _ => a.push(rng.pick(&self.tools).clone()),
        }
    }
}

/// A value of the wrong type, empty, huge, negative, fractional or not
/// ASCII.
fn odd(rng: &mut Rng) -> Value {
    match rng.below(20) {
        0 => Value::Null,
        1 => true.into(),
        2 => false.into(),
        3 => 0.into(),
        4 => (-1).into(),
        5 => 1.5.into(),
        6 => i64::MAX.into(),
        7 => u64::MAX.into(),
        8 => 1e300.into(),
        9 => i64::MIN.into(),
        10 => "".into(),
        11 => json!([]),
        12 => json!({}),
        13 => json!([null]),
        14 => json!({"": null}),
        15 => json!([[]]),
        16 => "0".into(),
        17 => rng.pick(&UNICODE).to_string().into(),
        _ => rng
            .pick(&["a", "é", "😀", "production", "skills:invoke"])
            .repeat(1 + rng.below(4_000))
            .into(),
    }
}

/// The clock or the token's expiry moved to a boundary: the top of an
/// hour (business hours, `valid_until_ns`), the expiry itself, odd
/// numbers.
fn clock(v: &mut Value, rng: &mut Rng) {
    let exp = v.pointer("/jwt/payload/exp").and_then(Value::as_i64);
    let near = *rng.pick(&[-1, 0, 1]);
    let time = |t: i64| -> Value { t.into() };
    let at_exp = exp.and_then(|e| e.checked_mul(1_000_000_000)?.checked_add(near));
    let now = v.pointer("/request/time_ns").and_then(Value::as_i64);
    match rng.below(5) {
        0 if at_exp.is_some() => set(v, &path(&["request", "time_ns"]), at_exp.into()),
        1 => {
            let t = DAY + rng.below(48) as i64 * HOUR + near;
            set(v, &path(&["request", "time_ns"]), time(t));
        }
        2 if now.is_some() => {
            let e = now.unwrap_or_default() / 1_000_000_000 + near;
            let e: Value = if rng.chance(20) {
                (e as f64 + 0.5).into()
            } else {
                e.into()
            };
            set(v, &path(&["jwt", "payload", "exp"]), e);
        }
        3 => set(
            v,
            &path(&["request", "time_ns"]),
            rng.pick(&[
                json!(0),
                json!(-1),
                json!(i64::MAX),
                json!(u64::MAX),
                json!(1.75e18),
            ])
            .clone(),
        ),
        _ => set(v, &path(&["jwt", "payload", "exp"]), odd(rng)),
    }
}

fn path(keys: &[&str]) -> Vec<Step> {
    keys.iter().map(|k| Step::Key((*k).to_string())).collect()
}

/// What the kata lacks, each made from an input the policy allows (a
/// production agent of team customer-success at noon): MCP tool calls
/// (team-scoped, rate-limited), lists (tools, prompts), a session end,
/// agents with limits, a delegated call, a transaction, a bound workload.
fn shapes(allowed: &Value) -> Vec<Value> {
    let mcp = json!({"type": "tool", "id": "tickets-mcp", "registered": true, "protocol": "mcp",
                     "metadata": {"team": "customer-success", "environment": "production"}});
    let perms = json!([
        "tools:call",
        "tools:list",
        "prompts:list",
        "tickets:delete",
        "mcp:connect"
    ]);
    let call = |tool: &str, args: Value| {
        json!({"action": "call_tool", "resource": mcp, "agent": {"permissions": perms},
               "mcp": {"kind": "request", "method": "tools/call", "id": 1, "tool": tool, "arguments": args}})
    };
    let list = |action: &str, method: &str, listed: Value| {
        json!({"action": action, "resource": mcp, "agent": {"permissions": perms},
               "mcp": {"kind": "request", "method": method, "id": 2, "listed": listed}})
    };
    let orch = json!({"sub": "orch-1", "type": "orchestrator", "permissions": ["skills:invoke", "data:read"]});
    // Two actors: the current one and one before it.
    let delegation = |actor: &Value, earlier: Value| {
        json!({"delegation": {"subject": "support-triage@clients", "actor": "orch-1",
               "actor_type": "orchestrator", "actor_permissions": ["skills:invoke", "data:read"],
               "actors": [actor, earlier], "chain": ["orch-1", earlier["sub"]], "depth": 2,
               "may_act": null}})
    };
    let patches = [
        call("lookup_ticket", json!({"team": "customer-success"})),
        call("delete_ticket", json!({"id": "T-1"})),
        call("search_docs", json!({})),
        list(
            "list_tools",
            "tools/list",
            json!([
                "lookup_ticket",
                "delete_ticket",
                "run_shell",
                "search_docs",
                "lookup_ticket"
            ]),
        ),
        list("list_prompts", "prompts/list", json!(["triage", "summary"])),
        // Pinned tool definitions: a call, and a list with each state.
        {
            let mut c = call("search_docs", json!({}));
            c["mcp"]["tool_definition"] = json!({"digest": "sha256:00", "pin": "changed"});
            c
        },
        {
            let mut l = list(
                "list_tools",
                "tools/list",
                json!(["lookup_ticket", "search_docs", "delete_ticket"]),
            );
            l["mcp"]["listed_definitions"] = json!({
                "lookup_ticket": {"digest": "sha256:01", "pin": "changed"},
                "search_docs": {"digest": "sha256:02", "pin": "matches"},
                "delete_ticket": {"digest": null, "pin": "unseen"}
            });
            l
        },
        json!({"action": "end_session", "request": {"method": "DELETE"}, "resource": mcp}),
        json!({"agent": {"type": "metered"}}),
        json!({"agent": {"type": "experimental"}}),
        json!({"agent": {"id": "batch-runner@clients"}}),
        delegation(
            &orch,
            json!({"sub": "planner", "type": "orchestrator", "permissions": ["skills:invoke"]}),
        ),
        delegation(
            &orch,
            json!({"sub": "lab-1", "type": "experimental", "permissions": ["skills:invoke"]}),
        ),
        json!({"transaction": {"txn": "t-1", "sub": "alice@clients", "scope": ["skills:invoke", "data:read"],
               "actors": ["orchestrator@clients"]}}),
        json!({"agent": {"workload_id": SPIFFE}, "source": {"mtls": true, "spiffe_id": SPIFFE}}),
    ];
    patches
        .iter()
        .map(|p| {
            let mut v = allowed.clone();
            merge(&mut v, p);
            v
        })
        .collect()
}

/// `input` with every key and element removed, and every long string cut,
/// that `fails` allows: what is left all matters to the failure.
pub fn shrink(input: Value, mut fails: impl FnMut(&Value) -> bool) -> Value {
    let mut cur = input;
    'again: loop {
        for p in paths(&cur) {
            let mut t = cur.clone();
            if remove(&mut t, &p) && fails(&t) {
                cur = t;
                continue 'again;
            }
            if let Some(Value::String(s)) = get(&cur, &p) {
                if s.chars().count() > 12 {
                    let cut: String = s.chars().take(12).collect();
                    let mut t = cur.clone();
                    set(&mut t, &p, cut.into());
                    if fails(&t) {
                        cur = t;
                        continue 'again;
                    }
                }
            }
        }
        return cur;
    }
}
