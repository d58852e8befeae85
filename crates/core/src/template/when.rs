//! Conditions (`when:`) and the variables a template reads: the same engine
//! and bounds as rendering (strict undefined values, the fuel budget), so a
//! condition cannot cost more than a template.

use std::collections::BTreeSet;

use minijinja::Value;

use super::{Templates, describe};
use crate::flow::{MAX_CONDITION, condition_expression};

impl Templates {
    /// Evaluates a `when` condition (`{{ expression }}`) with `ctx`: its
    /// truth as Jinja defines it (`false`, `0`, `''`, empty lists and `none`
    /// are false). An undefined variable is an error, not false.
    pub fn condition(&self, when: &str, ctx: &serde_json::Value) -> Result<bool, String> {
        let expr = self.compile_condition(when)?;
        let v = expr
            .eval(Value::from(minijinja::value::Serde(ctx)))
            .map_err(describe)?;
        Ok(v.is_true())
    }

    /// Checks a condition's syntax and length.
    pub fn check_condition(&self, when: &str) -> Result<(), String> {
        self.compile_condition(when).map(|_| ())
    }

    /// The variables a condition reads, in dotted form (`steps.check.exit_code`).
    pub fn condition_variables(&self, when: &str) -> Result<BTreeSet<String>, String> {
        Ok(self
            .compile_condition(when)?
            .undeclared_variables(true)
            .into_iter()
            .collect())
    }

    /// The variables a template reads, in dotted form.
    pub fn variables(&self, source: &str) -> Result<BTreeSet<String>, String> {
        let t = self.env.template_from_str(source).map_err(describe)?;
        Ok(t.undeclared_variables(true).into_iter().collect())
    }

    fn compile_condition<'a>(
        &'a self,
        when: &'a str,
    ) -> Result<minijinja::Expression<'a, 'a>, String> {
        if when.len() > MAX_CONDITION {
            return Err(format!(
                "the condition is {} bytes; at most {MAX_CONDITION}",
                when.len()
            ));
        }
        let expr = condition_expression(when);
        if expr.is_empty() {
            return Err("empty condition".into());
        }
        self.env.compile_expression(expr).map_err(describe)
    }
}
