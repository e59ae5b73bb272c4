//! The common part of CEL, evaluated straight over the envelope's JSON, and the static types of
//!
//! Over 700 lines: the evaluator and its type checker are 630 lines, the rest unit tests.
//!
//! expressions.
//!
//! Most mapping expressions read a few columns and combine them with literals: `+ - * / %`,
//! comparisons, `&&` `||` `!`, `?:`, `size`, `string`, `int`, `in [...]`, `has(after.x)`. Such an
//! expression is translated once into a small tree that is evaluated over the row's JSON, with no
//! CEL context built per event (the interpreter's per-event set-up and name resolution cost more
//! than the expressions themselves). The tree answers only where its answer is exactly the one
//! CEL gives; anything else (a mix of types, an overflow, a division by zero, a missing field, a
//! JSON document) answers `None`, and the expression is run by the cel interpreter instead, which
//! gives the value or the error. A test checks the two agree on generated expressions and rows.
//!
//! [`infer`] gives an expression's result type from the types of the columns it reads, or the
//! first type error with its position: what the cel crate, which has no type checker, does not.

use std::borrow::Cow;

use cel::common::ast::{operators as ops, CallExpr, Expr as Ast, IdedExpr, LiteralValue};
use serde_json::Value as J;

/// A row variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    After,
    Before,
    Source,
}

impl Var {
    fn of(name: &str) -> Option<Var> {
        match name {
            "after" => Some(Var::After),
            "before" => Some(Var::Before),
            "source" => Some(Var::Source),
            _ => None,
        }
    }
}

/// An expression in the subset evaluated directly.
#[derive(Debug, Clone)]
pub enum Node {
    Lit(Lit),
    Field(Var, String),
    Has(Var, String),
    Op,
    Not(Box<Node>),
    Neg(Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Size(Box<Node>),
    ToString(Box<Node>),
    ToInt(Box<Node>),
    In(Box<Node>, Vec<Node>),
}

#[derive(Debug, Clone)]
pub enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The event an expression reads.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub after: Option<&'a J>,
    pub before: Option<&'a J>,
    pub op: &'a str,
    pub source: Option<&'a J>,
}

/// A value during direct evaluation: strings borrowed from the row where they can be.
#[derive(Debug, Clone, PartialEq)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
}

