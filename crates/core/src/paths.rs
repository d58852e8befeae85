//! Paths built from templates stay where the job author put them.
//!
//! A `copy.dest` (or `workdir`) like `/srv/app/{{ params.name }}.conf`
//! names a directory the author wrote (`/srv/app/`) and a part a submitter
//! fills in. The rendered path is normalised lexically (`.` and `..`
//! resolved, repeated `/` collapsed) and must stay inside the author's
//! directory: `name = ../../etc/passwd` is refused at submit, with the field
//! named, instead of overwriting `/etc/passwd`. A template that starts with
//! a substitution gives the submitter no directory at all, so its rendered
//! path must be relative and must not climb out (`..`); an author who wants
//! to accept any absolute path says so by writing the leading `/`.

/// The directory the author wrote: the literal text before the first
/// template tag, up to its last `/` (`""` when the template starts with a
/// tag or has no `/` before it). `None` if the template has no tags (the
/// whole path is the author's).
fn author_dir(template: &str) -> Option<&str> {
    let tag = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|t| template.find(t))
        .min()?;
    let literal = &template[..tag];
    Some(match literal.rfind('/') {
        Some(i) => &literal[..=i],
        None => "",
    })
}

/// Lexical normalisation: `Err` if a `..` climbs above the start of a
/// relative path (or is dropped above `/` for an absolute one: that is
/// reported too, since the author never wrote it).
fn normalise(path: &str) -> Result<String, String> {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(if absolute {
                        "'..' climbs above '/'".to_string()
                    } else {
                        "'..' climbs above the directory it is relative to".to_string()
                    });
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    Ok(match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    })
}

/// A rendered path that was refused, with the field it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    /// The step's field: `copy.dest` or `workdir`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// [`confine`] for a named field, so that callers need not parse messages
/// to say which field was refused.
pub fn confine_field(
    field: &'static str,
    template: &str,
    rendered: &str,
) -> Result<String, PathError> {
    confine(template, rendered).map_err(|message| PathError { field, message })
}

/// Checks a rendered path against its template and returns it normalised.
/// The error says what is wrong; the caller names the field.
pub fn confine(template: &str, rendered: &str) -> Result<String, String> {
    if rendered.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if rendered.trim().is_empty() {
        return Err("is empty after rendering".into());
    }
    let Some(dir) = author_dir(template) else {
        // No substitution: what the author wrote is what they meant.
        return Ok(rendered.to_string());
    };
    let norm = normalise(rendered).map_err(|why| {
        format!(
            "'{rendered}' is refused: {why} (a parameter may not leave the directory the job names)"
        )
    })?;
    if dir.is_empty() {
        if norm.starts_with('/') {
            return Err(format!(
                "'{rendered}' is an absolute path made by a substitution; the job names no directory \
                 here (write the directory in the job, e.g. `/srv/app/{{{{ params.file }}}}`, or a leading `/` \
                 to accept any absolute path)"
            ));
        }
        return Ok(norm);
    }
    // The author's directory, normalised the same way (it ends with '/').
    let base = normalise(dir).unwrap_or_else(|_| dir.to_string());
    // `norm == base` (e.g. `x/..`) names the directory itself, not
    // something in it: refused as well.
    let inside = match base.as_str() {
        "/" => norm.starts_with('/') && norm != "/",
        "." => !norm.starts_with('/') && norm != ".",
        b => norm.starts_with(&format!("{b}/")),
    };
    if !inside {
        return Err(format!(
            "'{rendered}' resolves to '{norm}', outside '{dir}', the directory the job names \
             (a parameter may not leave it with '..')"
        ));
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::confine;

    #[test]
    fn hostile_parameters_are_refused() {
        let t = "/srv/app/{{ params.name }}";
        assert_eq!(confine(t, "/srv/app/x.conf").unwrap(), "/srv/app/x.conf");
        assert_eq!(confine(t, "/srv/app/a/../b").unwrap(), "/srv/app/b");
        assert_eq!(confine(t, "/srv/app/./c//d").unwrap(), "/srv/app/c/d");
        for bad in [
            "/srv/app/../../etc/passwd",
            "/srv/app/a/../../b",
            "/srv/app/..",
            "/srv/app/x/..",
            "/srv/app/../app2/x",
        ] {
            assert!(confine(t, bad).is_err(), "{bad}");
        }
        // A substitution in the middle of a name.
        let t = "/srv/app-{{ params.v }}/RELEASE";
        assert_eq!(
            confine(t, "/srv/app-1/RELEASE").unwrap(),
            "/srv/app-1/RELEASE"
        );
        assert!(confine(t, "/srv/app-/../../etc/RELEASE").is_err());
        // The whole path from a parameter.
        let t = "{{ params.path }}";
        assert!(confine(t, "/etc/passwd").is_err());
        assert!(confine(t, "../x").is_err());
        assert_eq!(confine(t, "a/b").unwrap(), "a/b");
        // A relative directory.
        let t = "conf/{{ params.f }}";
        assert!(confine(t, "conf/../../x").is_err());
        assert_eq!(confine(t, "conf/x").unwrap(), "conf/x");
        // The author opted into any absolute path.
        assert_eq!(confine("/{{ params.p }}", "/etc/x").unwrap(), "/etc/x");
        assert!(confine("/{{ params.p }}", "/../x").is_err());
        // No substitution: the author's own text.
        assert_eq!(confine("/tmp/x", "/tmp/x").unwrap(), "/tmp/x");
        assert!(confine(t, "a\0b").is_err());
    }
}
