//! The subset of Compute Engine list filters the simulator understands:
//! `FIELD = "V"`, `FIELD != "V"`, `FIELD eq "REGEX"`, `FIELD ne "REGEX"`, terms joined by `AND`
//! or by white space, each optionally in parentheses. Fields: `name`, `status`,
//! `canIpForward`, `labels.KEY`. Regexes: literal characters and `.*`. Anything else is refused
//! with 400, as the API refuses what it does not understand.

use super::model::Instance;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Re,
    NotRe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    field: String,
    op: Op,
    value: String,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter(Vec<Term>);

fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '(' | ')' => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut v = String::from("\"");
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            if let Some(n) = chars.next() {
                                v.push(n);
                            }
                        }
                        Some(ch) => v.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(v);
            }
            '!' | '=' => {
                chars.next();
                if c == '!' {
                    if chars.next() != Some('=') {
                        return Err("expected != ".into());
                    }
                    out.push("!=".into());
                } else {
                    out.push("=".into());
                }
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || "()=!\"".contains(ch) {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(w);
            }
        }
    }
    Ok(out)
}

impl Filter {
    /// Parses a filter expression.
    ///
    /// # Errors
    /// A message for the 400 answer.
    pub fn parse(s: &str) -> Result<Self, String> {
        let toks = tokens(s)?;
        let mut terms = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            if toks[i].eq_ignore_ascii_case("AND") {
                i += 1;
                continue;
            }
            if toks[i].eq_ignore_ascii_case("OR") || toks[i].eq_ignore_ascii_case("NOT") {
                return Err(format!("operator {} is not supported", toks[i]));
            }
            let (Some(field), Some(op), Some(value)) =
                (toks.get(i), toks.get(i + 1), toks.get(i + 2))
            else {
                return Err("incomplete expression".into());
            };
            let op = match op.as_str() {
                "=" => Op::Eq,
                "!=" => Op::Ne,
                "eq" => Op::Re,
                "ne" => Op::NotRe,
                other => return Err(format!("unknown operator {other:?}")),
            };
            let known = matches!(field.as_str(), "name" | "status" | "canIpForward")
                || field.strip_prefix("labels.").is_some_and(|k| !k.is_empty());
            if !known {
                return Err(format!("unknown field {field:?}"));
            }
            let value = value.strip_prefix('"').unwrap_or(value).to_string();
            if matches!(op, Op::Re | Op::NotRe) && value.chars().any(|c| "[]{}+?|^$\\".contains(c))
            {
                return Err(format!("regular expression {value:?} is not supported"));
            }
            terms.push(Term {
                field: field.clone(),
                op,
                value,
            });
            i += 3;
        }
        Ok(Self(terms))
    }

    /// True when the instance satisfies every term.
    pub fn matches(&self, inst: &Instance) -> bool {
        self.0.iter().all(|t| {
            let actual: Option<String> = match t.field.as_str() {
                "name" => Some(inst.name.clone()),
                "status" => Some(inst.status.clone()),
                "canIpForward" => Some(inst.can_ip_forward.to_string()),
                f => f
                    .strip_prefix("labels.")
                    .and_then(|k| inst.labels.get(k).cloned()),
            };
            match t.op {
                Op::Eq => actual.as_deref() == Some(t.value.as_str()),
                Op::Ne => actual.as_deref() != Some(t.value.as_str()),
                Op::Re => actual.is_some_and(|a| regex_match(&t.value, &a)),
                Op::NotRe => !actual.is_some_and(|a| regex_match(&t.value, &a)),
            }
        })
    }
}

/// Full match of a pattern made of literal characters, `.` (any one character) and `.*`.
fn regex_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p {
            [] => s.is_empty(),
            ['.', '*', rest @ ..] => (0..=s.len()).any(|k| go(rest, &s[k..])),
            ['.', rest @ ..] => !s.is_empty() && go(rest, &s[1..]),
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        assert!(Filter::parse("labels.cluster = \"demo\" AND name eq \"k8s-.*\"").is_ok());
        assert!(Filter::parse("(labels.cluster = \"demo\") (status != \"TERMINATED\")").is_ok());
        assert!(Filter::parse("zone = \"x\"").is_err());
        assert!(Filter::parse("name = \"a\" OR name = \"b\"").is_err());
        assert!(Filter::parse("name eq \"a[0-9]\"").is_err());
        assert!(Filter::parse("name =").is_err());
        assert!(regex_match("k8s-.*", "k8s-worker-1"));
        assert!(!regex_match("k8s-.*", "web-1"));
        assert!(regex_match("a.c", "abc"));
        assert!(!regex_match("a", "ab"));
    }
}
