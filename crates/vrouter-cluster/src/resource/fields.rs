//! Reading a manifest's JSON tree field by field, with the path of every field in errors.
//!
//! Resources are read from a `serde_json::Value` (YAML documents are converted to it) rather
//! than derived `Deserialize`, so that every error names its field path
//! (`spec.ingress[0].destination.ports[1]`), a field Calico has but vrouter does not support
//! is refused with the reason, and an unknown field is refused with the list of valid ones.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use vrouter_types::Ipv4Prefix;

use crate::selector::Selector;

/// A field-level error: the field's path and what is wrong (with the valid values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

pub type FResult<T> = Result<T, FieldError>;

pub fn err<T>(path: impl Into<String>, message: impl Into<String>) -> FResult<T> {
    Err(FieldError { path: path.into(), message: message.into() })
}

/// `parent.key`, or `key` at the root.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// One JSON object being read: its path, and which fields are valid or refused by name.
pub struct Obj<'a> {
    pub path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// Checks `v` is an object whose every field is in `allowed`. A field in `refused` is
    /// refused with its reason; any other field is unknown (the message lists `allowed`).
    pub fn new(v: &'a Value, path: &str, allowed: &[&str], refused: &[(&str, &str)]) -> FResult<Obj<'a>> {
        let Value::Object(map) = v else {
            return err(path, format!("expected a map with fields {}, found {}", allowed.join(", "), type_name(v)));
        };
        for key in map.keys() {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            if let Some((_, why)) = refused.iter().find(|(k, _)| *k == key) {
                return err(join(path, key), format!("is not supported: {why}"));
            }
            let valid = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return err(join(path, key), format!("unknown field; valid fields here: {valid}"));
        }
        Ok(Obj { path: path.to_string(), map })
    }

    pub fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The field's value; `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn str(&self, key: &str) -> FResult<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => err(self.field(key), format!("expected a string, found {}", type_name(v))),
        }
    }

    pub fn req_str(&self, key: &str) -> FResult<&'a str> {
        match self.str(key)? {
            Some(s) => Ok(s),
            None => err(self.field(key), "is required"),
        }
    }

    pub fn bool(&self, key: &str) -> FResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => err(self.field(key), format!("expected true or false, found {}", type_name(v))),
        }
    }

    /// An integer in `lo..=hi` (a number, or a string of digits as YAML users sometimes quote).
    pub fn int(&self, key: &str, lo: i64, hi: i64) -> FResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => int_value(v, &self.field(key), lo, hi).map(Some),
        }
    }

    pub fn float(&self, key: &str) -> FResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => err(self.field(key), "expected a finite number"),
            },
            Some(v) => err(self.field(key), format!("expected a number, found {}", type_name(v))),
        }
    }

    pub fn obj(&self, key: &str, allowed: &[&str], refused: &[(&str, &str)]) -> FResult<Option<Obj<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Obj::new(v, &self.field(key), allowed, refused).map(Some),
        }
    }

    /// The items of a list field with their paths (`key[i]`); absent = empty.
    pub fn list(&self, key: &str) -> FResult<Vec<(String, &'a Value)>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                Ok(items.iter().enumerate().map(|(i, v)| (format!("{}[{i}]", self.field(key)), v)).collect())
            }
            Some(v) => err(self.field(key), format!("expected a list, found {}", type_name(v))),
        }
    }

    /// A list of strings.
    pub fn str_list(&self, key: &str) -> FResult<Vec<(String, &'a str)>> {
        self.list(key)?
            .into_iter()
            .map(|(p, v)| match v {
                Value::String(s) => Ok((p, s.as_str())),
                v => err(p, format!("expected a string, found {}", type_name(v))),
            })
            .collect()
    }

    /// A map of string to string (labels, annotations).
    pub fn str_map(&self, key: &str) -> FResult<BTreeMap<String, String>> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    v => err(
                        format!("{}.{k}", self.field(key)),
                        format!("expected a string value, found {} (quote it)", type_name(v)),
                    ),
                })
                .collect(),
            Some(v) => err(self.field(key), format!("expected a map of strings, found {}", type_name(v))),
        }
    }

    pub fn selector(&self, key: &str) -> FResult<Option<Selector>> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => parse_selector(s, &self.field(key)).map(Some),
        }
    }
}

