//! The Rego-to-Rust generator (`src/policy/native/gen.rs`, run by
//! `build.rs`) on small packages: what it keeps for a VM's life, what it
//! refuses. The generated code of the shipped policy is tested by
//! evaluation (`tests/compiled.rs`); these check the generator's choices.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/policy/native/gen_body.rs"]
mod native_expr;
#[path = "../src/policy/native/gen.rs"]
mod native_gen;

const OPTIONAL: [(&str, &str, &str); 1] = [("deny", "deny", "[]")];

fn generate(src: &str) -> Result<String, String> {
    native_gen::generate(&[("t.rego", src)], "t", &OPTIONAL)
}

/// The body of rule `name`'s memo wrapper.
fn wrapper<'c>(code: &'c str, name: &str) -> &'c str {
    let start = code
        .find(&format!("fn r_{name}(&mut self)"))
        .unwrap_or_else(|| panic!("no rule {name}:\n{code}"));
    let rest = &code[start..];
    &rest[..rest.find("fn c_").unwrap()]
}

#[test]
fn a_rule_reading_only_data_is_kept_for_the_vm_and_one_reading_input_or_the_clock_is_not() {
    let code = generate(
        "package t\n\
         cfg := data.config\n\
         now := rand.intn(\"agentplane\", 100)\n\
         late if now > cfg.deadline\n\
         who := input.agent\n\
         allow if { who == cfg.admin; not late }\n",
    )
    .unwrap();
    assert!(wrapper(&code, "cfg").contains("self.vm["), "{code}");
    for per_decision in ["now", "late", "who", "allow"] {
        let w = wrapper(&code, per_decision);
        assert!(
            w.contains("self.memo[") && !w.contains("self.vm["),
            "{per_decision} kept beyond its decision:\n{w}"
        );
    }
}

#[test]
fn builtin_calls_size_their_placeholder_arguments() {
    let code = generate(
        "package t\nallow if sprintf(\"%v %v\", [input.a, input.b]) == \"x\"\nx := replace(input.a, \"a\", \"b\")\n",
    )
    .unwrap();
    assert!(code.contains("BUILTIN_ARGS: usize = 3;"), "{code}");
}

#[test]
fn constructs_it_does_not_translate_are_refused_with_the_reason() {
    for (src, why) in [
        (
            "package t\nallow if input.x with input.x as true\n",
            "`with`",
        ),
        (
            "package t\nallow if { some x; input.a[x] }\n",
            "`some x` declarations",
        ),
        ("package t\nallow if input.a[_]\n", "`_`"),
        (
            "package t\nallow if { o := {k: 1 | some k in input.a}; o }\n",
            "object comprehensions",
        ),
        ("package t\ndeny contains 1 if true\n", "no `allow`"),
    ] {
        let e = generate(src).expect_err(src);
        assert!(e.contains(why), "{src}: {e}");
    }
}
