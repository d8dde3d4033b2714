//! The placeholders of a handler file: `{ticket_id}` names an event argument (by the name the
//! handler gives it), `{message.job_id}` a field inside one, and `{socket.user}`,
//! `{socket.id}`, `{site}`, `{presence.users}`, `{presence.count}`, `{presence.json}` what
//! the server knows. `{{` and `}}` are literal braces.
//!
//! A string that is one placeholder and nothing else stands for the value itself (a number
//! stays a number, an object an object); in any other string a placeholder is written out as
//! text, which only strings, numbers and booleans can be.

use std::collections::HashMap;

use serde_json::Value;

/// Names a handler may not give its arguments: the server's own values live under them.
pub const RESERVED: [&str; 3] = ["socket", "site", "presence"];

/// What the placeholders of one event resolve against.
#[derive(Debug, Default)]
pub struct Vars {
    values: HashMap<String, Value>,
}

impl Vars {
    pub fn set(&mut self, name: &str, value: Value) {
        self.values.insert(name.to_owned(), value);
    }

    /// The value of the argument (or server value) `name`.
    pub fn arg(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    fn get(&self, path: &Path) -> Option<&Value> {
        let mut value = self.values.get(&path.root)?;
        for field in &path.fields {
            value = match value {
                Value::Object(map) => map.get(field)?,
                Value::Array(items) => items.get(field.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    root: String,
    fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Path),
}

/// A string with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    parts: Vec<Part>,
}

impl Text {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let path = parse_path(&name)
                        .ok_or_else(|| format!("`{{{name}}}` in {text:?} is not a placeholder"))?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var(path));
                }
                '}' => return Err(format!("a lone `}}` in {text:?} (write `}}}}`)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// The first names of its placeholders (`message` for `{message.job_id}`).
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Var(path) => Some(path.root.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The text with its placeholders written out; `None` when one has no value, or a value
    /// that cannot be written as text (an object, an array).
    pub fn render(&self, vars: &Vars) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(path) => match vars.get(path)? {
                    Value::String(text) => out.push_str(text),
                    Value::Number(number) => out.push_str(&number.to_string()),
                    Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
                    Value::Null | Value::Array(_) | Value::Object(_) => return None,
                },
            }
        }
        Some(out)
    }

    /// The value of a text that is a single placeholder, as it is (`None` if it has none);
    /// any other text rendered as a string.
    pub fn value(&self, vars: &Vars) -> Option<Value> {
        match self.parts.as_slice() {
            [Part::Var(path)] => vars.get(path).cloned(),
            _ => self.render(vars).map(Value::String),
        }
    }
}

fn parse_path(name: &str) -> Option<Path> {
    let mut segments = name.split('.');
    let root = segments.next().filter(|root| is_name(root))?.to_owned();
    let fields = segments
        .map(|field| is_field(field).then(|| field.to_owned()))
        .collect::<Option<Vec<_>>>()?;
    Some(Path { root, fields })
}

fn is_name(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_field(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A JSON value whose strings may hold placeholders: what an emitted event carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Fixed(Value),
    Text(Text),
    Array(Vec<Data>),
    Object(Vec<(String, Data)>),
}

impl Data {
    pub fn parse(value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(text) => Self::Text(Text::parse(text)?),
            Value::Array(items) => {
                Self::Array(items.iter().map(Self::parse).collect::<Result<_, _>>()?)
            }
            Value::Object(map) => Self::Object(
                map.iter()
                    .map(|(key, value)| Ok((key.clone(), Self::parse(value)?)))
                    .collect::<Result<_, String>>()?,
            ),
            fixed => Self::Fixed(fixed.clone()),
        })
    }

    /// Every placeholder's first name.
    pub fn roots(&self) -> Vec<&str> {
        match self {
            Self::Fixed(_) => Vec::new(),
            Self::Text(text) => text.roots().collect(),
            Self::Array(items) => items.iter().flat_map(Self::roots).collect(),
            Self::Object(fields) => fields.iter().flat_map(|(_, data)| data.roots()).collect(),
        }
    }

    /// The value with its placeholders filled in. A field that is a single placeholder with
    /// no value is left out, as JavaScript leaves out `undefined` (in an array it is `null`);
    /// `None` when a placeholder inside a longer text has no value.
    pub fn render(&self, vars: &Vars) -> Option<Value> {
        Some(match self {
            Self::Fixed(value) => value.clone(),
            Self::Text(text) => text.value(vars).unwrap_or(Value::Null),
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| item.render(vars))
                    .collect::<Option<_>>()?,
            ),
            Self::Object(fields) => {
                let mut map = serde_json::Map::new();
                for (key, data) in fields {
                    if let Self::Text(text) = data
                        && let [Part::Var(path)] = text.parts.as_slice()
                    {
                        if let Some(value) = vars.get(path) {
                            map.insert(key.clone(), value.clone());
                        }
                        continue;
                    }
                    map.insert(key.clone(), data.render(vars)?);
                }
                Value::Object(map)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Vars {
        let mut vars = Vars::default();
        vars.set("ticket_id", json!(42));
        vars.set("message", json!({"job_id": "J-1", "data": {"a": [1, 2]}}));
        vars.set("socket", json!({"user": "jane@example.com"}));
        vars
    }

    #[test]
    fn texts_write_scalars_out() {
        let text = Text::parse("open_doc:HD Ticket/{ticket_id}").expect("parses");
        assert_eq!(
            text.render(&vars()).as_deref(),
            Some("open_doc:HD Ticket/42")
        );
        let path = Text::parse("/jobs/{message.job_id}/sync").expect("parses");
        assert_eq!(path.render(&vars()).as_deref(), Some("/jobs/J-1/sync"));
        let braces = Text::parse("{{literal}} {socket.user}").expect("parses");
        assert_eq!(
            braces.render(&vars()).as_deref(),
            Some("{literal} jane@example.com")
        );
        assert_eq!(
            Text::parse("x{missing}").expect("parses").render(&vars()),
            None
        );
        assert_eq!(
            Text::parse("{message}x").expect("parses").render(&vars()),
            None
        );
    }

    #[test]
    fn bad_placeholders_are_refused() {
        assert!(Text::parse("{}").is_err());
        assert!(Text::parse("{a b}").is_err());
        assert!(Text::parse("a}b").is_err());
        assert!(Text::parse("{1abc}").is_err());
    }

    #[test]
    fn a_lone_placeholder_keeps_its_type_and_a_missing_field_is_left_out() {
        let data = Data::parse(&json!({
            "ticket_id": "{ticket_id}",
            "data": "{message.data}",
            "absent": "{nothing}",
            "label": "ticket {ticket_id}",
            "fixed": [1, true],
        }))
        .expect("parses");
        assert_eq!(
            data.render(&vars()),
            Some(
                json!({"ticket_id": 42, "data": {"a": [1, 2]}, "label": "ticket 42", "fixed": [1, true]})
            )
        );
        let mut roots = data.roots();
        roots.sort_unstable();
        assert_eq!(roots, ["message", "nothing", "ticket_id", "ticket_id"]);
    }
}
