//! What later steps of a run know about earlier ones: per target, each
//! finished step's status, exit code and outputs (`steps.NAME` in templates
//! and conditions) and the run's outputs by target (`run.outputs`). Kept in
//! memory for the run, seeded from what earlier attempts stored, so a
//! rescued run decides conditions the same way. The rules are
//! [`crate::flow`]'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::flow::{OutputCapture, StepFacts, check_outputs};
use crate::mask::Masker;
use crate::model::{JobSpec, OutputsMode, StepResult, StepStatus};

/// Facts of the finished steps of a run, by (step index, target).
#[derive(Default)]
pub(crate) struct Facts {
    map: Mutex<HashMap<(u32, String), StepFacts>>,
}

impl Facts {
    /// Facts of what earlier attempts finished.
    pub(crate) fn from_previous(previous: &HashMap<(u32, String), StepResult>) -> Self {
        let f = Self::default();
        for r in previous.values() {
            f.note(r);
        }
        f
    }

    /// Takes in a result; only finished ones are facts.
    pub(crate) fn note(&self, r: &StepResult) {
        if r.status == StepStatus::Running {
            return;
        }
        let facts = StepFacts {
            status: r.status,
            exit_code: r.exit_code,
            outputs: r.outputs.clone(),
        };
        match self.map.lock() {
            Ok(mut m) => m.insert((r.step, r.target.clone()), facts),
            Err(p) => p.into_inner().insert((r.step, r.target.clone()), facts),
        };
    }

    /// Adds `steps` (the finished steps of `target`, by name) and
    /// `run.outputs` (every target's outputs, merged in step order) to a
    /// template context.
    pub(crate) fn extend_context(&self, spec: &JobSpec, target: &str, ctx: &mut Value) {
        let map = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut steps = serde_json::Map::new();
        let mut by_target: BTreeMap<&str, Vec<(u32, &StepFacts)>> = BTreeMap::new();
        for ((si, t), f) in map.iter() {
            if t == target
                && let Some(step) = spec.steps.get(*si as usize)
            {
                steps.insert(step.name.clone(), f.to_value());
            }
            by_target.entry(t.as_str()).or_default().push((*si, f));
        }
        let mut run_outputs = serde_json::Map::new();
        for (t, mut fs) in by_target {
            fs.sort_by_key(|(si, _)| *si);
            let mut merged = serde_json::Map::new();
            for (_, f) in fs {
                merged.extend(f.outputs.clone());
            }
            run_outputs.insert(t.to_string(), Value::Object(merged));
        }
        if let Some(obj) = ctx.as_object_mut() {
            obj.insert("steps".into(), Value::Object(steps));
            if let Some(run) = obj.get_mut("run").and_then(Value::as_object_mut) {
                run.insert("outputs".into(), Value::Object(run_outputs));
            }
        }
    }
}

/// A fresh capture for a step's stdout.
pub(crate) fn capture() -> Arc<Mutex<OutputCapture>> {
    Arc::new(Mutex::new(OutputCapture::default()))
}

/// The outputs a step published, masked and checked against the bounds
/// (masking can never make a value longer than allowed pass: the bounds are
/// checked on what is stored).
pub(crate) fn finish_capture(
    capture: &Arc<Mutex<OutputCapture>>,
    mode: Option<OutputsMode>,
    masker: &Masker,
) -> Result<BTreeMap<String, Value>, String> {
    let taken = match capture.lock() {
        Ok(mut c) => std::mem::take(&mut *c),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    let raw = taken.finish(mode == Some(OutputsMode::Json))?;
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        if masker.mask_str(&k) != k {
            return Err("an output name contains a secret value".into());
        }
        out.insert(k, mask_value(v, masker));
    }
    check_outputs(&out)?;
    Ok(out)
}

/// Masks every string inside a JSON value.
pub(crate) fn mask_value(v: Value, masker: &Masker) -> Value {
    match v {
        Value::String(s) => Value::String(masker.mask_str(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| mask_value(x, masker)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (masker.mask_str(&k), mask_value(x, masker)))
                .collect(),
        ),
        other => other,
    }
}
