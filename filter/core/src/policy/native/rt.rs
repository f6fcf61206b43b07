#![allow(dead_code)]
//! What the generated policy code calls: Rego's operations on regorus'
//! values, with the semantics of regorus' VM (which the OPA differential
//! holds to OPA): an undefined operand makes a comparison, an arithmetic
//! result or a collection literal undefined; a type error in arithmetic is
//! an evaluation error; membership in anything but a collection is false.

use regorus::Value;
use std::collections::{BTreeMap, BTreeSet};

/// An evaluation error that ends the decision (it denies with it).
pub type Error = String;

/// An operation's error: `Body` fails the body it happens in (regorus'
/// VM treats a type error so); `Fatal` (a number past what Rego's numbers
/// hold, a resource limit, conflicting rule values) ends the decision.
pub enum E {
    Body,
    Fatal(Error),
}

impl E {
    /// What an error that nothing catches says.
    pub fn message(&self) -> Error {
        match self {
            E::Body => "evaluation error".into(),
            E::Fatal(m) => m.clone(),
        }
    }
}

/// regorus' number errors: overflow is fatal, as on its VM.
fn num(e: impl std::fmt::Display) -> E {
    let m = e.to_string();
    if m.starts_with("numeric overflow") {
        E::Fatal(m)
    } else {
        E::Body
    }
}

/// Whether a value is Rego's "undefined".
pub trait Und {
    fn is_undefined(&self) -> bool;
}

impl Und for Value {
    #[inline]
    fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }
}

/// Whether a body expression holds: defined and not `false`.
#[inline]
pub fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Undefined | Value::Bool(false))
}

/// One step of a reference: a field name or a computed key.
pub enum K<'k> {
    /// A constant key (a field name).
    R(&'k Value),
    /// A computed one.
    V(Value),
}

/// Constant `i` while the constants are built.
pub fn kc(k: &[Value], i: usize) -> Value {
    k.get(i).cloned().unwrap_or(Value::Undefined)
}

/// `base.a[k]...`: undefined as soon as a step is missing.
pub fn at(base: &Value, steps: &[K]) -> Value {
    let mut cur = base;
    for s in steps {
        cur = match (s, cur) {
            (K::R(f), Value::Object(o)) => match o.get(f) {
                Some(v) => v,
                None => return Value::Undefined,
            },
            (K::R(_), _) => return Value::Undefined,
            (K::V(k), c) => {
                if k.is_undefined() {
                    return Value::Undefined;
                }
                &c[k]
            }
        };
        if cur.is_undefined() {
            return Value::Undefined;
        }
    }
    cur.clone()
}

/// A value whose definitions must agree: a second, different value is a
/// conflict (an error, as in OPA).
pub fn settle(res: &mut Option<Value>, v: Value) -> Result<(), Error> {
    match res {
        Some(prev) if *prev != v => Err("complete rule has conflicting values".into()),
        Some(_) => Ok(()),
        None => {
            *res = Some(v);
            Ok(())
        }
    }
}

/// The members of a collection as (key, value) pairs: index and element,
/// element and element, key and value; none for anything else.
pub fn items(c: &Value) -> Vec<(Value, Value)> {
    match c {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (Value::from(i), v.clone()))
            .collect(),
        Value::Set(s) => s.iter().map(|v| (v.clone(), v.clone())).collect(),
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => Vec::new(),
    }
}

/// An array literal: undefined if an element is.
pub fn array(items: Vec<Value>) -> Value {
    if items.iter().any(Und::is_undefined) {
        return Value::Undefined;
    }
    Value::from(items)
}

/// A set literal: undefined if an element is.
pub fn set(items: Vec<Value>) -> Value {
    if items.iter().any(Und::is_undefined) {
        return Value::Undefined;
    }
    Value::from(items.into_iter().collect::<BTreeSet<Value>>())
}

/// An object literal: undefined if a key or a value is.
pub fn object(fields: Vec<(Value, Value)>) -> Value {
    if fields
        .iter()
        .any(|(k, v)| k.is_undefined() || v.is_undefined())
    {
        return Value::Undefined;
    }
    Value::from(fields.into_iter().collect::<BTreeMap<Value, Value>>())
}

/// A set being collected (a set rule, a set comprehension).
#[derive(Default)]
pub struct SetBuf(BTreeSet<Value>);

impl SetBuf {
    pub fn new() -> Self {
        SetBuf::default()
    }

    pub fn add(&mut self, v: Value) {
        if !v.is_undefined() {
            self.0.insert(v);
        }
    }

    pub fn done(self) -> Value {
        Value::from(self.0)
    }
}

/// The decision object being built.
pub struct Obj(BTreeMap<Value, Value>);

impl Obj {
    pub fn new() -> Self {
        Obj(BTreeMap::new())
    }

    pub fn put(&mut self, k: &'static str, v: Value) {
        self.0.insert(Value::from(k), v);
    }

    pub fn done(self) -> Value {
        Value::from(self.0)
    }
}

macro_rules! compare {
    ($($name:ident $op:tt),*) => {$(
        #[inline]
        pub fn $name(a: &Value, b: &Value) -> Value {
            if a.is_undefined() || b.is_undefined() {
                return Value::Undefined;
            }
            Value::Bool(a $op b)
        }
    )*};
}

