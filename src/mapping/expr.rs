//! Mapping expressions: CEL programs over one change event.
//!
//! An expression sees four variables: `after` (the new row, a map; for a delete, the old row),
//! `before` (the old row when the source sent one, else `null`), `op` (`"r"`, `"c"`, `"u"`,
//! `"d"`) and `source` (the envelope's `source` object: `ts_ms`, `table`, `db`, positions…).
//! Values arrive as the envelope encodes them: integers as `int`, exact decimals and
//! timestamps as strings, booleans as `bool`, JSON documents as maps and lists.
//!
//! Programs are compiled once, when the config is loaded; a syntax error names the expression
//! and the position. An expression within the common subset [`super::direct`] evaluates is
//! evaluated directly over the event's JSON; the cel interpreter runs the rest, and answers
//! wherever the direct evaluation does not (so values and errors are CEL's). Evaluation errors (a missing field, `null + "x"`, an operator the values
//! do not support) make the event a dead letter, with the expression and the message.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use serde_json::Value as J;

use super::direct::{self, Node, Row};

/// The variables an expression may use.
pub const VARIABLES: [&str; 4] = ["after", "before", "op", "source"];

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled expression and its text (for messages).
pub struct Expr {
    text: String,
    program: cel::Program,
    vars: Vars,
    /// The expression as a directly evaluated tree, when it is in that subset.
    direct: Option<Node>,
}

/// How much of one variable expressions read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Need {
    #[default]
    Nothing,
    /// Only these fields, as `var.field`.
    Fields(BTreeSet<String>),
    /// The value itself (`size(after)`, `has(after.x)`, `op`).
    Whole,
}

impl Need {
    fn union(self, other: Need) -> Need {
        match (self, other) {
            (Need::Whole, _) | (_, Need::Whole) => Need::Whole,
            (Need::Fields(mut a), Need::Fields(b)) => {
                a.extend(b);
                Need::Fields(a)
            }
            (Need::Nothing, n) | (n, Need::Nothing) => n,
        }
    }

    fn of(expr: &str, var: &str, referenced: bool) -> Need {
        if !referenced {
            return Need::Nothing;
        }
        match fields_of(expr, var) {
            Some(fields) if !fields.is_empty() => Need::Fields(fields.into_iter().collect()),
            _ => Need::Whole,
        }
    }

    pub fn any(&self) -> bool {
        *self != Need::Nothing
    }
}

/// What of the four variables expressions read: only that is converted for an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    pub after: Need,
    pub before: Need,
    pub op: Need,
    pub source: Need,
}

