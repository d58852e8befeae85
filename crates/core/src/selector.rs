//! Target selectors: which targets a run goes to.
//!
//! A selector is a list of terms; each string may hold several, separated by
//! commas. Terms: a target name, a glob over names (`web-*`), `tag:NAME`,
//! `*` or `all`; a leading `!` removes what the term matches. The result keeps
//! the order of the known targets and has no duplicates.

use crate::error::{Error, Result};
use crate::model::Target;

/// Resolves `selector` against `known` (which should include the implicit `local`).
pub fn resolve(selector: &[String], known: &[Target]) -> Result<Vec<Target>> {
    let terms: Vec<&str> = selector
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() {
        return Err(Error::validation(
            "targets",
            "empty target selector (name a target, tag:NAME or *)",
        ));
    }
    let mut chosen = vec![false; known.len()];
    for term in &terms {
        let (negate, pat) = match term.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, *term),
        };
        let matches = matches_of(pat, known)?;
        if matches.is_empty() && !negate {
            return Err(no_match(pat, known));
        }
        for i in matches {
            chosen[i] = !negate;
        }
    }
    let out: Vec<Target> = known
        .iter()
        .zip(chosen)
        .filter(|(_, c)| *c)
        .map(|(t, _)| t.clone())
        .collect();
    if out.is_empty() {
        return Err(Error::validation(
            "targets",
            format!("selector '{}' matched no targets", selector.join(",")),
        ));
    }
    Ok(out)
}

/// Checks a selector's syntax without resolving it.
pub fn check_syntax(selector: &[String]) -> Result<()> {
    for term in selector.iter().flat_map(|s| s.split(',')).map(str::trim) {
        let pat = term.strip_prefix('!').unwrap_or(term);
        if let Some(tag) = pat.strip_prefix("tag:") {
            if tag.is_empty() {
                return Err(Error::validation("targets", "'tag:' needs a tag name"));
            }
        } else if pat.contains(':') {
            return Err(Error::validation(
                "targets",
                format!("unknown selector term '{term}' (expected a name, a glob, tag:NAME or *)"),
            ));
        }
    }
    Ok(())
}

fn matches_of(pat: &str, known: &[Target]) -> Result<Vec<usize>> {
    let idx = |f: &dyn Fn(&Target) -> bool| -> Vec<usize> {
        known
            .iter()
            .enumerate()
            .filter(|(_, t)| f(t))
            .map(|(i, _)| i)
            .collect()
    };
    if pat == "*" || pat == "all" {
        return Ok(idx(&|_| true));
    }
    if let Some(tag) = pat.strip_prefix("tag:") {
        if tag.is_empty() {
            return Err(Error::validation("targets", "'tag:' needs a tag name"));
        }
        return Ok(idx(&|t| t.tags.iter().any(|x| x == tag)));
    }
    if pat.contains(':') {
        return Err(Error::validation(
            "targets",
            format!("unknown selector term '{pat}' (expected a name, a glob, tag:NAME or *)"),
        ));
    }
    if pat.contains('*') || pat.contains('?') {
        return Ok(idx(&|t| glob(pat, &t.name)));
    }
    Ok(idx(&|t| t.name == pat))
}

fn no_match(pat: &str, known: &[Target]) -> Error {
    let names: Vec<&str> = known.iter().map(|t| t.name.as_str()).collect();
    let what = if pat.starts_with("tag:") {
        "no target has"
    } else {
        "no target matches"
    };
    Error::validation(
        "targets",
        format!("{what} '{pat}' (known targets: {})", names.join(", ")),
    )
}

/// `*` matches any run of characters, `?` one character.
fn glob(pat: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, tags: &[&str]) -> Target {
        Target {
            name: name.into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            ..Target::local()
        }
    }

    fn names(v: Vec<Target>) -> Vec<String> {
        v.into_iter().map(|t| t.name).collect()
    }

    #[test]
    fn resolves_terms() {
        let known = vec![
            t("local", &[]),
            t("web-1", &["web"]),
            t("web-2", &["web"]),
            t("db-1", &["db"]),
        ];
        let s = |x: &str| vec![x.to_string()];
        assert_eq!(
            names(resolve(&s("tag:web"), &known).unwrap()),
            ["web-1", "web-2"]
        );
        assert_eq!(
            names(resolve(&s("web-*,!web-2"), &known).unwrap()),
            ["web-1"]
        );
        assert_eq!(
            names(resolve(&s("db-1,local"), &known).unwrap()),
            ["local", "db-1"]
        );
        assert_eq!(resolve(&s("*"), &known).unwrap().len(), 4);
        let err = resolve(&s("nope"), &known).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("known targets"),
            "{err}"
        );
        assert!(resolve(&s("tag:"), &known).is_err());
        assert!(resolve(&s("foo:bar"), &known).is_err());
        assert!(resolve(&s("*,!*"), &known).is_err());
    }
}
