//! What `runs show` prints about conditions, outputs and child runs: the
//! parent of a child run, and per step × target the outputs published and
//! the child runs started (skipped reasons are in the results' ERROR column).

use opsconductor::RunDetail;

use crate::output::Out;

/// The parent line of a child run, if it is one.
pub(super) fn parent_line(d: &RunDetail) -> Option<String> {
    let p = d.run.parent.as_ref()?;
    Some(format!(
        "run {} (step {}, target {})",
        p.run,
        p.step + 1,
        p.target
    ))
}

/// Prints the outputs and child runs of the results, if any.
pub(super) fn print_flow(out: &Out, d: &RunDetail) {
    let name = |i: u32| {
        d.run
            .spec
            .steps
            .get(i as usize)
            .map(|s| s.name.as_str())
            .unwrap_or("?")
    };
    let with_outputs: Vec<_> = d.results.iter().filter(|r| !r.outputs.is_empty()).collect();
    if !with_outputs.is_empty() {
        println!();
        println!("{}", out.bold("Outputs:"));
        for r in with_outputs {
            for (k, v) in &r.outputs {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!(
                    "  {}. {} on {}: {k} = {v}",
                    r.step + 1,
                    name(r.step),
                    r.target
                );
            }
        }
    }
    let with_children: Vec<_> = d
        .results
        .iter()
        .filter(|r| !r.children.is_empty())
        .collect();
    if !with_children.is_empty() {
        println!();
        println!("{}", out.bold("Child runs:"));
        for r in with_children {
            for c in &r.children {
                println!(
                    "  {}. {} on {}: run {c}",
                    r.step + 1,
                    name(r.step),
                    r.target
                );
            }
        }
    }
}