impl Vars {
    pub fn union(self, other: Vars) -> Vars {
        Vars {
            after: self.after.union(other.after),
            before: self.before.union(other.before),
            op: self.op.union(other.op),
            source: self.source.union(other.source),
        }
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

impl Expr {
    /// Compiles `text`. The error quotes the expression and says where it went wrong, and
    /// names any variable other than `after`, `before`, `op` and `source`.
    pub fn compile(text: &str) -> Result<Expr, String> {
        if text.trim().is_empty() {
            return Err("the expression is empty".into());
        }
        let program = std::panic::catch_unwind(|| ENV.compile(text))
            .map_err(|_| format!("expression {text:?} cannot be parsed"))?
            .map_err(|e| {
                let detail = e
                    .errors
                    .iter()
                    .map(|e| {
                        format!(
                            "at line {}, column {}: {}",
                            e.pos.0.max(1),
                            e.pos.1 + 1,
                            e.msg
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                format!("CEL syntax error in {text:?} {detail}")
            })?;
        let references = program.references();
        let mut own = Vec::new();
        direct::macro_variables(program.expression(), &mut own);
        let unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v) && !own.iter().any(|o| o == v))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "expression {text:?} uses unknown variable(s) {}: an expression sees only `after`, `before`, `op` and `source` (a column is `after.column`)",
                unknown.join(", ")
            ));
        }
        let vars = Vars {
            after: Need::of(text, "after", references.has_variable("after")),
            before: Need::of(text, "before", references.has_variable("before")),
            op: if references.has_variable("op") {
                Need::Whole
            } else {
                Need::Nothing
            },
            source: Need::of(text, "source", references.has_variable("source")),
        };
        let direct = direct::translate(program.expression());
        Ok(Expr {
            text: text.to_owned(),
            program,
            vars,
            direct,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn vars(&self) -> Vars {
        self.vars.clone()
    }

    /// The columns the expression reads as `<var>.column` (outside string literals), or
    /// `None` when it uses `<var>` some other way (`size(after)`, `after['x']`), so that which
    /// columns it needs cannot be told.
    pub fn fields_of(&self, var: &str) -> Option<Vec<String>> {
        fields_of(&self.text, var)
    }

    /// The expression's result type where `column` gives the columns' types, or its first type
    /// error, quoting the expression and the position.
    pub fn result_type(
        &self,
        column: &dyn Fn(direct::Var, &str) -> direct::Ty,
    ) -> Result<direct::Ty, String> {
        direct::infer(self.program.expression(), column).map_err(|e| {
            let at = self
                .program
                .source_info()
                .offset_for(e.node)
                .map(|(start, _)| {
                    let before: String = self.text.chars().take(start as usize).collect();
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            format!("CEL type error in {:?}{at}: {}", self.text, e.message)
        })
    }

    /// Whether the expression is evaluated directly (not by the cel interpreter) where it can be.
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Evaluates to a JSON value (the form target values take).
    pub fn eval(&self, event: &Event) -> Result<J, String> {
        if let Some(v) = self.direct.as_ref() {
            if let Some(v) = direct::eval(v, &event.row) {
                return Ok(v);
            }
        }
        self.eval_interpreted(event.bindings())
    }

    /// Evaluates with the direct evaluator only: `None` where it gives no answer.
    pub fn eval_direct(&self, event: &Event) -> Option<J> {
        direct::eval(self.direct.as_ref()?, &event.row)
    }

    /// Evaluates with the cel interpreter only.
    pub fn eval_interpreted(&self, bindings: &Bindings) -> Result<J, String> {
        let value = self.eval_cel(bindings)?;
        value
            .json()
            .map_err(|e| format!("expression {:?}: {e}", self.text))
    }

    /// Evaluates a condition: it must yield a boolean.
    pub fn eval_bool(&self, event: &Event) -> Result<bool, String> {
        let direct = self.direct.as_ref();
        if let Some(b) = direct.and_then(|n| direct::eval_bool(n, &event.row)) {
            return Ok(b);
        }
        match self.eval_cel(event.bindings())? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "expression {:?} must be true or false, it gave {other:?}",
                self.text
            )),
        }
    }

    fn eval_cel(&self, bindings: &Bindings) -> Result<cel::Value, String> {
        self.program
            .execute(&bindings.ctx)
            .map_err(|e| format!("expression {:?}: {e}", self.text))
    }
}

/// One event as expressions read it: the rows for direct evaluation, and the interpreter's
/// variables, built when an expression first needs them (once for all the event's expressions).
pub struct Event<'v> {
    vars: &'v Vars,
    row: Row<'v>,
    bindings: std::cell::OnceCell<Bindings<'v>>,
}

impl<'v> Event<'v> {
    /// `after` is the row expressions read (for a delete: the old row). `vars` says what the
    /// interpreter needs bound.
    pub fn new(
        vars: &'v Vars,
        after: Option<&'v J>,
        before: Option<&'v J>,
        op: &'v str,
        source: Option<&'v J>,
    ) -> Event<'v> {
        Event {
            vars,
            row: Row {
                after,
                before,
                op,
                source,
            },
            bindings: std::cell::OnceCell::new(),
        }
    }

    fn bindings(&self) -> &Bindings<'v> {
        self.bindings.get_or_init(|| {
            let r = self.row;
            Bindings::new(self.vars, r.after, r.before, r.op, r.source)
        })
    }
}

