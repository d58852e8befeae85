//! `kind: Schedule` documents in job files, and the position index that
//! lets every schedule error — also those found later, against the store —
//! name `file:line:col`.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone as _, Utc};
use serde::Deserialize;

use crate::error::Result;
use crate::schedule::{
    MisfirePolicy, OverlapPolicy, ScheduleDef, ScheduleSpec, Source, parse_cron, parse_timezone,
};

/// A line and column, from 1.
pub(crate) type LineCol = (usize, usize);

/// Where a document starts and where each of its values starts.
pub(crate) type DocPositions = (LineCol, BTreeMap<String, LineCol>);

/// Where each document of `text` starts and where each mapping value in it
/// starts (dotted paths, `[i]` for sequence items), lines and columns from
/// 1; a quoted scalar's position is its first character inside the quotes.
/// The text was already checked by `spec::check_yaml` (bounded), so this
/// pass is linear; a syntax error just ends the index early.
pub(crate) fn positions(text: &str) -> Vec<DocPositions> {
    use libyaml_safer::EventData as E;
    let mut input = text.as_bytes();
    let mut parser = libyaml_safer::Parser::new();
    parser.set_input_string(&mut input);
    let mut docs = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut current: Option<DocPositions> = None;
    while let Ok(event) = parser.parse() {
        let pos = (
            event.start_mark.line as usize + 1,
            event.start_mark.column as usize + 1,
        );
        // Is this event a value (not a key) of the enclosing collection?
        let is_value = match frames.last() {
            Some(Frame::Map { key }) => key.is_some(),
            Some(Frame::Seq { .. }) => true,
            None => false,
        };
        let here = |frames: &[Frame], path: &[String]| -> Option<String> {
            let mut p = path.join("");
            match frames.last()? {
                Frame::Map { key } => {
                    if !p.is_empty() {
                        p.push('.');
                    }
                    p.push_str(key.as_deref()?);
                }
                Frame::Seq { index } => p.push_str(&format!("[{index}]")),
            }
            Some(p)
        };
        match event.data {
            E::StreamEnd => break,
            E::DocumentStart { .. } => current = Some((pos, BTreeMap::new())),
            E::DocumentEnd { .. } => {
                if let Some(d) = current.take() {
                    docs.push(d);
                }
                frames.clear();
                path.clear();
            }
            E::Scalar { value, style, .. } => {
                if is_value {
                    let quoted = matches!(
                        style,
                        libyaml_safer::ScalarStyle::SingleQuoted
                            | libyaml_safer::ScalarStyle::DoubleQuoted
                    );
                    if let (Some(p), Some((_, map))) = (here(&frames, &path), current.as_mut()) {
                        map.insert(p, (pos.0, pos.1 + usize::from(quoted)));
                    }
                    advance(&mut frames);
                } else if let Some(Frame::Map { key }) = frames.last_mut() {
                    *key = Some(value);
                }
            }
            E::Alias { .. } => {
                if is_value {
                    advance(&mut frames);
                } else if let Some(Frame::Map { key }) = frames.last_mut() {
                    *key = Some(String::new());
                }
            }
            E::SequenceStart { .. } | E::MappingStart { .. } => {
                if is_value {
                    if let (Some(p), Some((_, map))) = (here(&frames, &path), current.as_mut()) {
                        map.insert(p.clone(), pos);
                    }
                    let at_root = path.iter().all(String::is_empty);
                    let seg = match frames.last() {
                        Some(Frame::Map { key }) => {
                            let k = key.clone().unwrap_or_default();
                            if at_root { k } else { format!(".{k}") }
                        }
                        Some(Frame::Seq { index }) => format!("[{index}]"),
                        None => String::new(),
                    };
                    path.push(seg);
                } else if !frames.is_empty() {
                    // A collection as a mapping key: not indexed.
                    path.push(String::from(".?"));
                } else {
                    path.push(String::new());
                }
                frames.push(if matches!(event.data, E::SequenceStart { .. }) {
                    Frame::Seq { index: 0 }
                } else {
                    Frame::Map { key: None }
                });
            }
            E::SequenceEnd | E::MappingEnd => {
                frames.pop();
                path.pop();
                advance(&mut frames);
            }
            _ => {}
        }
    }
    if let Some(d) = current.take() {
        docs.push(d);
    }
    docs
}

