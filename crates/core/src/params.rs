//! Run parameters: checked against the job's JSON Schema before anything is
//! queued, with top-level `default`s filled in, and `key=value` pairs from a
//! command line turned into typed JSON using the schema.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Checks that `schema` is a usable parameter schema (an object schema).
pub fn check_schema(schema: &Value) -> Result<()> {
    if schema.is_null() {
        return Ok(());
    }
    if !schema.is_object() {
        return Err(Error::validation(
            "params",
            "must be a JSON Schema object (e.g. {type: object, properties: …})",
        ));
    }
    if let Some(t) = schema.get("type")
        && t != "object"
    {
        return Err(Error::validation(
            "params",
            format!("the parameter schema must have type: object, not {t}"),
        ));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| Error::validation("params", format!("invalid JSON Schema: {e}")))
}

/// Fills defaults and validates `params` against `schema`. Returns the params to store.
pub fn validate(schema: &Value, params: &Value) -> Result<Value> {
    let mut params = match params {
        Value::Null => Value::Object(Map::new()),
        Value::Object(_) => params.clone(),
        other => {
            return Err(Error::validation(
                "params",
                format!("parameters must be an object, got {other}"),
            ));
        }
    };
    if schema.is_null() {
        if params.as_object().is_some_and(|m| !m.is_empty()) {
            let keys: Vec<&String> = params
                .as_object()
                .into_iter()
                .flat_map(|m| m.keys())
                .collect();
            return Err(Error::validation(
                format!("params.{}", keys[0]),
                "this job takes no parameters (it declares no params schema)",
            ));
        }
        return Ok(params);
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        params.as_object_mut(),
    ) {
        for (k, p) in props {
            if let Some(d) = p.get("default") {
                obj.entry(k.clone()).or_insert_with(|| d.clone());
            }
        }
    }
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        Error::validation(
            "params",
            format!("the job's parameter schema is invalid: {e}"),
        )
    })?;
    if let Some(err) = validator.iter_errors(&params).next() {
        let path = err.instance_path().to_string();
        let mut field = String::from("params");
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            field.push('.');
            field.push_str(seg);
        }
        // `required` and `additionalProperties` errors point at the parent; name the property.
        let msg = err.to_string();
        // `"x" is a required property` / `Additional properties are not allowed ('x' was unexpected)`.
        let quoted = |q: char| msg.split(q).nth(1).map(str::to_string);
        if field == "params" {
            let name = if msg.contains("is a required property") {
                quoted('"')
            } else if msg.contains("Additional properties") {
                quoted('\'').or_else(|| quoted('"'))
            } else {
                None
            };
            if let Some(name) = name {
                field = format!("params.{name}");
            }
        }
        return Err(Error::Validation {
            field: Some(field),
            message: msg,
        });
    }
    Ok(params)
}

/// Turns `key=value` pairs into a JSON object, typing each value by the
/// schema (`integer`, `number`, `boolean`, `array`/`object` as JSON); others stay strings.
pub fn from_pairs(schema: &Value, pairs: &[String]) -> Result<Value> {
    let mut out = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::validation(
                "-p",
                format!("'{pair}' is not key=value"),
            ));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(Error::validation(
                "-p",
                format!("'{pair}' has an empty key"),
            ));
        }
        let ty = schema
            .get("properties")
            .and_then(|p| p.get(k))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string");
        let field = || format!("params.{k}");
        let val = match ty {
            "integer" => v
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| Error::validation(field(), format!("'{v}' is not an integer")))?,
            "number" => v
                .parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                .ok_or_else(|| Error::validation(field(), format!("'{v}' is not a number")))?,
            "boolean" => match v {
                "true" | "yes" | "1" => Value::Bool(true),
                "false" | "no" | "0" => Value::Bool(false),
                _ => {
                    return Err(Error::validation(
                        field(),
                        format!("'{v}' is not a boolean (true/false)"),
                    ));
                }
            },
            "array" | "object" => serde_json::from_str(v)
                .map_err(|e| Error::validation(field(), format!("'{v}' is not JSON: {e}")))?,
            _ => Value::String(v.to_string()),
        };
        out.insert(k.to_string(), val);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "version": {"type": "string", "pattern": "^[0-9.]+$"},
            "count": {"type": "integer", "minimum": 1, "default": 2},
            "dry": {"type": "boolean"}
        }, "required": ["version"], "additionalProperties": false})
    }

    #[test]
    fn validates_and_fills_defaults() {
        let p = validate(&schema(), &json!({"version": "1.2"})).unwrap();
        assert_eq!(p, json!({"version": "1.2", "count": 2}));
        let e = validate(&schema(), &json!({"version": "x; rm"})).unwrap_err();
        assert!(
            matches!(&e, Error::Validation { field: Some(f), .. } if f == "params.version"),
            "{e}"
        );
        let e = validate(&schema(), &json!({})).unwrap_err();
        assert!(
            matches!(&e, Error::Validation { field: Some(f), .. } if f == "params.version"),
            "{e}"
        );
        let e = validate(&schema(), &json!({"version": "1", "bogus": 1})).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(validate(&Value::Null, &json!({"a": 1})).is_err());
    }

    #[test]
    fn pairs_are_typed_by_schema() {
        let p = from_pairs(
            &schema(),
            &["version=1.2".into(), "count=3".into(), "dry=true".into()],
        )
        .unwrap();
        assert_eq!(p, json!({"version": "1.2", "count": 3, "dry": true}));
        assert!(from_pairs(&schema(), &["count=x".into()]).is_err());
        assert!(from_pairs(&schema(), &["novalue".into()]).is_err());
    }

    #[test]
    fn schema_must_be_object_schema() {
        assert!(check_schema(&json!({"type": "string"})).is_err());
        assert!(
            check_schema(&json!({"type": "object", "properties": {"a": {"type": "nonsense"}}}))
                .is_err()
        );
        assert!(check_schema(&schema()).is_ok());
    }
}
