//! Object key templates of blob columns: `files/{id}/{sha256}{ext}`, checked when the config
//! loads and rendered from each row's values.

use serde_json::Value as J;

/// An object key template: literal text and `{name}` placeholders (source columns, `sha256`,
/// `ext`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl KeyTemplate {
    pub fn parse(text: &str) -> Result<KeyTemplate, String> {
        if text.trim().is_empty() {
            return Err(
                "the key template is empty: e.g. \"sessions/{id}.pdf\" or \"sha256/{sha256}\""
                    .into(),
            );
        }
        if text.starts_with('/') {
            return Err(format!(
                "{text:?} starts with '/': object keys are relative"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?} has a '{{' without its '}}'"));
            };
            let name = &rest[open + 1..open + close];
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!(
                    "{text:?}: {{{name}}} is not a column name (placeholders are {{column}}, {{sha256}} and {{ext}})"
                ));
            }
            parts.push(Part::Field(name.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?} has a '}}' without its '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(KeyTemplate { parts })
    }

    /// The source columns the template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) if f != "sha256" && f != "ext" => Some(f.as_str()),
            _ => None,
        })
    }

    /// Renders the row's columns, leaving `{sha256}` and `{ext}` for [`KeyTemplate::finish`].
    /// A missing or null column is an error naming it. Values are made safe for a key: `/`
    /// and anything but letters, digits, `-`, `_` and `.` become `_` (a value must not add
    /// path segments).
    pub fn render(&self, row: &serde_json::Map<String, J>) -> Result<PartialKey, String> {
        let mut out = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            out.push(match p {
                Part::Text(t) => PartialPart::Text(t.clone()),
                Part::Field(f) if f == "sha256" => PartialPart::Sha256,
                Part::Field(f) if f == "ext" => PartialPart::Ext,
                Part::Field(f) => {
                    let text = match row.get(f) {
                        None | Some(J::Null) => {
                            return Err(format!(
                                "the object key template reads column {f:?}, which the event does not carry (or is null)"
                            ))
                        }
                        Some(J::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    };
                    PartialPart::Text(safe_segment(&text))
                }
            });
        }
        Ok(PartialKey(out))
    }
}

/// A rendered key still waiting for the content's hash and the file's extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialKey(Vec<PartialPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum PartialPart {
    Text(String),
    Sha256,
    Ext,
}

impl PartialKey {
    /// Whether the key depends on the content (`{sha256}`): then it is known only after
    /// hashing.
    pub fn has_sha256(&self) -> bool {
        self.0.contains(&PartialPart::Sha256)
    }

    /// The object key, given the content's hex SHA-256 and the extension (with its dot, or
    /// empty).
    pub fn finish(&self, sha256: &str, ext: &str) -> String {
        let mut key = String::new();
        for p in &self.0 {
            match p {
                PartialPart::Text(t) => key.push_str(t),
                PartialPart::Sha256 => key.push_str(sha256),
                PartialPart::Ext => key.push_str(ext),
            }
        }
        key
    }
}

fn safe_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    if out.chars().all(|c| c == '.') {
        // `.` and `..` would be path segments of their own.
        out = out.replace('.', "_");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_templates_render_row_values_safely() {
        let t = KeyTemplate::parse("sessions/{id}/{name}{ext}").expect("parses");
        assert_eq!(t.columns().collect::<Vec<_>>(), vec!["id", "name"]);
        let row = json!({"id": 42, "name": "../etc/passwd"});
        let key = t.render(row.as_object().expect("row")).expect("renders");
        assert_eq!(key.finish("ab", ".pdf"), "sessions/42/.._etc_passwd.pdf");
        let row = json!({"id": 1, "name": ".."});
        let key = t.render(row.as_object().expect("row")).expect("renders");
        assert_eq!(key.finish("ab", ""), "sessions/1/__");
        let ca = KeyTemplate::parse("sha256/{sha256}").expect("parses");
        assert_eq!(
            ca.render(&serde_json::Map::new())
                .expect("renders")
                .finish("00ff", ".x"),
            "sha256/00ff"
        );
        let err = t
            .render(json!({"id": null}).as_object().expect("row"))
            .expect_err("null");
        assert!(err.contains("reads column \"id\""), "{err}");
    }

    #[test]
    fn bad_key_templates_are_refused() {
        for (text, says) in [
            ("", "empty"),
            ("/a/{id}", "starts with '/'"),
            ("a/{id", "without its '}'"),
            ("a/id}", "without its '{'"),
            ("a/{i d}", "not a column name"),
        ] {
            let err = KeyTemplate::parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
