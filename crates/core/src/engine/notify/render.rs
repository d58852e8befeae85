//! What a notification says: the event payload (JSON, masked string by
//! string), the short summary chat and e-mail show, and the MiniJinja
//! templates of channels (bounded by fuel and output size, masked after
//! rendering).

use serde_json::{Value, json};

use crate::mask::Masker;
use crate::template::{Quoting, Templates};

/// Largest rendered template.
pub(crate) const MAX_RENDERED_BYTES: usize = 256 * 1024;
/// Longest log line kept in a payload.
pub(crate) const MAX_LINE_CHARS: usize = 1000;

/// Checks that a channel template parses (at channel creation).
pub(crate) fn check_template(source: &str) -> Result<(), String> {
    Templates::new()
        .check(source)
        .map_err(|e| format!("template error: {e}"))
}

/// Renders a channel template with the project's template engine (fuel and
/// output bounded, unknown variables are errors) with the event's fields as
/// variables (and the whole event as `event`, the one-line `summary`); the
/// output is masked.
pub(crate) fn render(source: &str, event: &Value, masker: &Masker) -> Result<String, String> {
    let mut ctx = match event {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    ctx.insert("event".into(), event.clone());
    ctx.insert("summary".into(), Value::String(summary(event)));
    let out = Templates::new()
        .render(source, Quoting::None, &Value::Object(ctx))
        .map_err(|e| format!("template error: {e}"))?;
    if out.len() > MAX_RENDERED_BYTES {
        return Err(format!(
            "the rendered template is {} bytes, more than the limit of {MAX_RENDERED_BYTES}",
            out.len()
        ));
    }
    Ok(masker.mask_str(&out))
}

/// Masks every string in a JSON value (keys stay: they are ours).
pub(crate) fn mask_json(v: &mut Value, masker: &Masker) {
    if masker.is_empty() {
        return;
    }
    match v {
        Value::String(s) => *s = masker.mask_str(s),
        Value::Array(a) => a.iter_mut().for_each(|x| mask_json(x, masker)),
        Value::Object(m) => m.values_mut().for_each(|x| mask_json(x, masker)),
        _ => {}
    }
}

/// The last `n` lines of `text`, each cut at [`MAX_LINE_CHARS`] characters.
pub(crate) fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| {
            if l.chars().count() > MAX_LINE_CHARS {
                let cut: String = l.chars().take(MAX_LINE_CHARS).collect();
                format!("{cut}…")
            } else {
                (*l).to_string()
            }
        })
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// A human duration: `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`.
pub(crate) fn human_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// One line saying what happened, for chat and e-mail subjects.
pub(crate) fn summary(event: &Value) -> String {
    let kind = s(event, &["type"]).unwrap_or("event");
    let job = s(event, &["job"]).unwrap_or("-");
    match event.get("run") {
        Some(run) if run.is_object() => {
            let status = s(run, &["status"]).unwrap_or("?");
            let id = s(run, &["id"]).unwrap_or("?");
            let short: String = id.chars().take(8).collect();
            let dur = run
                .get("duration_ms")
                .and_then(Value::as_u64)
                .map(|ms| format!(" after {}", human_ms(ms)))
                .unwrap_or_default();
            let what = if kind == "run.recovered" {
                "recovered".to_string()
            } else {
                status.to_string()
            };
            format!("{kind}: job {job} (run {short}) {what}{dur}")
        }
        _ => format!("{kind}: {job}"),
    }
}

/// The status icon and colour of chat messages.
fn look(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "run.succeeded" | "run.recovered" => (":white_check_mark:", "#2eb67d"),
        "run.failed" | "run.timed_out" | "schedule.missed" => (":x:", "#d00000"),
        "run.cancelled" => (":no_entry_sign:", "#a0a0a0"),
        _ => (":bell:", "#439fe0"),
    }
}

/// The targets of a run payload as `name (status)`, at most 20.
fn targets_line(run: &Value) -> String {
    let Some(ts) = run.get("targets").and_then(Value::as_array) else {
        return "-".into();
    };
    let mut parts: Vec<String> = ts
        .iter()
        .take(20)
        .map(|t| {
            format!(
                "{} ({})",
                s(t, &["name"]).unwrap_or("?"),
                s(t, &["status"]).unwrap_or("?")
            )
        })
        .collect();
    if ts.len() > 20 {
        parts.push(format!("and {} more", ts.len() - 20));
    }
    parts.join(", ")
}

