//! Calico label selectors: a recursive-descent parser, an evaluator over a label map, and a
//! canonical printed form.
//!
//! Grammar (Calico's, as `calicoctl` accepts it; `&&` binds tighter than `||`, `!` tighter
//! than both):
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | "all()" | "global()" | "has(" key ")"
//!          | key ( "==" | "!=" ) string
//!          | key [ "not" ] "in" "{" [ string ( "," string )* ] "}"
//!          | key ( "contains" | "starts with" | "ends with" ) string
//! key     := [A-Za-z0-9_./-]+          (a label key, `prefix/name` included)
//! string  := '...' | "..."             (no escapes, as Calico)
//! ```
//!
//! An empty (or all-blank) selector parses as `all()`, as Calico treats an empty policy
//! selector. Label semantics follow Calico: `k == v` and `k in {..}` need the label;
//! `k != v` and `k not in {..}` also hold when the label is absent. `global()` holds for
//! non-namespaced entities only; vrouter has none (no host endpoints or network sets), so it
//! holds for no workload endpoint and no namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    All,
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// A syntax error: where (1-based column, in characters) and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct SelectorError {
    pub column: usize,
    pub expected: String,
    pub found: String,
}

impl Selector {
    /// Parses Calico selector syntax; see the module docs for the grammar.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { chars: text.chars().collect(), pos: 0, terms: 0 };
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let e = p.expr(0)?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.error("'&&', '||' or the end of the selector"));
        }
        Ok(e)
    }

    /// True if an entity with these labels is selected. Workload endpoints and namespaces are
    /// namespaced, so `global()` is false for them.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(&|k| labels.get(k).map(String::as_str))
    }

    /// [`Selector::matches`] over any label lookup (e.g. an endpoint's own labels falling back
    /// to its profiles').
    pub fn matches_with<'a>(&self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Selector::All => true,
            Selector::Global => false,
            Selector::Has(k) => get(k).is_some(),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Selector::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
            Selector::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(e) => !e.matches_with(get),
            Selector::And(a, b) => a.matches_with(get) && b.matches_with(get),
            Selector::Or(a, b) => a.matches_with(get) || b.matches_with(get),
        }
    }

    /// Binding strength for printing: Or 1, And 2, everything else 3.
    fn precedence(&self) -> u8 {
        match self {
            Selector::Or(..) => 1,
            Selector::And(..) => 2,
            _ => 3,
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

/// A string literal in double quotes, or single quotes if it contains a double quote (a
/// literal cannot contain both: the grammar has no escapes).
fn quote(s: &str) -> String {
    if s.contains('"') {
        format!("'{s}'")
    } else {
        format!("\"{s}\"")
    }
}

fn fmt_set(set: &BTreeSet<String>) -> String {
    set.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Selector {
    /// The canonical form: double-quoted values, sets sorted, one space around operators,
    /// parentheses only where precedence needs them (and around a right-nested operand of the
    /// same operator, so that the printed form parses back to the same tree).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sub = |f: &mut fmt::Formatter<'_>, e: &Selector, min: u8| -> fmt::Result {
            if e.precedence() < min {
                write!(f, "({e})")
            } else {
                write!(f, "{e}")
            }
        };
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, s) => write!(f, "{k} in {{{}}}", fmt_set(s)),
            Selector::NotIn(k, s) => write!(f, "{k} not in {{{}}}", fmt_set(s)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(e) => {
                f.write_str("!")?;
                sub(f, e, 3)
            }
            Selector::And(a, b) => {
                sub(f, a, 2)?;
                f.write_str(" && ")?;
                sub(f, b, 3)
            }
            Selector::Or(a, b) => {
                sub(f, a, 1)?;
                f.write_str(" || ")?;
                sub(f, b, 2)
            }
        }
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Nesting deeper than this is refused (a stack guard for hostile input, far beyond any real
/// selector).
const MAX_DEPTH: usize = 100;
/// More terms than this are refused: operator chains nest the tree (left-associative), and
/// printing, evaluating and dropping it recurse.
const MAX_TERMS: usize = 1000;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    terms: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn found(&self) -> String {
        if self.at_end() {
            return "the end of the selector".to_string();
        }
        let rest: String = self.chars[self.pos..].iter().take(12).collect();
        format!("'{rest}'")
    }

    fn error(&self, expected: &str) -> SelectorError {
        SelectorError { column: self.pos + 1, expected: expected.to_string(), found: self.found() }
    }

    /// Consumes `s` (after blanks) if the input continues with it.
    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        let n = s.chars().count();
        if self.chars.len() - self.pos >= n && self.chars[self.pos..self.pos + n].iter().copied().eq(s.chars()) {
            self.pos += n;
            true
        } else {
            false
        }
    }

    /// Consumes the word `w` only if it is not the start of a longer key.
    fn eat_word(&mut self, w: &str) -> bool {
        self.skip_ws();
        let save = self.pos;
        if self.eat(w) && !self.chars.get(self.pos).copied().is_some_and(is_key_char) {
            return true;
        }
        self.pos = save;
        false
    }

    fn expect(&mut self, s: &str, what: &str) -> Result<(), SelectorError> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        let mut left = self.and(depth)?;
        while self.eat("||") {
            let right = self.and(depth)?;
            left = Selector::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        let mut left = self.unary(depth)?;
        while self.eat("&&") {
            let right = self.unary(depth)?;
            left = Selector::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        self.skip_ws();
        // `!has(` and `!=` are distinct: a `!` here starts a term, so `!=` cannot occur.
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary(depth + 1)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        const TERM: &str = "a term: all(), global(), has(key), key == \"value\", key in {..}, '!' or '('";
        self.skip_ws();
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(self.error(&format!("at most {MAX_TERMS} terms in one selector")));
        }
        if self.eat("(") {
            let e = self.expr(depth + 1)?;
            self.expect(")", "')' or an operator ('&&', '||')")?;
            return Ok(e);
        }
        let start = self.pos;
        let key = self.key();
        if key.is_empty() {
            return Err(self.error(TERM));
        }
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&'(') {
            match key.as_str() {
                "all" | "global" => {
                    self.pos += 1;
                    self.expect(")", "')' (all() and global() take no argument)")?;
                    return Ok(if key == "all" { Selector::All } else { Selector::Global });
                }
                "has" => {
                    self.pos += 1;
                    self.skip_ws();
                    let k = self.key();
                    if k.is_empty() {
                        return Err(self.error("a label key inside has(..)"));
                    }
                    self.expect(")", "')' closing has(..)")?;
                    return Ok(Selector::Has(k));
                }
                _ => {
                    self.pos = start;
                    return Err(self.error("a label key followed by an operator, or one of all(), global(), has(..)"));
                }
            }
        }
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("'in' after 'not'"));
            }
            return Ok(Selector::NotIn(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("'with' after 'starts'"));
            }
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("'with' after 'ends'"));
            }
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        Err(self.error("an operator after the label key: ==, !=, in, not in, contains, starts with, ends with"))
    }

    fn key(&mut self) -> String {
        let start = self.pos;
        while self.chars.get(self.pos).copied().is_some_and(is_key_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let q = match self.chars.get(self.pos) {
            Some(&c @ ('\'' | '"')) => c,
            _ => return Err(self.error("a string in single or double quotes")),
        };
        let open = self.pos;
        self.pos += 1;
        let start = self.pos;
        while let Some(&c) = self.chars.get(self.pos) {
            if c == q {
                let s = self.chars[start..self.pos].iter().collect();
                self.pos += 1;
                return Ok(s);
            }
            self.pos += 1;
        }
        self.pos = open;
        Err(self.error(&format!("a closing {q} for this string")))
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect("{", "'{' opening the set of values")?;
        let mut set = BTreeSet::new();
        if self.eat("}") {
            return Ok(set);
        }
        loop {
            set.insert(self.string()?);
            if self.eat("}") {
                return Ok(set);
            }
            self.expect(",", "',' or '}' in the set of values")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_operator_and_evaluates_like_calico() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("k8s.io/role", "x-y")]);
        let cases = [
            ("app == 'web'", true),
            ("app == \"db\"", false),
            ("app != 'db'", true),
            ("missing != 'x'", true),
            ("missing == 'x'", false),
            ("app in {'web', 'db'}", true),
            ("app in {}", false),
            ("app not in {'web'}", false),
            ("missing not in {'web'}", true),
            ("has(app)", true),
            ("!has(app)", false),
            ("has(k8s.io/role) && k8s.io/role == 'x-y'", true),
            ("all()", true),
            ("global()", false),
            ("!global()", true),
            ("", true),
            ("   ", true),
            ("app contains 'e'", true),
            ("app starts with 'we'", true),
            ("app ends with 'eb'", true),
            ("app ends with 'we'", false),
            ("!(app == 'web' && tier == 'frontend')", false),
        ];
        for (s, want) in cases {
            assert_eq!(sel(s).matches(&l), want, "{s}");
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        // a || b && c == a || (b && c)
        let s = sel("a == '1' || b == '1' && c == '1'");
        assert!(matches!(&s, Selector::Or(_, r) if matches!(**r, Selector::And(..))));
        assert!(s.matches(&labels(&[("a", "1")])));
        assert!(!s.matches(&labels(&[("b", "1")])));
        let p = sel("(a == '1' || b == '1') && c == '1'");
        assert!(!p.matches(&labels(&[("a", "1")])));
        // ! binds tighter than &&.
        let n = sel("!has(a) && has(b)");
        assert!(matches!(n, Selector::And(..)));
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        let s = sel("( app=='web'||tier in {'b','a'} )&&!has( x )");
        assert_eq!(s.to_string(), "(app == \"web\" || tier in {\"a\", \"b\"}) && !has(x)");
        assert_eq!(sel(&s.to_string()), s);
        assert_eq!(sel("a == 'say \"hi\"'").to_string(), "a == 'say \"hi\"'");
        assert_eq!(sel("a not in {}").to_string(), "a not in {}");
    }

    #[test]
    fn errors_give_the_column_and_what_was_expected() {
        let e = Selector::parse("app == web").unwrap_err();
        assert_eq!(e.column, 8);
        assert!(e.expected.contains("quotes"), "{e}");
        let e = Selector::parse("app = 'web'").unwrap_err();
        assert_eq!(e.column, 5);
        assert!(e.to_string().contains("=="), "{e}");
        let e = Selector::parse("has(app").unwrap_err();
        assert_eq!(e.column, 8);
        let e = Selector::parse("a == 'x' &&").unwrap_err();
        assert_eq!(e.column, 12);
        assert!(e.found.contains("end"));
        let e = Selector::parse("a == 'x' b == 'y'").unwrap_err();
        assert_eq!(e.column, 10);
        let e = Selector::parse("a == 'x").unwrap_err();
        assert_eq!(e.column, 6);
        assert!(e.expected.contains("closing"));
        let e = Selector::parse("a in {'x' 'y'}").unwrap_err();
        assert_eq!(e.column, 11);
        let e = Selector::parse("foo()").unwrap_err();
        assert_eq!(e.column, 1);
        assert!(Selector::parse("a not 'x'").is_err());
        assert!(Selector::parse(&"(".repeat(500)).is_err());
        assert!(Selector::parse(&"!".repeat(500)).is_err());
    }

    fn arb_selector() -> impl Strategy<Value = Selector> {
        let key = prop::sample::select(vec!["a", "b", "k8s.io/c"]).prop_map(String::from);
        let val = prop::sample::select(vec!["1", "2", "x\"y"]).prop_map(String::from);
        let leaf = prop_oneof![
            Just(Selector::All),
            Just(Selector::Global),
            key.clone().prop_map(Selector::Has),
            (key.clone(), val.clone()).prop_map(|(k, v)| Selector::Eq(k, v)),
            (key.clone(), val.clone()).prop_map(|(k, v)| Selector::Ne(k, v)),
            (key.clone(), prop::collection::btree_set(val.clone(), 0..3)).prop_map(|(k, s)| Selector::In(k, s)),
            (key.clone(), prop::collection::btree_set(val.clone(), 0..3)).prop_map(|(k, s)| Selector::NotIn(k, s)),
            (key, val).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Selector::Not(Box::new(e))),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Selector::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Selector::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = Selector::parse(&s);
        }

        #[test]
        fn selector_like_text_never_panics(s in "[a-c!&|() {}'\",=.hasinot]{0,40}") {
            if let Ok(e) = Selector::parse(&s) {
                // Whatever parses prints to a form that parses back to the same tree.
                prop_assert_eq!(Selector::parse(&e.to_string()).unwrap(), e);
            }
        }

        #[test]
        fn display_round_trips(e in arb_selector()) {
            prop_assert_eq!(Selector::parse(&e.to_string()).unwrap(), e);
        }
    }
}
