//! The policy compiled to Rust when the filter was built (`gen.rs`, run by
//! `build.rs`): the package's rules as methods over regorus' values, with
//! no bytecode to dispatch and every rule evaluated at most once per
//! decision. regorus' own builtins do the work the policy names
//! (`sprintf`, `sort`, ...), called as its VM calls them.
//!
//! `tests/compiled.rs` holds it to regorus' VM and tree interpreter on the
//! kata inputs and on generated ones, and the OPA differential to OPA.

use regorus::unstable::{BuiltinFcn, Expr, Ref, Source, Span};
use regorus::Value;

mod rt;

/// `None` when this build compiled the policy to Rust; otherwise why not.
pub(crate) const AVAILABLE: Option<&str> = generated::AVAILABLE;
#[allow(unused_imports)]
use rt::Und as _;

type R = Result<Value, rt::Error>;

/// The builtins the generated code calls, resolved once per VM, with the
/// placeholder span and expressions regorus' builtins take for errors.
pub(crate) struct Builtins {
    fns: Vec<BuiltinFcn>,
    span: Span,
    exprs: Vec<Ref<Expr>>,
    /// The policy's constants (strings, numbers, literal collections).
    k: Vec<Value>,
}

impl Builtins {
    /// Resolves [`generated::BUILTINS`]; a name this regorus lacks is a
    /// configuration error.
    pub(crate) fn resolve() -> Result<Builtins, String> {
        let mut fns = Vec::new();
        for name in generated::BUILTINS {
            match regorus::unstable::BUILTINS.get(name) {
                Some(f) => fns.push(*f),
                None => return Err(format!("compiled policy: no builtin {name}")),
            }
        }
        let source =
            Source::from_contents("<builtin>".into(), String::new()).map_err(|e| e.to_string())?;
        let span = Span {
            source,
            line: 1,
            col: 1,
            start: 0,
            end: 0,
        };
        let exprs = (0..generated::BUILTIN_ARGS)
            .map(|_| {
                Ref::new(Expr::Null {
                    span: span.clone(),
                    value: Value::Null,
                    eidx: 0,
                })
            })
            .collect();
        Ok(Builtins {
            fns,
            span,
            exprs,
            k: generated::constants(),
        })
    }
}

/// One decision's evaluation: the input, the data, each rule's value once
/// computed.
pub(crate) struct Eval<'a> {
    input: &'a Value,
    data: &'a Value,
    builtins: &'a Builtins,
    /// Rules evaluated in this decision.
    memo: [Option<Value>; generated::RULES],
    /// Rules that read only the data, kept for the VM's life.
    vm: &'a mut Memo,
    /// The static input paths read so far.
    ipm: [Option<Value>; generated::INPUTS],
}

/// The values of the rules that read only the data (see `gen.rs`).
pub(crate) type Memo = [Option<Value>; generated::RULES];

/// A fresh [`Memo`].
pub(crate) fn memo() -> Box<Memo> {
    Box::new(std::array::from_fn(|_| None))
}

impl<'a> Eval<'a> {
    /// The decision object for `input` (what the entry module's decision
    /// rule returns).
    pub(crate) fn decide(
        input: &'a Value,
        data: &'a Value,
        builtins: &'a Builtins,
        vm: &'a mut Memo,
    ) -> R {
        let mut e = Eval {
            input,
            data,
            builtins,
            memo: std::array::from_fn(|_| None),
            vm,
            ipm: std::array::from_fn(|_| None),
        };
        e.decision()
    }

    /// Constant `i`.
    #[inline]
    fn k(&self, i: usize) -> Value {
        self.kr(i).clone()
    }

    /// Constant `i`, borrowed.
    #[inline]
    fn kr(&self, i: usize) -> &'a Value {
        self.builtins.k.get(i).unwrap_or(&Value::Undefined)
    }

    /// Builtin `i` of [`generated::BUILTINS`] on `args`: undefined if an
    /// argument is, and undefined on an error (the VM without strict
    /// builtin errors).
    fn call(&mut self, i: usize, args: &[Value]) -> R {
        if args.iter().any(|a| matches!(a, Value::Undefined)) {
            return Ok(Value::Undefined);
        }
        let Some(f) = self.builtins.fns.get(i) else {
            return Err(format!("builtin {i} not resolved"));
        };
        let exprs = self
            .builtins
            .exprs
            .get(..args.len())
            .ok_or_else(|| "a builtin with too many arguments".to_string())?;
        match (f.0)(&self.builtins.span, exprs, args, false) {
            Ok(v) => Ok(v),
            Err(e) if e.downcast_ref::<regorus::LimitError>().is_some() => Err(e.to_string()),
            Err(_) => Ok(Value::Undefined),
        }
    }
}

mod generated {
    use super::rt;
    #[allow(unused_imports)]
    use super::rt::Und as _;
    use super::{Eval, Value, R};
    include!(concat!(env!("OUT_DIR"), "/native_policy.rs"));
}