/// One event's variables, converted once (and only those some expression uses) for every
/// expression of the event. Strings are borrowed from the envelope, not copied.
pub struct Bindings<'v> {
    ctx: cel::Context<'v, 'v>,
}

impl<'v> Bindings<'v> {
    /// `after` is the row expressions read (for a delete: the old row). `source` is computed
    /// only when an expression reads it.
    pub fn new(
        vars: &Vars,
        after: Option<&'v J>,
        before: Option<&'v J>,
        op: &'v str,
        source: Option<&'v J>,
    ) -> Bindings<'v> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        bind(&mut ctx, "after", &vars.after, after);
        bind(&mut ctx, "before", &vars.before, before);
        if vars.op.any() {
            ctx.add_variable_as_val("op", Box::new(CelString::from(op)));
        }
        bind(&mut ctx, "source", &vars.source, source);
        Bindings { ctx }
    }
}

/// Binds what expressions read of `var`. A field read as `var.field` is bound as the variable
/// named `var.field` (CEL resolves a qualified name to the longest bound prefix), so that a
/// row is neither converted whole nor looked up as a map: only the fields read are. A field
/// the row lacks is left unbound (reading it is an error, as for a missing key).
fn bind<'v>(ctx: &mut cel::Context<'v, 'v>, var: &str, need: &Need, value: Option<&'v J>) {
    match (need, value) {
        (Need::Nothing, _) => {}
        (Need::Fields(fields), Some(J::Object(row))) => {
            for f in fields {
                if let Some(v) = row.get(f) {
                    ctx.add_variable_as_val(format!("{var}.{f}"), to_val(v));
                }
            }
        }
        (_, value) => ctx.add_variable_as_val(
            var.to_owned(),
            value.map(to_val).unwrap_or_else(|| Box::new(CelNull)),
        ),
    }
}

