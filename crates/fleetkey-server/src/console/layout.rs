//! The page shell every console page shares: the navigation (only what the role may see), the
//! flash message, errors with the API's hint, confirmation pages, and the small formatting
//! helpers (times, serials in links).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetkey::access::Role;
use maud::{DOCTYPE, Markup, html};

use crate::auth::{Action, allowed};
use crate::problem::{ApiError, Problem};

/// The console's style sheet (`/ui/style.css`; the content security policy allows no inline
/// style).
pub(crate) const STYLE: &str = include_str!("style.css");

/// The console's pages, in the navigation's order, with what each needs of the role.
pub(crate) const PAGES: &[(&str, &str, Action)] = &[
    ("/ui", "Fleet", Action::Status),
    ("/ui/devices", "Devices", Action::DeviceRead),
    ("/ui/generations", "Generations", Action::GenerationRead),
    ("/ui/grants", "Grants", Action::GrantRead),
    ("/ui/audit", "Audit", Action::AuditRead),
    ("/ui/tokens", "Tokens", Action::Tokens),
];

/// Who is looking, for the shell.
pub(crate) struct Viewer<'a> {
    /// The principal's name.
    pub(crate) name: &'a str,
    /// Its role.
    pub(crate) role: Role,
    /// The session's anti-forgery value (for the sign-out form).
    pub(crate) csrf: &'a str,
    /// A message from the previous request.
    pub(crate) flash: Option<&'a str>,
}

/// A whole page: `title`, the navigation with `current` marked, and `body`.
pub(crate) fn page(viewer: &Viewer<'_>, current: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleetkey" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        span.brand { "fleetkey" }
                        ul {
                            @for (href, name, action) in PAGES {
                                @if allowed(viewer.role, *action) {
                                    li {
                                        @if *href == current {
                                            a href=(href) aria-current="page" { (name) }
                                        } @else {
                                            a href=(href) { (name) }
                                        }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/ui/logout" {
                            span.who { (viewer.name) " (" (viewer.role) ")" }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    @if let Some(flash) = viewer.flash {
                        p.flash role="status" { (flash) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A page without the navigation (sign-in, not signed in).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleetkey" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                main id="main" .narrow {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error as the page shows it: the problem's title, detail and hint (the words of the JSON
/// API's problem details).
pub(crate) fn problem_box(p: &Problem) -> Markup {
    html! {
        div.problem role="alert" {
            p { strong { (p.title) } ": " (p.detail) }
            @if let Some(field) = &p.field {
                p { "Field: " code { (field) } }
            }
            @if let Some(hint) = &p.hint {
                p.hint { "What to do: " (hint) }
            }
        }
    }
}

/// An HTML response with `status` and the console's headers.
pub(crate) fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The page for an error, with the shell, at the problem's status.
pub(crate) fn error_page(
    viewer: &Viewer<'_>,
    current: &str,
    title: &str,
    e: &ApiError,
) -> Response {
    let p = e.problem();
    respond(p.status, page(viewer, current, title, problem_box(&p)))
}

/// 303 to `to`.
pub(crate) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A time in milliseconds since the epoch, as UTC.
pub(crate) fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// A query-string value, percent-encoded.
pub(crate) fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The hidden anti-forgery field of a form.
pub(crate) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A confirmation: what will happen, to what, and the form that does it (the user types
/// `typed` when it is given: for what cannot be undone).
pub(crate) struct Confirm<'a> {
    /// The form's target.
    pub(crate) action: &'a str,
    /// Hidden fields (name, value).
    pub(crate) hidden: Vec<(&'a str, String)>,
    /// What will happen, in one sentence.
    pub(crate) what: String,
    /// The button's words (names the subject).
    pub(crate) button: String,
    /// The reason field's default, if the operation takes a reason.
    pub(crate) reason: Option<&'a str>,
    /// A `force` checkbox with this label.
    pub(crate) force: Option<&'a str>,
    /// The text the user must type to confirm.
    pub(crate) typed: Option<String>,
    /// Where "Cancel" goes.
    pub(crate) cancel: String,
}

/// The body of a confirmation page.
pub(crate) fn confirm(c: &Confirm<'_>, csrf: &str) -> Markup {
    html! {
        p.what { (c.what) }
        form.confirm method="post" action=(c.action) {
            (csrf_field(csrf))
            @for (name, value) in &c.hidden {
                input type="hidden" name=(name) value=(value);
            }
            @if let Some(default) = c.reason {
                label for="reason" { "Reason (recorded in the audit)" }
                input #reason type="text" name="reason" value=(default) required maxlength="500" autofocus;
            }
            @if let Some(label) = c.force {
                label.check { input type="checkbox" name="force" value="true"; " " (label) }
            }
            @if let Some(typed) = &c.typed {
                label for="typed" { "Type " code { (typed) } " to confirm" }
                input #typed type="text" name="typed" required autocomplete="off" spellcheck="false";
            }
            div.buttons {
                button.danger type="submit" { (c.button) }
                a.button href=(c.cancel) { "Cancel" }
            }
        }
    }
}

/// A progress bar (the native element: no inline style).
pub(crate) fn progress(done: u64, total: u64, label: &str) -> Markup {
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    html! {
        progress value=(done) max=(total.max(1)) aria-label=(label) { (pct) "%" }
        " " span.pct { (done) " of " (total) " (" (pct) "%)" }
    }
}