/// Translates `e` when all of it is in the directly evaluated subset.
pub fn translate(e: &IdedExpr) -> Option<Node> {
    let boxed = |e: &IdedExpr| translate(e).map(Box::new);
    Some(match &e.expr {
        Ast::Literal(l) => Node::Lit(match l {
            LiteralValue::Null => Lit::Null,
            LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
            LiteralValue::Int(i) => Lit::Int(*i.inner()),
            LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
            LiteralValue::Double(d) => Lit::Double(*d.inner()),
            LiteralValue::String(s) => Lit::Str(s.inner().to_owned()),
            LiteralValue::Bytes(_) => return None,
        }),
        Ast::Ident(name) if name == "op" => Node::Op,
        Ast::Select(s) => {
            let Ast::Ident(var) = &s.operand.expr else {
                return None;
            };
            let var = Var::of(var)?;
            if s.test {
                Node::Has(var, s.field.clone())
            } else {
                Node::Field(var, s.field.clone())
            }
        }
        Ast::Call(call) => {
            let CallExpr {
                func_name,
                target,
                args,
            } = call;
            let name = func_name.as_str();
            // `x.size()` is `size(x)`; no other member call is in the subset.
            let args: Vec<&IdedExpr> = match target {
                Some(t) if name == "size" && args.is_empty() => vec![t.as_ref()],
                Some(_) => return None,
                None => args.iter().collect(),
            };
            match (name, args.as_slice()) {
                (ops::LOGICAL_NOT, [a]) => Node::Not(boxed(a)?),
                (ops::NEGATE, [a]) => Node::Neg(boxed(a)?),
                (ops::LOGICAL_AND, [a, b]) => Node::And(boxed(a)?, boxed(b)?),
                (ops::LOGICAL_OR, [a, b]) => Node::Or(boxed(a)?, boxed(b)?),
                (ops::CONDITIONAL, [c, a, b]) => Node::Cond(boxed(c)?, boxed(a)?, boxed(b)?),
                ("size", [a]) => Node::Size(boxed(a)?),
                ("string", [a]) => Node::ToString(boxed(a)?),
                ("int", [a]) => Node::ToInt(boxed(a)?),
                (ops::IN, [a, list]) => {
                    let Ast::List(list) = &list.expr else {
                        return None;
                    };
                    if !list.optional_indices.is_empty() {
                        return None;
                    }
                    let items = list
                        .elements
                        .iter()
                        .map(translate)
                        .collect::<Option<Vec<_>>>()?;
                    Node::In(boxed(a)?, items)
                }
                (op, [a, b]) => {
                    let arith = match op {
                        ops::ADD => Some(Arith::Add),
                        ops::SUBSTRACT => Some(Arith::Sub),
                        ops::MULTIPLY => Some(Arith::Mul),
                        ops::DIVIDE => Some(Arith::Div),
                        ops::MODULO => Some(Arith::Rem),
                        _ => None,
                    };
                    if let Some(arith) = arith {
                        return Some(Node::Arith(arith, boxed(a)?, boxed(b)?));
                    }
                    let cmp = match op {
                        ops::EQUALS => Cmp::Eq,
                        ops::NOT_EQUALS => Cmp::Ne,
                        ops::LESS => Cmp::Lt,
                        ops::LESS_EQUALS => Cmp::Le,
                        ops::GREATER => Cmp::Gt,
                        ops::GREATER_EQUALS => Cmp::Ge,
                        _ => return None,
                    };
                    Node::Cmp(cmp, boxed(a)?, boxed(b)?)
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Evaluates `node` over `row`: `None` where the cel interpreter must answer instead.
pub fn eval(node: &Node, row: &Row<'_>) -> Option<J> {
    Some(match value(node, row)? {
        V::Null => J::Null,
        V::Bool(b) => J::Bool(b),
        V::Int(i) => J::from(i),
        V::UInt(u) => J::from(u),
        V::Double(d) => J::Number(serde_json::Number::from_f64(d)?),
        V::Str(s) => J::String(s.into_owned()),
    })
}

/// Evaluates a condition: `None` unless it gives a boolean here.
pub fn eval_bool(node: &Node, row: &Row<'_>) -> Option<bool> {
    match value(node, row)? {
        V::Bool(b) => Some(b),
        _ => None,
    }
}

fn field<'a>(var: Option<&'a J>, name: &str) -> Option<V<'a>> {
    Some(match var?.as_object()?.get(name)? {
        J::Null => V::Null,
        J::Bool(b) => V::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => V::Int(i),
            (None, Some(u)) => V::UInt(u),
            _ => V::Double(n.as_f64()?),
        },
        J::String(s) => V::Str(Cow::Borrowed(s)),
        J::Array(_) | J::Object(_) => return None,
    })
}

fn var<'a>(row: &Row<'a>, v: Var) -> Option<&'a J> {
    match v {
        Var::After => row.after,
        Var::Before => row.before,
        Var::Source => row.source,
    }
}

fn value<'a>(node: &'a Node, row: &Row<'a>) -> Option<V<'a>> {
    Some(match node {
        Node::Lit(l) => match l {
            Lit::Null => V::Null,
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::UInt(u) => V::UInt(*u),
            Lit::Double(d) => V::Double(*d),
            Lit::Str(s) => V::Str(Cow::Borrowed(s)),
        },
        Node::Field(v, name) => field(var(row, *v), name)?,
        Node::Has(v, name) => V::Bool(var(row, *v)?.as_object()?.contains_key(name)),
        Node::Op => V::Str(Cow::Borrowed(row.op)),
        Node::Not(a) => match value(a, row)? {
            V::Bool(b) => V::Bool(!b),
            _ => return None,
        },
        Node::Neg(a) => match value(a, row)? {
            V::Int(i) => V::Int(i.checked_neg()?),
            V::Double(d) => V::Double(-d),
            _ => return None,
        },
        // CEL's `&&` and `||` absorb an error on either side when the other decides; only the
        // cases where the left side is a boolean are answered here.
        Node::And(a, b) | Node::Or(a, b) => {
            // The left value that decides alone: false for `&&`, true for `||`.
            let decides = matches!(node, Node::Or(..));
            match value(a, row)? {
                V::Bool(l) if l == decides => V::Bool(l),
                V::Bool(_) => match value(b, row)? {
                    V::Bool(r) => V::Bool(r),
                    _ => return None,
                },
                _ => return None,
            }
        }
        Node::Cond(c, a, b) => match value(c, row)? {
            V::Bool(true) => value(a, row)?,
            V::Bool(false) => value(b, row)?,
            _ => return None,
        },
        Node::Size(a) => match value(a, row)? {
            V::Str(s) => V::Int(i64::try_from(s.chars().count()).ok()?),
            _ => return None,
        },
        Node::ToString(a) => match value(a, row)? {
            V::Str(s) => V::Str(s),
            V::Int(i) => V::Str(Cow::Owned(i.to_string())),
            V::UInt(u) => V::Str(Cow::Owned(u.to_string())),
            V::Bool(b) => V::Str(Cow::Borrowed(if b { "true" } else { "false" })),
            _ => return None,
        },
        Node::ToInt(a) => match value(a, row)? {
            V::Int(i) => V::Int(i),
            V::UInt(u) => V::Int(i64::try_from(u).ok()?),
            V::Str(s) => V::Int(s.parse().ok()?),
            _ => return None,
        },
        Node::Arith(op, a, b) => arith(*op, value(a, row)?, value(b, row)?)?,
        Node::Cmp(op, a, b) => V::Bool(compare(*op, &value(a, row)?, &value(b, row)?)?),
        Node::In(a, items) => {
            let needle = value(a, row)?;
            let mut found = false;
            for item in items {
                found |= compare(Cmp::Eq, &needle, &value(item, row)?)?;
            }
            V::Bool(found)
        }
    })
}

fn arith<'a>(op: Arith, a: V<'a>, b: V<'a>) -> Option<V<'a>> {
    Some(match (a, b) {
        (V::Int(x), V::Int(y)) => V::Int(match op {
            Arith::Add => x.checked_add(y)?,
            Arith::Sub => x.checked_sub(y)?,
            Arith::Mul => x.checked_mul(y)?,
            Arith::Div => x.checked_div(y)?,
            Arith::Rem => x.checked_rem(y)?,
        }),
        (V::UInt(x), V::UInt(y)) => V::UInt(match op {
            Arith::Add => x.checked_add(y)?,
            Arith::Sub => x.checked_sub(y)?,
            Arith::Mul => x.checked_mul(y)?,
            Arith::Div => x.checked_div(y)?,
            Arith::Rem => x.checked_rem(y)?,
        }),
        (V::Double(x), V::Double(y)) => V::Double(match op {
            Arith::Add => x + y,
            Arith::Sub => x - y,
            Arith::Mul => x * y,
            Arith::Div => x / y,
            Arith::Rem => return None,
        }),
        (V::Str(x), V::Str(y)) if op == Arith::Add => {
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(&x);
            s.push_str(&y);
            V::Str(Cow::Owned(s))
        }
        _ => return None,
    })
}

fn compare(op: Cmp, a: &V<'_>, b: &V<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    let order: Option<Ordering> = match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(y)),
        (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Null, V::Null) => Some(Ordering::Equal),
        _ => None,
    };
    Some(match op {
        Cmp::Eq | Cmp::Ne => {
            let equal = match (a, b) {
                (V::Double(x), V::Double(y)) => x == y,
                // `null` equals only `null`: a column compared with `null` is a presence test.
                (V::Null, _) | (_, V::Null) => matches!((a, b), (V::Null, V::Null)),
                _ => order? == Ordering::Equal,
            };
            equal == (op == Cmp::Eq)
        }
        _ => {
            if matches!(a, V::Null) {
                return None;
            }
            let o = order?;
            match op {
                Cmp::Lt => o == Ordering::Less,
                Cmp::Le => o != Ordering::Greater,
                Cmp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }
        }
    })
}