pub fn int_value(v: &Value, path: &str, lo: i64, hi: i64) -> FResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => err(path, format!("expected an integer {lo}..={hi}, found {}", show(v))),
    }
}

/// A value as the user wrote it, for messages.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        v => v.to_string(),
    }
}

pub fn parse_selector(s: &str, path: &str) -> FResult<Selector> {
    Selector::parse(s).map_err(|e| FieldError { path: path.to_string(), message: format!("bad selector '{s}': {e}") })
}

/// An IPv4 CIDR without host bits; a bare address means /32. IPv6 is refused with the reason.
pub fn parse_cidr(s: &str, path: &str) -> FResult<Ipv4Prefix> {
    if s.contains(':') {
        return err(path, format!("'{s}' is IPv6: vrouter is IPv4 only"));
    }
    s.parse().map_err(|e| FieldError { path: path.to_string(), message: format!("{e}") })
}

pub fn parse_ip(s: &str, path: &str) -> FResult<Ipv4Addr> {
    if s.contains(':') {
        return err(path, format!("'{s}' is IPv6: vrouter is IPv4 only"));
    }
    s.trim()
        .parse()
        .map_err(|_| FieldError { path: path.to_string(), message: format!("'{s}': expected an IPv4 address a.b.c.d") })
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain (what Kubernetes and Calico require of most names): lowercase letters,
/// digits, '-' and '.', at most 253 characters, each dot-separated part starting and ending
/// with a letter or digit.
pub fn check_subdomain(s: &str, path: &str) -> FResult<()> {
    if s.len() <= 253 && s.split('.').all(is_dns_label) {
        return Ok(());
    }
    err(
        path,
        format!(
            "'{s}' is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a \
             letter or digit, at most 253 characters (DNS-1123 subdomain)"
        ),
    )
}

/// A DNS-1123 label (namespaces): as a subdomain part, no dots, at most 63 characters.
pub fn check_label_name(s: &str, path: &str) -> FResult<()> {
    if is_dns_label(s) {
        return Ok(());
    }
    err(
        path,
        format!(
            "'{s}' is not a valid namespace: use lowercase letters, digits and '-', starting and ending with a \
             letter or digit, at most 63 characters (DNS-1123 label)"
        ),
    )
}

/// The name part of a label key, and a label value (which may also be empty).
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes label syntax, as Calico validates it: key `[prefix/]name` (prefix a DNS-1123
/// subdomain, name at most 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric), value
/// empty or like a name.
pub fn check_labels(labels: &BTreeMap<String, String>, path: &str) -> FResult<()> {
    for (k, v) in labels {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
        if !prefix_ok || !is_label_name(name) {
            return err(
                format!("{path}.{k}"),
                "invalid label key: [prefix/]name, name at most 63 of letters, digits, '-', '_', '.', \
                 starting and ending with a letter or digit; prefix a DNS-1123 subdomain",
            );
        }
        if !v.is_empty() && !is_label_name(v) {
            return err(
                format!("{path}.{k}"),
                format!(
                    "invalid label value '{v}': empty, or at most 63 of letters, digits, '-', '_', '.', starting and \
                     ending with a letter or digit"
                ),
            );
        }
    }
    Ok(())
}

/// Checks `s` is one of `valid` (exact spelling, as Calico), naming the valid values.
pub fn one_of<'v>(s: &str, valid: &[&'v str], path: &str) -> FResult<&'v str> {
    valid
        .iter()
        .find(|v| **v == s)
        .copied()
        .map_or_else(|| err(path, format!("'{s}' is not valid; valid values: {}", valid.join(", "))), Ok)
}
