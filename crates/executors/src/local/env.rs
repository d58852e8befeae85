//! The environment of a job's process: the worker's own, minus the worker's
//! configuration, plus the step's.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Variables whose names start with this prefix configure the worker itself
/// (master key, database URL, …) and are never passed to a job.
pub const WORKER_ENV_PREFIX: &str = "OPSC_";

/// The environment of a child process: `parent` (usually
/// [`std::env::vars_os`]) without any variable whose name starts with
/// [`WORKER_ENV_PREFIX`], then `extra` (the step's env) on top. A step may set
/// an `OPSC_*` variable explicitly; only inherited ones are dropped.
///
/// ```
/// use std::collections::BTreeMap;
/// use std::ffi::OsString;
/// use opsconductor_executors::local::child_env;
///
/// let parent = [("PATH", "/bin"), ("OPSC_MASTER_KEY", "k")]
///     .map(|(k, v)| (OsString::from(k), OsString::from(v)));
/// let extra = BTreeMap::from([("TOKEN".to_owned(), "t".to_owned())]);
/// let env = child_env(parent, &extra);
/// assert_eq!(env.len(), 2);
/// assert!(!env.contains_key(&OsString::from("OPSC_MASTER_KEY")));
/// ```
pub fn child_env<I>(parent: I, extra: &BTreeMap<String, String>) -> BTreeMap<OsString, OsString>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let mut env: BTreeMap<OsString, OsString> = parent
        .into_iter()
        .filter(|(name, _)| !is_worker_var(name))
        .collect();
    for (name, value) in extra {
        env.insert(OsString::from(name), OsString::from(value));
    }
    env
}

fn is_worker_var(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WORKER_ENV_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn drops_worker_variables_and_keeps_the_rest() {
        let parent = os(&[
            ("PATH", "/usr/bin:/bin"),
            ("OPSC_MASTER_KEY", "secret"),
            ("OPSC_", "empty suffix"),
            ("OPSCX", "not the prefix"),
            ("opsc_lower", "case matters"),
            ("HOME", "/root"),
        ]);
        let env = child_env(parent, &BTreeMap::new());
        let names: Vec<_> = env
            .keys()
            .map(|k| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["HOME", "OPSCX", "PATH", "opsc_lower"]);
    }

    #[test]
    fn step_env_overrides_and_may_set_opsc_names() {
        let parent = os(&[("HOME", "/root"), ("OPSC_TOKEN", "worker")]);
        let extra = BTreeMap::from([
            ("HOME".to_owned(), "/srv".to_owned()),
            ("OPSC_TOKEN".to_owned(), "step".to_owned()),
            ("VALUE".to_owned(), "a 'b' \"c\" $d".to_owned()),
        ]);
        let env = child_env(parent, &extra);
        assert_eq!(env.get(OsStr::new("HOME")), Some(&OsString::from("/srv")));
        assert_eq!(
            env.get(OsStr::new("OPSC_TOKEN")),
            Some(&OsString::from("step"))
        );
        assert_eq!(
            env.get(OsStr::new("VALUE")),
            Some(&OsString::from("a 'b' \"c\" $d"))
        );
    }

    #[test]
    fn non_utf8_names_and_values_pass_through() {
        use std::os::unix::ffi::OsStringExt;
        let name = OsString::from_vec(vec![b'X', 0xff]);
        let value = OsString::from_vec(vec![0xfe, b'v']);
        let worker = OsString::from_vec(vec![b'O', b'P', b'S', b'C', b'_', 0xff]);
        let env = child_env(
            [(name.clone(), value.clone()), (worker, value.clone())],
            &BTreeMap::new(),
        );
        assert_eq!(env.len(), 1);
        assert_eq!(env.get(&name), Some(&value));
    }
}