/// The names macros bind inside `e` (`x` in `after.tags.exists(x, x == 'a')`): variables of
/// the expression's own, not of the event.
pub fn macro_variables(e: &IdedExpr, out: &mut Vec<String>) {
    match &e.expr {
        Ast::Comprehension(c) => {
            out.push(c.iter_var.clone());
            out.extend(c.iter_var2.clone());
            out.push(c.accu_var.clone());
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                macro_variables(part, out);
            }
        }
        Ast::Call(call) => {
            for a in call.target.iter().map(|t| t.as_ref()).chain(&call.args) {
                macro_variables(a, out);
            }
        }
        Ast::Select(s) => macro_variables(&s.operand, out),
        Ast::List(l) => l.elements.iter().for_each(|x| macro_variables(x, out)),
        Ast::Map(m) => {
            for entry in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    macro_variables(&me.key, out);
                    macro_variables(&me.value, out);
                }
            }
        }
        _ => {}
    }
}

/// A static type: what CEL values an expression can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Null,
    Bool,
    Int,
    UInt,
    Double,
    String,
    /// Anything: a JSON document, a list, a map, a timestamp, a value of an unknown column.
    Dyn,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::UInt => "uint",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Dyn => "dyn",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::UInt | Ty::Double)
    }

    /// The type of a JSON value (a value-map entry, a literal in config).
    pub fn of_json(v: &J) -> Ty {
        match v {
            J::Null => Ty::Null,
            J::Bool(_) => Ty::Bool,
            J::Number(n) if n.is_i64() => Ty::Int,
            J::Number(n) if n.is_u64() => Ty::UInt,
            J::Number(_) => Ty::Double,
            J::String(_) => Ty::String,
            _ => Ty::Dyn,
        }
    }
}