/// A Slack-compatible incoming-webhook message (Slack, Mattermost):
/// summary text plus an attachment with status, job, targets, duration and,
/// when the server has a public URL, a link to the run.
pub(crate) fn slack_message(event: &Value) -> Value {
    let kind = s(event, &["type"]).unwrap_or("event");
    let (icon, color) = look(kind);
    let summary = summary(event);
    let mut fields = vec![json!({"title": "Event", "value": kind, "short": true})];
    if let Some(job) = s(event, &["job"]) {
        fields.push(json!({"title": "Job", "value": job, "short": true}));
    }
    let mut link = None;
    if let Some(run) = event.get("run").filter(|r| r.is_object()) {
        fields.push(
            json!({"title": "Status", "value": s(run, &["status"]).unwrap_or("?"), "short": true}),
        );
        if let Some(ms) = run.get("duration_ms").and_then(Value::as_u64) {
            fields.push(json!({"title": "Duration", "value": human_ms(ms), "short": true}));
        }
        fields.push(json!({"title": "Targets", "value": targets_line(run), "short": false}));
        if let Some(err) = s(run, &["error"]) {
            fields.push(json!({"title": "Error", "value": err, "short": false}));
        }
        link = s(run, &["url"]).map(str::to_string);
    }
    let text = match &link {
        Some(url) => format!("{icon} {summary} <{url}|open the run>"),
        None => format!("{icon} {summary}"),
    };
    let mut attachment = json!({
        "fallback": summary,
        "color": color,
        "fields": fields,
    });
    if let Some(url) = link {
        attachment["title"] = json!("Open the run");
        attachment["title_link"] = json!(url);
    }
    json!({"text": text, "attachments": [attachment]})
}

/// The default plain-text e-mail body.
pub(crate) fn email_text(event: &Value) -> String {
    let mut out = summary(event);
    out.push_str("\n\n");
    if let Some(job) = s(event, &["job"]) {
        out.push_str(&format!("Job:      {job}\n"));
    }
    if let Some(run) = event.get("run").filter(|r| r.is_object()) {
        out.push_str(&format!("Run:      {}\n", s(run, &["id"]).unwrap_or("?")));
        out.push_str(&format!(
            "Status:   {}\n",
            s(run, &["status"]).unwrap_or("?")
        ));
        if let Some(ms) = run.get("duration_ms").and_then(Value::as_u64) {
            out.push_str(&format!("Duration: {}\n", human_ms(ms)));
        }
        out.push_str(&format!("Targets:  {}\n", targets_line(run)));
        if let Some(err) = s(run, &["error"]) {
            out.push_str(&format!("Error:    {err}\n"));
        }
        if let Some(url) = s(run, &["url"]) {
            out.push_str(&format!("Link:     {url}\n"));
        }
        if let Some(lines) = run.get("log_tail").and_then(Value::as_array)
            && !lines.is_empty()
        {
            out.push_str("\nLast output lines:\n");
            for l in lines {
                out.push_str("  ");
                out.push_str(l.as_str().unwrap_or_default());
                out.push('\n');
            }
        }
    }
    out.push_str(&format!(
        "\nEvent id: {}\n",
        s(event, &["id"]).unwrap_or("?")
    ));
    out
}

/// The HTML part: the plain text, escaped, in a `<pre>`.
pub(crate) fn email_html(text: &str) -> String {
    let mut esc = String::with_capacity(text.len() + 64);
    for c in text.chars() {
        match c {
            '<' => esc.push_str("&lt;"),
            '>' => esc.push_str("&gt;"),
            '&' => esc.push_str("&amp;"),
            '"' => esc.push_str("&quot;"),
            '\'' => esc.push_str("&#39;"),
            c => esc.push(c),
        }
    }
    format!(
        "<!DOCTYPE html><html><body><pre style=\"font-family: monospace\">{esc}</pre></body></html>"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn last_lines_are_bounded() {
        let text = "a\nb\nc\n".to_string() + &"x".repeat(5000);
        let l = last_lines(&text, 2);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0], "c");
        assert!(l[1].chars().count() <= MAX_LINE_CHARS + 1);
    }

    #[test]
    fn templates_are_bounded_and_masked() {
        let m = Masker::new([b"hunter2-secret".as_slice()]);
        let ev = json!({"type": "run.failed", "job": "j", "run": {"error": "hunter2-secret"}});
        let out = render("{{ run.error }} {{ type }}", &ev, &m).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        let bomb =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        assert!(render(bomb, &ev, &m).is_err());
        assert!(check_template("{{ unclosed").is_err());
    }

    #[test]
    fn html_is_escaped() {
        assert!(email_html("<script>").contains("&lt;script&gt;"));
    }
}
