//! The API docs page (`/api/v1/docs`): plain HTML rendered once from the
//! OpenAPI document at start — no scripts, no fonts, nothing fetched — so it
//! works offline and under a strict Content-Security-Policy.

use std::fmt::Write as _;

use serde_json::Value;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A short text for a schema: `RunView`, `array of X`, `string`, ….
fn schema_text(s: &Value) -> String {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    if let Some(items) = s.get("items") {
        return format!("array of {}", schema_text(items));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = s.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = list.iter().map(schema_text).collect();
            return parts.join(" | ");
        }
    }
    match s.get("type") {
        Some(Value::String(t)) => {
            if let Some(values) = s.get("enum").and_then(Value::as_array) {
                let v: Vec<String> = values.iter().map(|v| esc(&v.to_string())).collect();
                return format!("{} ({})", esc(t), v.join(", "));
            }
            esc(t)
        }
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(esc)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "object".into(),
    }
}

fn content_text(content: Option<&Value>) -> String {
    let Some(Value::Object(types)) = content else {
        return String::new();
    };
    types
        .iter()
        .map(|(mt, v)| {
            let schema = v.get("schema").map(schema_text).unwrap_or_default();
            format!("<code>{}</code> {schema}", esc(mt))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Renders the page.
pub fn render(doc: &utoipa::openapi::OpenApi) -> String {
    let v = serde_json::to_value(doc).unwrap_or(Value::Null);
    let mut h = String::new();
    let title = v
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or("API");
    let version = v
        .pointer("/info/version")
        .and_then(Value::as_str)
        .unwrap_or("");
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
         body{{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}}\
         h2{{border-bottom:1px solid #ccc;margin-top:2.5rem}} .op{{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:.8rem 0}}\
         .m{{display:inline-block;min-width:4.5rem;font-weight:700;font-family:monospace}} .get{{color:#0a6}} .post{{color:#06c}}\
         .put{{color:#a60}} .patch{{color:#a0a}} .delete{{color:#c22}} code,.p{{font-family:monospace}}\
         table{{border-collapse:collapse;margin:.4rem 0}} td,th{{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}}\
         .d{{white-space:pre-wrap}}</style></head><body><h1>{t} <small>{ver}</small></h1>\
         <p>The machine-readable description is <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a> (OpenAPI 3.1).</p>",
        t = esc(title),
        ver = esc(version)
    );
    if let Some(d) = v.pointer("/info/description").and_then(Value::as_str) {
        let _ = write!(h, "<p class=\"d\">{}</p>", esc(d));
    }
    h.push_str("<h2>Endpoints</h2>");
    if let Some(Value::Object(paths)) = v.get("paths") {
        for (path, item) in paths {
            let Value::Object(ops) = item else { continue };
            for method in ["get", "post", "put", "patch", "delete"] {
                let Some(op) = ops.get(method) else { continue };
                let _ = write!(
                    h,
                    "<div class=\"op\"><span class=\"m {method}\">{}</span> <span class=\"p\">{}</span>",
                    method.to_uppercase(),
                    esc(path)
                );
                if let Some(s) = op.get("summary").and_then(Value::as_str) {
                    let _ = write!(h, " — {}", esc(s));
                }
                if let Some(d) = op.get("description").and_then(Value::as_str) {
                    let _ = write!(h, "<p class=\"d\">{}</p>", esc(d));
                }
                let open = op
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| {
                        s.iter()
                            .any(|x| x.as_object().is_some_and(|o| o.is_empty()))
                    });
                if open {
                    h.push_str("<p><em>No authentication needed.</em></p>");
                }
                if let Some(Value::Array(params)) = op.get("parameters") {
                    h.push_str("<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Description</th></tr>");
                    for p in params {
                        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                        let at = p.get("in").and_then(Value::as_str).unwrap_or("");
                        let req = p.get("required").and_then(Value::as_bool).unwrap_or(false);
                        let _ = write!(
                            h,
                            "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            esc(name),
                            if req { " *" } else { "" },
                            esc(at),
                            p.get("schema").map(schema_text).unwrap_or_default(),
                            esc(p.get("description").and_then(Value::as_str).unwrap_or(""))
                        );
                    }
                    h.push_str("</table>");
                }
                if let Some(body) = op.get("requestBody") {
                    let _ = write!(h, "<p>Body: {}</p>", content_text(body.get("content")));
                }
                if let Some(Value::Object(responses)) = op.get("responses") {
                    h.push_str("<table><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>");
                    for (status, r) in responses {
                        let _ = write!(
                            h,
                            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                            esc(status),
                            esc(r.get("description").and_then(Value::as_str).unwrap_or("")),
                            content_text(r.get("content"))
                        );
                    }
                    h.push_str("</table>");
                }
                h.push_str("</div>");
            }
        }
    }
    h.push_str("<h2>Schemas</h2>");
    if let Some(Value::Object(schemas)) = v.pointer("/components/schemas") {
        for (name, s) in schemas {
            let _ = write!(h, "<h3 id=\"schema-{0}\">{0}</h3>", esc(name));
            if let Some(d) = s.get("description").and_then(Value::as_str) {
                let _ = write!(h, "<p class=\"d\">{}</p>", esc(d));
            }
            let required: Vec<&str> = s
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut props: Vec<(String, Value)> = Vec::new();
            let mut collect = |s: &Value| {
                if let Some(Value::Object(p)) = s.get("properties") {
                    props.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            };
            collect(s);
            if let Some(Value::Array(all)) = s.get("allOf") {
                for part in all {
                    collect(part);
                    if let Some(r) = part.get("$ref").and_then(Value::as_str) {
                        let _ = write!(
                            h,
                            "<p>Includes every field of {}.</p>",
                            schema_text(&serde_json::json!({"$ref": r}))
                        );
                    }
                }
            }
            if props.is_empty() {
                let _ = write!(h, "<p>{}</p>", schema_text(s));
                continue;
            }
            h.push_str("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>");
            for (k, p) in props {
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&k),
                    if required.contains(&k.as_str()) {
                        " *"
                    } else {
                        ""
                    },
                    schema_text(&p),
                    esc(p.get("description").and_then(Value::as_str).unwrap_or(""))
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("<p>* required</p></body></html>");
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_path_and_escapes() {
        let doc = crate::api::openapi();
        let html = super::render(&doc);
        assert!(html.contains("/api/v1/runs/{id}/logs"));
        assert!(html.contains("schema-RunView"));
        assert!(!html.contains("<script"));
        assert_eq!(super::esc("<a&'\">"), "&lt;a&amp;&#39;&quot;&gt;");
    }
}
