//! `opsconductor notifications …`: channels (from a YAML/JSON file; secrets
//! by name), a test delivery, and the delivery history per run or channel.

use std::path::PathBuf;

use clap::Subcommand;
use opsconductor::engine::notify::{ChannelSpec, DeliveryFilter};
use opsconductor::{Actor, Conductor, Error};

use crate::exit;
use crate::output::{Out, local_time};

/// Largest channel file read.
const MAX_CHANNEL_FILE: u64 = 256 * 1024;

/// `opsconductor notifications …`.
#[derive(Subcommand, Debug)]
pub enum NotifyCmd {
    /// Manage channels (webhook, slack, email).
    #[command(subcommand)]
    Channels(ChannelsCmd),
    /// Send a test event to a channel now and say how it went.
    Test {
        /// Channel name.
        channel: String,
    },
    /// Delivery history (newest first), with every attempt.
    History {
        /// Only deliveries about this run (id or unique prefix).
        #[arg(long)]
        run: Option<String>,
        /// Only deliveries to this channel.
        #[arg(long)]
        channel: Option<String>,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `opsconductor notifications channels …`.
#[derive(Subcommand, Debug)]
pub enum ChannelsCmd {
    /// Create or replace a channel from a YAML or JSON file.
    #[command(
        after_help = "Example file (webhook):\n  kind: webhook\n  url: https://hooks.example.com/opsc\n  signing_secret: hook-key   # a secret's name, never its value\n\nSee docs/notifications.md for slack and email."
    )]
    Set {
        /// Channel name.
        name: String,
        /// The channel file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List channels.
    List,
    /// Show one channel (secrets by name only).
    Show {
        /// Channel name.
        name: String,
    },
    /// Delete a channel.
    Delete {
        /// Channel name.
        name: String,
    },
}

fn read_spec(file: &PathBuf) -> Result<ChannelSpec, Error> {
    use std::io::Read;
    let where_ = file.display().to_string();
    let f = std::fs::File::open(file)
        .map_err(|e| Error::validation(where_.clone(), format!("cannot read: {e}")))?;
    let mut text = String::new();
    f.take(MAX_CHANNEL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::validation(where_.clone(), format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_CHANNEL_FILE {
        return Err(Error::validation(
            where_,
            format!("larger than {MAX_CHANNEL_FILE} bytes"),
        ));
    }
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        Error::validation(format!("{where_}{at}"), e.to_string())
    })
}

/// Dispatches one `notifications` subcommand.
pub async fn notifications(oc: &Conductor, out: &Out, cmd: NotifyCmd) -> Result<u8, Error> {
    let me = Actor::local_user();
    match cmd {
        NotifyCmd::Channels(ChannelsCmd::Set {
            name,
            file,
            description,
        }) => {
            let spec = read_spec(&file)?;
            let ch = oc.set_channel(&name, &description, spec, &me).await?;
            if out.json {
                out.json(&ch);
            } else {
                println!("channel '{}' ({}) saved", ch.name, ch.spec.kind());
            }
            Ok(exit::OK)
        }
        NotifyCmd::Channels(ChannelsCmd::List) => {
            let list = oc.channels(&me).await?;
            if out.json {
                out.json(&list);
                return Ok(exit::OK);
            }
            if list.is_empty() {
                out.note("no channels yet — add one with `opsconductor notifications channels set NAME -f FILE`");
                return Ok(exit::OK);
            }
            let rows = list
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.spec.kind().to_string(),
                        format!("{} by {}", local_time(c.updated_at), c.updated_by),
                        c.description.clone(),
                    ]
                })
                .collect();
            out.table(&["NAME", "KIND", "UPDATED", "DESCRIPTION"], rows);
            Ok(exit::OK)
        }
        NotifyCmd::Channels(ChannelsCmd::Show { name }) => {
            let ch = oc.channel(&name, &me).await?;
            if out.json {
                out.json(&ch);
            } else {
                print!(
                    "{}",
                    serde_yaml_ng::to_string(&ch).map_err(|e| Error::Internal(e.to_string()))?
                );
            }
            Ok(exit::OK)
        }
        NotifyCmd::Channels(ChannelsCmd::Delete { name }) => {
            oc.delete_channel(&name, &me).await?;
            println!("channel '{name}' deleted");
            Ok(exit::OK)
        }
        NotifyCmd::Test { channel } => {
            let t = oc.test_channel(&channel, &me).await?;
            if out.json {
                out.json(&t);
            } else if t.delivered {
                println!(
                    "delivered to '{}' in {} ms (reply {}), event id {}",
                    t.channel,
                    t.latency_ms,
                    t.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    t.event_id
                );
            } else {
                out.warn(&format!(
                    "not delivered to '{}': {}",
                    t.channel,
                    t.error.as_deref().unwrap_or("no reason given")
                ));
            }
            Ok(if t.delivered { exit::OK } else { exit::FAILED })
        }
        NotifyCmd::History {
            run,
            channel,
            limit,
        } => {
            if !(1..=1000).contains(&limit) {
                return Err(Error::validation(
                    "--limit",
                    format!("{limit} is out of range (1-1000)"),
                ));
            }
            let run = match run {
                Some(r) => Some(oc.resolve_run_id(&r, &me).await?),
                None => None,
            };
            let filter = DeliveryFilter {
                run,
                channel,
                limit,
            };
            let list = oc.notification_history(&filter, &me).await?;
            if out.json {
                out.json(&list);
                return Ok(exit::OK);
            }
            if list.is_empty() {
                out.note("no notifications");
                return Ok(exit::OK);
            }
            let rows = list
                .iter()
                .map(|d| {
                    let last = d.attempts.last();
                    vec![
                        local_time(d.delivery.created_at),
                        d.delivery.kind.to_string(),
                        d.delivery.channel.clone(),
                        d.delivery
                            .run_id
                            .map(|r| r.to_string().chars().take(8).collect())
                            .unwrap_or_default(),
                        format!("{:?}", d.delivery.status).to_lowercase(),
                        d.attempts.len().to_string(),
                        last.and_then(|a| a.code)
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
                        d.delivery.last_error.clone().unwrap_or_default(),
                        d.delivery.event_id.to_string(),
                    ]
                })
                .collect();
            out.table(
                &[
                    "CREATED", "EVENT", "CHANNEL", "RUN", "STATUS", "ATTEMPTS", "CODE", "ERROR",
                    "EVENT ID",
                ],
                rows,
            );
            Ok(exit::OK)
        }
    }
}
