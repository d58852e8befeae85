//! `opsconductor run --dry-run`: prints the engine's plan of a run —
//! batches, steps per target, rendered commands, secrets by name.

use opsconductor::{RunPlan, StepPhase};

use crate::output::Out;

/// Prints a plan as text (or JSON with `--json`).
pub fn print_plan(out: &Out, plan: &RunPlan) {
    if out.json {
        out.json(plan);
        return;
    }
    let version = plan.version.map(|v| format!(" v{v}")).unwrap_or_default();
    println!("plan of job {}{version} (dry run: nothing runs)", plan.job);
    let limit = plan
        .max_failures
        .map_or_else(|| "no limit".to_string(), |t| t.0.to_string());
    println!(
        "strategy {} · concurrency {} · max_failures {limit}{}",
        plan.strategy.as_str(),
        plan.concurrency,
        plan.pause
            .as_ref()
            .map(|p| format!(" · pause {p} between batches"))
            .unwrap_or_default()
    );
    if !plan.secrets.is_empty() {
        let names: Vec<String> = plan
            .secrets
            .iter()
            .map(|s| format!("{} (as ${})", s.name, s.env))
            .collect();
        println!("secrets: {}", names.join(", "));
    }
    let total = plan.batches.len();
    for (bi, batch) in plan.batches.iter().enumerate() {
        println!("batch {}/{total}: {}", bi + 1, batch.join(", "));
    }
    println!("steps:");
    for s in &plan.steps {
        let phase = match s.phase {
            StepPhase::Main => String::new(),
            p => format!(" [{}]", p.as_str()),
        };
        let retry = match (&s.retry, s.retry_connection_only) {
            (Some(r), false) => format!(" · retry {} tries", r.attempts),
            (Some(r), true) => format!(" · retry {} tries (connection failures only)", r.attempts),
            (None, _) => String::new(),
        };
        let timeout = s
            .timeout
            .as_ref()
            .map(|t| format!(" · timeout {t}"))
            .unwrap_or_default();
        println!(
            "  {}. {} ({}){phase}{timeout}{retry}",
            s.index + 1,
            s.name,
            s.kind
        );
    }
    for t in &plan.targets {
        println!("{} (batch {}):", t.target, t.batch);
        for c in &t.commands {
            let name = plan
                .steps
                .get(c.step as usize)
                .map_or("?", |s| s.name.as_str());
            let mut lines = c.command.lines();
            println!("  {name}: {}", lines.next().unwrap_or(""));
            for l in lines {
                println!("  {:width$}  {l}", "", width = name.len());
            }
            if !c.env.is_empty() {
                println!(
                    "  {:width$}  env: {}",
                    "",
                    c.env.join(", "),
                    width = name.len()
                );
            }
        }
    }
}