/// JSON → a CEL value borrowing its strings: integers as `int` (or `uint` beyond i64), other
/// numbers as `double`.
fn to_val(v: &J) -> Box<dyn Val + '_> {
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        J::String(s) => Box::new(CelString::from(s.as_str())),
        J::Array(items) => Box::new(CelList::from(items.iter().map(to_val).collect::<Vec<_>>())),
        J::Object(map) => Box::new(CelMap::from(
            map.iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

fn fields_of(text: &str, var: &str) -> Option<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let chars: Vec<char> = text.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            // Skip a string literal (with escapes).
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after_dot = start > 0 && chars[start - 1] == '.';
            if word == var && !after_dot {
                // `has(var.x)` tests the map for the field: it needs the whole value.
                let before: String = chars[..start].iter().collect();
                if before.trim_end().ends_with("has(") {
                    return None;
                }
                if chars.get(i) == Some(&'.') {
                    let f = i + 1;
                    let mut j = f;
                    while j < chars.len() && ident(chars[j]) {
                        j += 1;
                    }
                    if j == f {
                        return None;
                    }
                    fields.push(chars[f..j].iter().collect());
                    i = j;
                } else {
                    return None;
                }
            }
            continue;
        }
        i += 1;
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static ALL: LazyLock<Vars> = LazyLock::new(|| Vars {
        after: Need::Whole,
        before: Need::Whole,
        op: Need::Whole,
        source: Need::Whole,
    });

    static SOURCE: LazyLock<J> =
        LazyLock::new(|| json!({"ts_ms": 1_700_000_000_123i64, "table": "users"}));

    fn bind(after: &J) -> Event<'_> {
        Event::new(&ALL, Some(after), None, "c", Some(&SOURCE))
    }

    #[test]
    fn expressions_compute_values() {
        let row = json!({"first_name": "Ada", "last_name": "Lovelace", "status": "ACTIVE", "n": 41, "big": u64::MAX});
        let b = bind(&row);
        let e = |s: &str| Expr::compile(s).expect(s).eval(&b).expect(s);
        assert_eq!(
            e("after.first_name + ' ' + after.last_name"),
            json!("Ada Lovelace")
        );
        assert_eq!(e("after.status == 'ACTIVE'"), json!(true));
        assert_eq!(e("after.n + 1"), json!(42));
        assert_eq!(e("after.big"), json!(u64::MAX));
        assert_eq!(e("source.ts_ms"), json!(1_700_000_000_123i64));
        assert_eq!(e("op"), json!("c"));
        assert_eq!(e("before"), J::Null);
        assert_eq!(e("'lms'"), json!("lms"));
        assert_eq!(
            e("has(after.middle_name) ? after.middle_name : ''"),
            json!("")
        );
        assert!(Expr::compile("after.status == 'ACTIVE'")
            .expect("compiles")
            .eval_bool(&b)
            .expect("bool"));
    }

    #[test]
    fn errors_name_the_expression_and_position() {
        let err = Expr::compile("after.first_name +").expect_err("syntax");
        assert!(
            err.contains("CEL syntax error in \"after.first_name +\""),
            "{err}"
        );
        assert!(err.contains("column"), "{err}");
        let err = Expr::compile("row.name").expect_err("unknown variable");
        assert!(err.contains("unknown variable(s) row"), "{err}");
        let row = json!({"first_name": null});
        let b = bind(&row);
        let err = Expr::compile("after.first_name + 'x'")
            .expect("compiles")
            .eval(&b)
            .expect_err("null + string");
        assert!(err.contains("after.first_name + 'x'"), "{err}");
        let err = Expr::compile("after.missing")
            .expect("compiles")
            .eval(&b)
            .expect_err("no such key");
        assert!(err.contains("after.missing"), "{err}");
        let err = Expr::compile("1 + 1")
            .expect("compiles")
            .eval_bool(&b)
            .expect_err("not a bool");
        assert!(err.contains("must be true or false"), "{err}");
    }

    #[test]
    fn common_expressions_skip_the_interpreter() {
        for text in [
            "after.first_name + ' ' + after.last_name",
            "after.status == 'ACTIVE'",
            "after.score * 2",
            "after.user_type + ':' + string(after.id)",
            "after.email != null && size(after.email) > 0",
            "after.status != 'DELETED'",
            "source.commit_time",
            "false",
        ] {
            assert!(Expr::compile(text).expect(text).is_direct(), "{text}");
        }
        assert!(!Expr::compile("after.tags.exists(t, t == 'x')")
            .expect("compiles")
            .is_direct());
    }

    #[test]
    fn fields_read_by_an_expression() {
        let e = Expr::compile("after.first_name + ' after.x ' + after.last_name").expect("ok");
        assert_eq!(
            e.fields_of("after"),
            Some(vec!["first_name".to_owned(), "last_name".to_owned()])
        );
        assert_eq!(e.fields_of("before"), Some(vec![]));
        let e = Expr::compile("size(after) > 2").expect("ok");
        assert_eq!(e.fields_of("after"), None);
        let e = Expr::compile("after.y && has( after.x)").expect("ok");
        assert_eq!(e.fields_of("after"), None);
        let e = Expr::compile("source.after.y == 1").expect("ok");
        assert_eq!(e.fields_of("after"), Some(vec![]));
    }

    #[test]
    fn invalid_expressions_never_panic() {
        // A small property test: arbitrary byte soup built from CEL's own tokens either
        // compiles or is refused with a message, never a panic.
        let tokens = [
            "after", ".", "x", "+", "(", ")", "'s'", "1", "==", "?", ":", "[", "]", "{", "}", ",",
            "!", "&&", "||", "has", "size", "\"", "\\", "in", "-", "0x", "1.5e", "b'", "r\"",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(tokens[(seed % tokens.len() as u64) as usize]);
            }
            seed = seed.wrapping_add(0x632b_e59b_d9b4_e019);
            if let Ok(e) = Expr::compile(&text) {
                let row = json!({"x": 1});
                let _ = e.eval(&bind(&row));
            }
        }
    }
}
