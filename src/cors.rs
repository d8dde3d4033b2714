//! Which browser origins besides a site's own may open a socket to it: the site's
//! `allow_cors`, read the way Frappe's web server reads it (protocol §10 #12).
//!
//! Frappe's web server answers CORS requests from the origins listed in `allow_cors`
//! (`site_config.json`, else `common_site_config.json`): `"*"` for any, one origin as a string,
//! or a list of them. A portal or SPA served from such an origin can call the site's API with
//! credentials, so it may open a realtime socket too; Frappe's Node service ignored the key
//! and refused it with `Invalid origin`.

use serde_json::Value;

/// A site's `allow_cors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowCors {
    /// Not set: only the site's own origin.
    #[default]
    Unset,
    /// `"*"`.
    Any,
    /// Origins as written (`https://portal.example.com`), compared without a trailing `/`.
    Origins(Vec<String>),
}

impl AllowCors {
    /// Read a configured value; anything but a string or a list of strings is an error.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(Self::Unset),
            Value::String(origin) if origin == "*" => Ok(Self::Any),
            Value::String(origin) => Ok(Self::Origins(vec![normalise(origin)])),
            Value::Array(items) => {
                let origins = items
                    .iter()
                    .map(|item| item.as_str().map(normalise))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("must be \"*\", an origin, or a list of origins")?;
                Ok(if origins.iter().any(|origin| origin == "*") {
                    Self::Any
                } else {
                    Self::Origins(origins)
                })
            }
            _ => Err("must be \"*\", an origin, or a list of origins".to_owned()),
        }
    }

    pub fn is_set(&self) -> bool {
        *self != Self::Unset
    }

    /// Whether a browser page on `origin` (the `Origin` header) may connect.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Unset => false,
            Self::Any => true,
            Self::Origins(origins) => {
                let origin = normalise(origin);
                origins.contains(&origin)
            }
        }
    }
}

fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_form_frappe_accepts() {
        assert_eq!(AllowCors::from_value(&json!("*")), Ok(AllowCors::Any));
        let one = AllowCors::from_value(&json!("https://Portal.example.com/")).expect("one");
        assert!(one.allows("https://portal.example.com"));
        assert!(!one.allows("https://portal.example.com:8443"));
        assert!(!one.allows("http://portal.example.com"));
        let list = AllowCors::from_value(&json!(["https://a.example", "https://b.example"]))
            .expect("list");
        assert!(list.allows("https://b.example"));
        assert!(!list.allows("https://c.example"));
        assert_eq!(
            AllowCors::from_value(&json!(["https://a.example", "*"])),
            Ok(AllowCors::Any)
        );
        assert!(AllowCors::Any.allows("https://anything.example"));
        assert!(!AllowCors::Unset.allows("https://anything.example"));
    }

    #[test]
    fn other_shapes_are_errors() {
        assert!(AllowCors::from_value(&json!(1)).is_err());
        assert!(AllowCors::from_value(&json!(["https://a.example", 2])).is_err());
        assert!(AllowCors::from_value(&json!({"origin": "x"})).is_err());
    }
}
