//! `fleetkey token issue|revoke|list`: bearer tokens of the HTTP service (`fleetkey serve`).

use fleetkey::access::{ApiToken, Role};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// Service tokens.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Issue a token; it is printed once and stored only as its SHA-256 hash.
    #[command(after_help = "\
Roles: admin (everything), operator (devices, generations, grants, governance; not tokens),
station (provisioning only), technician (reads its own grants: --subject is the grant subject),
auditor (read-only: status, lists, audit).

Examples:
  fleetkey token issue --principal station-1 --role station --expires 90d
  fleetkey token issue --principal jane --role technician --subject 'jane@workshop-7' --json")]
    Issue {
        /// Who holds it (1 to 64 of A-Z a-z 0-9 . _ @ -); the audit actor of what it does.
        #[arg(long)]
        principal: String,
        /// admin, operator, station, technician or auditor.
        #[arg(long)]
        role: String,
        /// A technician's grant subject.
        #[arg(long)]
        subject: Option<String>,
        /// When it stops working: a duration (30m, 12h, 90d) or a time (RFC 3339). Default: the
        /// lifecycle policy's token_lifetime (`fleetkey policy show`); at most its maximum.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke a token by id: every instance refuses it from the next request on.
    #[command(
        after_help = "Example:\n  fleetkey token revoke tok-1a2b3c4d5e6f --reason 'station retired'"
    )]
    Revoke {
        /// The token's id (`fleetkey token list`).
        id: String,
        /// Why (recorded in the audit event).
        #[arg(long, default_value = "revoked")]
        reason: String,
    },
    /// The tokens: id, principal, role, state (never the token itself).
    #[command(after_help = "Example:\n  fleetkey token list --json")]
    List,
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::Issue {
            principal,
            role,
            subject,
            expires,
        } => {
            let role = Role::parse(&role).map_err(|e| CliError::input("--role", e))?;
            let now = jiff::Timestamp::now().as_millisecond();
            let expires_at = expires.as_deref().map(|e| expiry(now, e)).transpose()?;
            let mut fleet = global.open()?;
            let (token, secret) =
                fleet.issue_token(&principal, role, subject.as_deref(), expires_at)?;
            let out = serde_json::json!({
                "id": token.id, "principal": token.principal, "role": token.role,
                "subject": token.subject, "expires_at": token.expires_at, "token": secret.expose(),
            });
            global.print(&out, |_| {
                format!(
                    "{}\n\ntoken {} for {} ({}){}: shown once, stored only as a hash. Keep it secret.\n\
                     Use it as `Authorization: Bearer <token>`; revoke with `fleetkey token revoke {}`.",
                    secret.expose(),
                    token.id,
                    token.principal,
                    token.role,
                    token
                        .expires_at
                        .map(|e| format!(", expires {}", time_text(e)))
                        .unwrap_or_default(),
                    token.id
                )
            })
        }
        Command::Revoke { id, reason } => {
            let mut fleet = global.open()?;
            let token = fleet.revoke_token(&id, &reason)?;
            global.print(&view(&token), |_| {
                format!(
                    "token {} of {} ({}) revoked",
                    token.id, token.principal, token.role
                )
            })
        }
        Command::List => {
            let mut fleet = global.open()?;
            let tokens = fleet.tokens()?;
            let list: Vec<_> = tokens.iter().map(view).collect();
            global.print(&list, |_| {
                if tokens.is_empty() {
                    return "no tokens; issue one with `fleetkey token issue --principal NAME --role ROLE`".into();
                }
                let now = jiff::Timestamp::now().as_millisecond();
                tokens
                    .iter()
                    .map(|t| {
                        let state = match (t.revoked_at, t.expires_at) {
                            (Some(r), _) => format!("revoked {}", time_text(r)),
                            (None, Some(e)) if e <= now => format!("expired {}", time_text(e)),
                            (None, Some(e)) => format!("expires {}", time_text(e)),
                            (None, None) => "no expiry".into(),
                        };
                        format!(
                            "{}  {:<24} {:<10} {}{}",
                            t.id,
                            t.principal,
                            t.role,
                            state,
                            t.subject
                                .as_deref()
                                .map(|s| format!("  subject {s}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

fn view(t: &ApiToken) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "principal": t.principal, "role": t.role, "subject": t.subject,
        "created_at": t.created_at, "created_by": t.created_by,
        "expires_at": t.expires_at, "revoked_at": t.revoked_at,
    })
}

fn time_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// `--expires`: `<n>s|m|h|d` from now, or an RFC 3339 time.
fn expiry(now: i64, text: &str) -> Result<i64, CliError> {
    let units = [
        ('s', 1_000i64),
        ('m', 60_000),
        ('h', 3_600_000),
        ('d', 86_400_000),
    ];
    for (suffix, ms) in units {
        if let Some(n) = text
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<i64>().ok())
        {
            return n
                .checked_mul(ms)
                .filter(|d| *d > 0)
                .and_then(|d| now.checked_add(d))
                .ok_or_else(|| CliError::input("--expires", "a positive duration that fits"));
        }
    }
    let ts: jiff::Timestamp = text.parse().map_err(|e| {
        CliError::input(
            "--expires",
            format_args!("{text:?} is neither a duration (30m, 12h, 90d) nor RFC 3339 ({e})"),
        )
    })?;
    Ok(ts.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::expiry;

    #[test]
    fn expiry_takes_durations_and_times() {
        assert_eq!(expiry(1000, "90d").unwrap(), 1000 + 90 * 86_400_000);
        assert_eq!(expiry(0, "30m").unwrap(), 1_800_000);
        assert_eq!(expiry(0, "1970-01-01T00:00:02Z").unwrap(), 2000);
        assert!(expiry(0, "0d").is_err());
        assert!(expiry(0, "-5h").is_err());
        assert!(expiry(0, "soon").is_err());
    }
}