/// After a value: a mapping waits for its next key, a sequence counts on.
fn advance(frames: &mut [Frame]) {
    match frames.last_mut() {
        Some(Frame::Map { key }) => *key = None,
        Some(Frame::Seq { index }) => *index += 1,
        None => {}
    }
}

use self::frame::Frame;
mod frame {
    /// A collection being read by [`super::positions`].
    pub(super) enum Frame {
        Map { key: Option<String> },
        Seq { index: usize },
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A `kind: Schedule` document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleDoc {
    #[allow(dead_code)]
    kind: String,
    name: String,
    job: String,
    #[serde(default)]
    version: Option<u32>,
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    params: Option<serde_json::Value>,
    #[serde(default)]
    targets: Option<OneOrMany>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
    #[serde(default)]
    misfire: MisfirePolicy,
    #[serde(default)]
    overlap: OverlapPolicy,
}

impl ScheduleDoc {
    /// Checks what needs no store (expression, zone, window, selector),
    /// each error at `file:line:col` of its field.
    pub(crate) fn into_def(self, source: Source) -> Result<ScheduleDef> {
        let name = self.name.clone();
        let err = |field: &str, m: String| source.error(&name, field, m);
        let timezone = self.timezone.unwrap_or_else(|| "UTC".into());
        let tz = parse_timezone(&timezone).map_err(|m| err("timezone", m))?;
        if let Err(e) = parse_cron(&self.cron) {
            // Point at the field inside the expression when one is to blame.
            let place = match (e.field, source.fields.get("cron")) {
                (Some((_, _, offset)), Some((l, c))) => {
                    format!("{}:{l}:{}", source.file, c + offset)
                }
                _ => source.at("cron"),
            };
            return Err(crate::error::Error::validation(
                format!("{place}: schedule '{name}'.cron"),
                e.to_string(),
            ));
        }
        let start = self
            .start
            .as_deref()
            .map(|s| parse_instant(s, tz).map_err(|m| err("start", m)))
            .transpose()?;
        let end = self
            .end
            .as_deref()
            .map(|s| parse_instant(s, tz).map_err(|m| err("end", m)))
            .transpose()?;
        let spec = ScheduleSpec {
            name: self.name,
            job: self.job,
            version: self.version,
            cron: self.cron,
            timezone,
            params: self.params.unwrap_or(serde_json::Value::Null),
            targets: self.targets.map(|t| match t {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            }),
            enabled: self.enabled.unwrap_or(true),
            start,
            end,
            misfire: self.misfire,
            overlap: self.overlap,
        };
        let def = ScheduleDef {
            spec,
            source: Some(source),
            next_fire: None,
            owner_role: None,
        };
        check_def(&def)?;
        Ok(def)
    }
}

/// [`ScheduleSpec::check`] with the error placed at its field.
pub(crate) fn check_def(def: &ScheduleDef) -> Result<()> {
    match def.spec.check() {
        Ok(_) => Ok(()),
        Err(crate::error::Error::Validation {
            field: Some(f),
            message,
        }) => {
            let field = f.split(['.', '[']).next().unwrap_or("name").to_string();
            Err(def.error(&field, message))
        }
        Err(e) => Err(e),
    }
}

/// An instant written as RFC 3339 (`2027-01-01T02:00:00Z`, with an offset),
/// or a local date-time or date in the schedule's zone
/// (`2027-01-01 02:00`, `2027-01-01`).
pub fn parse_instant(s: &str, tz: chrono_tz::Tz) -> std::result::Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })
    .ok_or_else(|| {
        format!(
            "'{s}' is not a time (expected RFC 3339 such as 2027-01-01T02:00:00Z, \
                 or a local 2027-01-01 02:00 in the schedule's time zone)"
        )
    })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("'{s}' does not exist in {tz} (a daylight-saving gap)"))
}