/// A type error: the AST node it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    pub node: u64,
    pub message: String,
}

/// The result type of `e` where `column(var, name)` gives a column's type (`Dyn` when unknown).
pub fn infer(e: &IdedExpr, column: &dyn Fn(Var, &str) -> Ty) -> Result<Ty, TypeError> {
    let fail = |message: String| {
        Err(TypeError {
            node: e.id,
            message,
        })
    };
    Ok(match &e.expr {
        Ast::Literal(l) => match l {
            LiteralValue::Null => Ty::Null,
            LiteralValue::Boolean(_) => Ty::Bool,
            LiteralValue::Int(_) => Ty::Int,
            LiteralValue::UInt(_) => Ty::UInt,
            LiteralValue::Double(_) => Ty::Double,
            LiteralValue::String(_) => Ty::String,
            LiteralValue::Bytes(_) => Ty::Dyn,
        },
        Ast::Ident(name) if name == "op" => Ty::String,
        Ast::Select(s) => match (&s.operand.expr, s.test) {
            (_, true) => Ty::Bool,
            (Ast::Ident(v), false) => match Var::of(v) {
                Some(v) => column(v, &s.field),
                None => Ty::Dyn,
            },
            _ => Ty::Dyn,
        },
        Ast::Call(call) => {
            let name = call.func_name.as_str();
            let mut args: Vec<&IdedExpr> = Vec::new();
            if let Some(t) = &call.target {
                args.push(t);
            }
            args.extend(call.args.iter());
            let mut tys = Vec::with_capacity(args.len());
            for a in &args {
                tys.push(infer(a, column)?);
            }
            let known = |t: Ty| t != Ty::Dyn;
            match (name, tys.as_slice()) {
                (ops::LOGICAL_AND | ops::LOGICAL_OR, [a, b]) => {
                    for t in [a, b] {
                        if known(*t) && *t != Ty::Bool {
                            let op = if name == ops::LOGICAL_AND { "&&" } else { "||" };
                            return fail(format!(
                                "`{op}` needs true or false on both sides, not {}",
                                t.name()
                            ));
                        }
                    }
                    Ty::Bool
                }
                (ops::LOGICAL_NOT, [a]) => {
                    if known(*a) && *a != Ty::Bool {
                        return fail(format!("`!` needs true or false, not {}", a.name()));
                    }
                    Ty::Bool
                }
                (ops::NEGATE, [a]) => {
                    if known(*a) && !matches!(a, Ty::Int | Ty::Double) {
                        return fail(format!("`-` needs an int or a double, not {}", a.name()));
                    }
                    *a
                }
                (ops::CONDITIONAL, [c, a, b]) => {
                    if known(*c) && *c != Ty::Bool {
                        return fail(format!(
                            "the condition of `? :` must be true or false, not {}",
                            c.name()
                        ));
                    }
                    match (a, b) {
                        (a, b) if a == b => *a,
                        (Ty::Null, t) | (t, Ty::Null) => *t,
                        _ => Ty::Dyn,
                    }
                }
                (ops::EQUALS | ops::NOT_EQUALS | ops::IN, _) => Ty::Bool,
                (ops::LESS | ops::LESS_EQUALS | ops::GREATER | ops::GREATER_EQUALS, [a, b]) => {
                    let comparable = !known(*a)
                        || !known(*b)
                        || a == b && *a != Ty::Null
                        || a.numeric() && b.numeric();
                    if !comparable {
                        return fail(format!(
                            "{} and {} cannot be compared with `{}`",
                            a.name(),
                            b.name(),
                            operator_text(name)
                        ));
                    }
                    Ty::Bool
                }
                (ops::ADD | ops::SUBSTRACT | ops::MULTIPLY | ops::DIVIDE | ops::MODULO, [a, b]) => {
                    let allowed = |t: Ty| match name {
                        ops::ADD => matches!(t, Ty::Int | Ty::UInt | Ty::Double | Ty::String),
                        ops::MODULO => matches!(t, Ty::Int | Ty::UInt),
                        _ => t.numeric(),
                    };
                    let op = operator_text(name);
                    match (known(*a), known(*b)) {
                        (true, true) if a == b && allowed(*a) => *a,
                        (true, true) => {
                            return fail(format!(
                                "no `{op}` for {} and {}{}",
                                a.name(),
                                b.name(),
                                if a.numeric() && b.numeric() {
                                    " (CEL does not mix number types: convert one with int(), uint() or double())"
                                } else if matches!((a, b), (Ty::String, _) | (_, Ty::String))
                                    && name == ops::ADD
                                {
                                    " (convert with string())"
                                } else {
                                    ""
                                }
                            ))
                        }
                        (true, false) | (false, true) => {
                            let t = if known(*a) { *a } else { *b };
                            if !allowed(t) {
                                return fail(format!("no `{op}` for {}", t.name()));
                            }
                            t
                        }
                        (false, false) => Ty::Dyn,
                    }
                }
                ("size", [a]) => {
                    if matches!(a, Ty::Null | Ty::Bool | Ty::Int | Ty::UInt | Ty::Double) {
                        return fail(format!("size() of {} is not defined", a.name()));
                    }
                    Ty::Int
                }
                ("string", [_]) => Ty::String,
                ("int", [_]) => Ty::Int,
                ("uint", [_]) => Ty::UInt,
                ("double", [_]) => Ty::Double,
                ("bool", [_]) => Ty::Bool,
                ("contains" | "startsWith" | "endsWith" | "matches", [a, b]) => {
                    for t in [a, b] {
                        if known(*t) && *t != Ty::String {
                            return fail(format!("{name}() works on strings, not {}", t.name()));
                        }
                    }
                    Ty::Bool
                }
                _ => Ty::Dyn,
            }
        }
        _ => Ty::Dyn,
    })
}