compare!(eq ==, ne !=, lt <, le <=, gt >, ge >=);

/// `x in c`: false for anything but a collection (the VM's `Contains`).
pub fn member(x: &Value, c: &Value) -> Value {
    Value::Bool(match c {
        Value::Set(s) => s.contains(x),
        Value::Array(a) => a.contains(x),
        Value::Object(o) => o.values().any(|v| v == x),
        _ => false,
    })
}

fn numbers<'v>(a: &'v Value, b: &'v Value) -> Result<Option<(&'v Value, &'v Value)>, E> {
    if a.is_undefined() || b.is_undefined() {
        return Ok(None);
    }
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => Ok(Some((a, b))),
        _ => Err(E::Body),
    }
}

pub fn add(a: &Value, b: &Value) -> Result<Value, E> {
    match numbers(a, b)? {
        Some((Value::Number(x), Value::Number(y))) => x.add(y).map(Value::from).map_err(num),
        _ => Ok(Value::Undefined),
    }
}

pub fn sub(a: &Value, b: &Value) -> Result<Value, E> {
    if let (Value::Set(x), Value::Set(y)) = (a, b) {
        return Ok(Value::from(
            x.difference(y).iter().cloned().collect::<BTreeSet<Value>>(),
        ));
    }
    match numbers(a, b)? {
        Some((Value::Number(x), Value::Number(y))) => x.sub(y).map(Value::from).map_err(num),
        _ => Ok(Value::Undefined),
    }
}

pub fn mul(a: &Value, b: &Value) -> Result<Value, E> {
    match numbers(a, b)? {
        Some((Value::Number(x), Value::Number(y))) => x.mul(y).map(Value::from).map_err(num),
        _ => Ok(Value::Undefined),
    }
}

fn zero(v: &Value) -> bool {
    v == &Value::from(0u64)
}

pub fn div(a: &Value, b: &Value) -> Result<Value, E> {
    match numbers(a, b)? {
        Some((_, y)) if zero(y) => Ok(Value::Undefined),
        Some((Value::Number(x), Value::Number(y))) => {
            x.clone().divide(y).map(Value::from).map_err(num)
        }
        _ => Ok(Value::Undefined),
    }
}

pub fn rem(a: &Value, b: &Value) -> Result<Value, E> {
    match numbers(a, b)? {
        Some((_, y)) if zero(y) => Ok(Value::Undefined),
        Some((Value::Number(x), Value::Number(y))) => {
            if !x.is_integer() || !y.is_integer() {
                return Err(E::Body);
            }
            x.clone().modulo(y).map(Value::from).map_err(num)
        }
        _ => Ok(Value::Undefined),
    }
}

pub fn neg(a: &Value) -> Result<Value, E> {
    match a {
        Value::Undefined => Ok(Value::Undefined),
        Value::Number(x) => x.neg().map(Value::from).ok_or(E::Body),
        _ => Err(E::Body),
    }
}

pub fn union(a: &Value, b: &Value) -> Result<Value, E> {
    match (a, b) {
        (Value::Undefined, _) | (_, Value::Undefined) => Ok(Value::Undefined),
        (Value::Set(x), Value::Set(y)) => Ok(Value::from(
            x.union(y).iter().cloned().collect::<BTreeSet<Value>>(),
        )),
        _ => Err(E::Body),
    }
}

pub fn intersection(a: &Value, b: &Value) -> Result<Value, E> {
    match (a, b) {
        (Value::Undefined, _) | (_, Value::Undefined) => Ok(Value::Undefined),
        (Value::Set(x), Value::Set(y)) => Ok(Value::from(
            x.intersection(y)
                .iter()
                .cloned()
                .collect::<BTreeSet<Value>>(),
        )),
        _ => Err(E::Body),
    }
}

/// A number literal the generator could not write as an integer.
pub fn number(json: &str) -> Result<Value, E> {
    Value::from_json_str(json).map_err(num)
}

macro_rules! type_test {
    ($($name:ident $pat:pat),*) => {$(
        #[inline]
        pub fn $name(v: &Value) -> Value {
            match v {
                Value::Undefined => Value::Undefined,
                $pat => Value::Bool(true),
                _ => Value::Bool(false),
            }
        }
    )*};
}

type_test!(
    is_string Value::String(_),
    is_number Value::Number(_),
    is_array Value::Array(_),
    is_object Value::Object(_),
    is_boolean Value::Bool(_),
    is_null Value::Null,
    is_set Value::Set(_)
);

/// `object.get(obj, key or path, default)`, as regorus implements it (a
/// first argument that is not an object is an error, so undefined).
pub fn object_get(obj: &Value, key: &Value, default: &Value) -> Value {
    if obj.is_undefined() || key.is_undefined() || default.is_undefined() {
        return Value::Undefined;
    }
    let Value::Object(o) = obj else {
        return Value::Undefined;
    };
    match key {
        Value::Array(keys) => {
            let mut v = obj;
            for k in keys.iter() {
                v = &v[k];
                if v.is_undefined() {
                    return default.clone();
                }
            }
            v.clone()
        }
        k => o.get(k).cloned().unwrap_or_else(|| default.clone()),
    }
}
