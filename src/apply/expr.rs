//! Mapping expressions: CEL programs over one change event.
//!
//! An expression sees four variables: `after` (the new row, a map; for a delete, the old row),
//! `before` (the old row when the source sent one, else `null`), `op` (`"r"`, `"c"`, `"u"`,
//! `"d"`) and `source` (the envelope's `source` object: `ts_ms`, `table`, `db`, positions…).
//! Values arrive as the envelope encodes them: integers as `int`, exact decimals and
//! timestamps as strings, booleans as `bool`, JSON documents as maps and lists.
//!
//! Programs are compiled once, when the config is loaded; a syntax error names the expression
//! and the position. Evaluation errors (a missing field, `null + "x"`, an operator the values
//! do not support) make the event a dead letter, with the expression and the message.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value as J;

/// The variables an expression may use.
pub const VARIABLES: [&str; 4] = ["after", "before", "op", "source"];

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled expression and its text (for messages).
pub struct Expr {
    text: String,
    program: cel::Program,
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
        let unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "expression {text:?} uses unknown variable(s) {}: an expression sees only `after`, `before`, `op` and `source` (a column is `after.column`)",
                unknown.join(", ")
            ));
        }
        Ok(Expr {
            text: text.to_owned(),
            program,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates to a JSON value (the form target values take).
    pub fn eval(&self, bindings: &Bindings) -> Result<J, String> {
        let value = self.eval_cel(bindings)?;
        value
            .json()
            .map_err(|e| format!("expression {:?}: {e}", self.text))
    }

    /// Evaluates a condition: it must yield a boolean.
    pub fn eval_bool(&self, bindings: &Bindings) -> Result<bool, String> {
        match self.eval_cel(bindings)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "expression {:?} must be true or false, it gave {other:?}",
                self.text
            )),
        }
    }

    fn eval_cel(&self, bindings: &Bindings) -> Result<cel::Value, String> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.add_variable_from_value("after", bindings.after.clone());
        ctx.add_variable_from_value("before", bindings.before.clone());
        ctx.add_variable_from_value("op", bindings.op.clone());
        ctx.add_variable_from_value("source", bindings.source.clone());
        self.program
            .execute(&ctx)
            .map_err(|e| format!("expression {:?}: {e}", self.text))
    }
}

/// One event's variables, converted once for every expression of the event.
pub struct Bindings {
    after: cel::Value,
    before: cel::Value,
    op: cel::Value,
    source: cel::Value,
}

impl Bindings {
    /// `after` is the row expressions read (for a delete: the old row).
    pub fn new(after: Option<&J>, before: Option<&J>, op: &str, source: Option<&J>) -> Bindings {
        let conv = |v: Option<&J>| v.map(to_cel).unwrap_or(cel::Value::Null);
        Bindings {
            after: conv(after),
            before: conv(before),
            op: cel::Value::String(Arc::new(op.to_owned())),
            source: conv(source),
        }
    }
}

/// JSON → CEL: integers as `int` (or `uint` beyond i64), other numbers as `double`.
pub fn to_cel(v: &J) -> cel::Value {
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        J::Object(map) => {
            let m: HashMap<String, cel::Value> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bind(after: J) -> Bindings {
        Bindings::new(
            Some(&after),
            None,
            "c",
            Some(&json!({"ts_ms": 1_700_000_000_123i64, "table": "users"})),
        )
    }

    #[test]
    fn expressions_compute_values() {
        let row = json!({"first_name": "Ada", "last_name": "Lovelace", "status": "ACTIVE", "n": 41, "big": u64::MAX});
        let b = bind(row);
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
        let b = bind(json!({"first_name": null}));
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
                let b = bind(json!({"x": 1}));
                let _ = e.eval(&b);
            }
        }
    }
}