fn operator_text(function: &str) -> &str {
    function.trim_matches('_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ast(text: &str) -> cel::Program {
        cel::Program::compile(text).expect(text)
    }

    fn strings(_: Var, name: &str) -> Ty {
        match name {
            "id" | "score" => Ty::Int,
            "price" => Ty::Double,
            "active" => Ty::Bool,
            "doc" => Ty::Dyn,
            _ => Ty::String,
        }
    }

    fn ty(text: &str) -> Result<Ty, String> {
        infer(ast(text).expression(), &strings).map_err(|e| e.message)
    }

    #[test]
    fn types_of_expressions() {
        assert_eq!(
            ty("after.first_name + ' ' + after.last_name"),
            Ok(Ty::String)
        );
        assert_eq!(ty("after.score * 2"), Ok(Ty::Int));
        assert_eq!(ty("after.price * 1.1"), Ok(Ty::Double));
        assert_eq!(ty("after.status == 'ACTIVE'"), Ok(Ty::Bool));
        assert_eq!(ty("after.doc.x"), Ok(Ty::Dyn));
        assert_eq!(ty("after.doc + 1"), Ok(Ty::Int));
        assert_eq!(ty("has(after.x) ? after.x : null"), Ok(Ty::String));
        assert_eq!(ty("size(after.name) > 2 && after.active"), Ok(Ty::Bool));
        assert_eq!(ty("string(after.id) + ':'"), Ok(Ty::String));
        assert_eq!(ty("timestamp(after.at)"), Ok(Ty::Dyn));
    }

    #[test]
    fn type_errors_say_what_is_wrong() {
        let e = ty("after.first_name + 1").expect_err("string + int");
        assert!(e.contains("no `+` for string and int"), "{e}");
        assert!(e.contains("string()"), "{e}");
        let e = ty("after.score * 1.5").expect_err("int * double");
        assert!(e.contains("does not mix number types"), "{e}");
        let e = ty("after.name && true").expect_err("string && bool");
        assert!(e.contains("`&&` needs true or false"), "{e}");
        let e = ty("after.active ? 1 : 2 < 'x'").expect_err("int < string");
        assert!(e.contains("cannot be compared"), "{e}");
        let e = ty("size(after.score)").expect_err("size of int");
        assert!(e.contains("size() of int"), "{e}");
        let e = ty("!after.score").expect_err("!int");
        assert!(e.contains("`!` needs"), "{e}");
    }

    #[test]
    fn the_subset_is_translated_and_the_rest_left_to_cel() {
        for yes in [
            "after.a + ' ' + after.b",
            "after.n * 2 - 1",
            "after.s == 'A' || !(after.n > 3)",
            "has(after.x) ? after.x : ''",
            "after.e != null && size(after.e) > 0",
            "after.t in ['A', 'B']",
            "string(after.n) + ':' + op",
            "int(after.s) % 7",
            "after.s.size()",
            "source.ts_ms",
        ] {
            assert!(translate(ast(yes).expression()).is_some(), "{yes}");
        }
        for no in [
            "after",
            "after.doc.x",
            "after.s.startsWith('a')",
            "[1, 2].exists(x, x > 1)",
            "{'a': 1}",
            "b'x'",
            "timestamp(after.t)",
            "after.n in after.list",
        ] {
            assert!(translate(ast(no).expression()).is_none(), "{no}");
        }
    }

    /// A xorshift generator of expressions.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn expr(&mut self, depth: u32, atoms: &[&str], unary: &[&str], binary: &[&str]) -> String {
            if depth == 0 || self.next(3) == 0 {
                return atoms[self.next(atoms.len())].to_owned();
            }
            match self.next(4) {
                0 => {
                    let u = unary[self.next(unary.len())];
                    format!("{u}({})", self.expr(depth - 1, atoms, unary, binary))
                }
                1 => format!(
                    "({}) ? ({}) : ({})",
                    self.expr(depth - 1, atoms, unary, binary),
                    self.expr(depth - 1, atoms, unary, binary),
                    self.expr(depth - 1, atoms, unary, binary)
                ),
                _ => {
                    let op = binary[self.next(binary.len())];
                    let a = self.expr(depth - 1, atoms, unary, binary);
                    if op == "in" {
                        let b = self.expr(0, atoms, unary, binary);
                        let c = self.expr(0, atoms, unary, binary);
                        format!("({a}) in [{b}, {c}]")
                    } else {
                        format!(
                            "({a}) {op} ({})",
                            self.expr(depth - 1, atoms, unary, binary)
                        )
                    }
                }
            }
        }
    }

    /// Generated expressions over generated rows: wherever the direct evaluation answers, the
    /// cel interpreter gives the same value.
    #[test]
    fn direct_evaluation_agrees_with_cel() {
        use super::super::expr::{Bindings, Need, Vars};
        let atoms = [
            "after.i",
            "after.j",
            "after.u",
            "after.d",
            "after.s",
            "after.t",
            "after.n",
            "after.b",
            "after.missing",
            "before.i",
            "op",
            "source.ts_ms",
            "1",
            "-3",
            "0",
            "9223372036854775807",
            "2u",
            "1.5",
            "'x'",
            "''",
            "'é€'",
            "null",
            "true",
            "false",
        ];
        let unary = ["!", "-", "size", "string", "int"];
        let binary = [
            "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in",
        ];
        let rows = [
            json!({"i": 7, "j": -2, "u": u64::MAX, "d": 2.5, "s": "ab", "t": "é€x", "n": null, "b": true}),
            json!({"i": i64::MIN, "j": 0, "u": 3, "d": -0.0, "s": "42", "t": "", "n": null, "b": false}),
            json!({"i": 0, "j": 3, "u": 0, "d": 1e300, "s": "", "t": "ab", "n": 1, "b": true}),
        ];
        let source = json!({"ts_ms": 1_700_000_000_000i64});
        let all = Vars {
            after: Need::Whole,
            before: Need::Whole,
            op: Need::Whole,
            source: Need::Whole,
        };
        let mut gen = Gen(0x2545_f491_4f6c_dd1d);
        let (mut answered, mut total) = (0, 0);
        for _ in 0..4000 {
            let text = gen.expr(3, &atoms, &unary, &binary);
            let Ok(program) = cel::Program::compile(&text) else {
                continue;
            };
            let Some(node) = translate(program.expression()) else {
                continue;
            };
            for row in &rows {
                total += 1;
                let r = Row {
                    after: Some(row),
                    before: None,
                    op: "u",
                    source: Some(&source),
                };
                let Some(direct) = eval(&node, &r) else {
                    continue;
                };
                answered += 1;
                let b = Bindings::new(&all, Some(row), None, "u", Some(&source));
                let interpreted = super::super::expr::Expr::compile(&text)
                    .expect("compiles")
                    .eval_interpreted(&b);
                assert_eq!(
                    interpreted.as_ref().ok(),
                    Some(&direct),
                    "{text} over {row}: cel gave {interpreted:?}, direct {direct}"
                );
            }
        }
        // The comparison means something only if many generated cases were answered directly.
        assert!(
            answered > total / 4,
            "{answered} of {total} answered directly"
        );
    }
}
