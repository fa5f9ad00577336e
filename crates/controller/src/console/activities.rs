//! The activity feed, and an activity's page: its phases drawn as a timeline with the closed
//! window marked, and its log, followed live while it runs (server-sent events).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::page;
use super::session::Viewer;
use super::{failure, refused};
use crate::access::Action;
use crate::store::PhaseTiming;
use crate::{Activity, Controller};
use lockstep_image::short_release;

/// How many activities the feed shows.
const FEED_LENGTH: u32 = 100;

#[derive(Deserialize)]
pub(crate) struct FeedQuery {
    environment: Option<String>,
}

pub(crate) async fn feed(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<FeedQuery>,
    viewer: Viewer,
) -> Response {
    let activities = match crate::api::visible_activities(
        &controller,
        &viewer.principal,
        query.environment.as_deref(),
        FEED_LENGTH,
    ) {
        Ok(activities) => activities,
        Err(error) => return failure(&viewer, error),
    };
    let title = match &query.environment {
        Some(environment) => format!("Activities of {environment}"),
        None => "Activities".to_owned(),
    };
    page(
        &title,
        Some(&viewer),
        html! {
            h1 { (title) }
            @if activities.is_empty() {
                p { "Nothing happened yet." }
            } @else {
                table {
                    thead { tr { th { "Activity" } th { "Environment" } th { "State" } th { "Started" } th { "Took" } } }
                    tbody {
                        @for activity in &activities {
                            tr {
                                td { a href={ "/activities/" (activity.id) } { (activity.description) } }
                                td { (activity.environment) }
                                td { (outcome(activity)) }
                                td { (activity.created_at) }
                                td { (took(activity).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

pub(crate) async fn activity_page(
    State(controller): State<Arc<Controller>>,
    Path(id): Path<String>,
    viewer: Viewer,
) -> Response {
    let activity =
        match crate::api::check_activity(&controller, &viewer.principal, Action::Read, &id) {
            Ok(activity) => activity,
            Err(error) => return refused(&viewer, error),
        };
    let log = match controller.store.log(&id) {
        Ok(log) => log,
        Err(error) => return failure(&viewer, error.into()),
    };
    let running = !finished(&activity);
    page(
        &activity.description,
        Some(&viewer),
        html! {
            @if running {
                // Without JavaScript, the page itself refreshes while the activity runs.
                noscript { meta http-equiv="refresh" content="2"; }
            }
            h1 { (activity.description) }
            dl.facts {
                dt { "Activity" } dd { code { (activity.id) } " (" (activity.kind) ")" }
                dt { "Environment" } dd { a href={ "/activities?environment=" (activity.environment) } { (activity.environment) } }
                dt { "State" } dd { (outcome(&activity)) }
                @if let Some(image) = &activity.image {
                    dt { "Release" } dd { code title=(image) { (short_release(image)) } }
                }
                dt { "Started" } dd { (activity.created_at) }
                @if let Some(took) = took(&activity) {
                    dt { "Took" } dd { (took) }
                }
            }
            @if !activity.phases.is_empty() {
                h2 { "Phases" }
                (timeline(&activity.phases, Utc::now()))
            }
            h2 { "Log" }
            @if running {
                pre.log data-follow={ "/activities/" (activity.id) "/log" } { (log) }
            } @else {
                pre.log { (log) }
            }
        },
    )
    .into_response()
}

/// `text/event-stream` of the activity's log: each new part an event, then `end`.
pub(crate) async fn log_events(
    State(controller): State<Arc<Controller>>,
    Path(id): Path<String>,
    viewer: Viewer,
) -> Response {
    if let Err(error) =
        crate::api::check_activity(&controller, &viewer.principal, Action::Read, &id)
    {
        return refused(&viewer, error);
    }
    let events =
        crate::api::follow_log(controller, id, log_event).chain(futures_util::stream::once(
            async { Ok(bytes::Bytes::from_static(b"event: end\ndata: \n\n")) },
        ));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(events))
        .expect("a fixed response builds")
}

/// A part of a log as one server-sent event, a `data:` field a line. Pushed code writes the
/// log: a carriage return, which ends a field too, is dropped so that no line of it can start
/// a field of its own (an `event: end` that would end the stream).
fn log_event(part: String) -> String {
    let mut event: String = part
        .replace('\r', "")
        .trim_end_matches('\n')
        .split('\n')
        .map(|line| format!("data: {line}\n"))
        .collect();
    event.push('\n');
    event
}

fn finished(activity: &Activity) -> bool {
    activity.state == "complete" || activity.state == "cancelled"
}

fn outcome(activity: &Activity) -> Markup {
    match activity.result.as_deref() {
        Some(result) => {
            html! { span class={ "result-" (result) } { (activity.state) ", " (result) } }
        }
        None => html! { span.badge.state-deploying { (activity.state) } },
    }
}

fn took(activity: &Activity) -> Option<String> {
    let (start, end) = (
        instant(&activity.created_at)?,
        instant(activity.completed_at.as_deref()?)?,
    );
    Some(seconds(end - start))
}

fn instant(rfc3339: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

fn seconds(duration: chrono::TimeDelta) -> String {
    let ms = duration.num_milliseconds().max(0);
    if ms < 10_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{:.0} s", ms as f64 / 1000.0)
    }
}

const WIDTH: f64 = 900.0;
const LABELS: f64 = 150.0;
const ROW: f64 = 24.0;

/// The phases as bars on one time axis, each with its name and duration; the closed window
/// (from the close phase's start to the open phase's end, when nodes serve nothing and the
/// edge holds or serves from cache) shaded behind them. A phase still running ends at `now`.
pub(crate) fn timeline(phases: &[PhaseTiming], now: DateTime<Utc>) -> Markup {
    let spans: Vec<(&PhaseTiming, DateTime<Utc>, DateTime<Utc>)> = phases
        .iter()
        .filter_map(|phase| {
            let start = instant(&phase.started_at)?;
            let end = phase.ended_at.as_deref().and_then(instant).unwrap_or(now);
            Some((phase, start, end.max(start)))
        })
        .collect();
    let (Some(first), Some(last)) = (
        spans.iter().map(|s| s.1).min(),
        spans.iter().map(|s| s.2).max(),
    ) else {
        return html! {};
    };
    let total = (last - first).num_microseconds().unwrap_or(1).max(1) as f64;
    let x = |at: DateTime<Utc>| {
        LABELS
            + (at - first).num_microseconds().unwrap_or(0) as f64 / total * (WIDTH - LABELS - 90.0)
    };
    let closed_from = spans.iter().find(|s| s.0.name == "close").map(|s| s.1);
    let closed_until = spans.iter().rev().find(|s| s.0.name == "open").map(|s| s.2);
    let height = ROW * spans.len() as f64 + 30.0;
    html! {
        svg.timeline viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="The activity's phases on a time axis" {
            @if let (Some(from), Some(until)) = (closed_from, closed_until) {
                rect.closed x=(x(from)) y="0" width=((x(until) - x(from)).max(1.0)) height=(height - 22.0) {}
                text.muted x=(x(from)) y=(height - 8.0) {
                    "closed window " (seconds(until - from))
                }
            }
            @for (row, (phase, start, end)) in spans.iter().enumerate() {
                @let y = ROW * row as f64 + 4.0;
                @let class = if phase.ended_at.is_none() { "bar running" } else { "bar" };
                text x="4" y=(y + 14.0) { (phase.name.replace('_', " ")) }
                rect class=(class) x=(x(*start)) y=(y) width=((x(*end) - x(*start)).max(2.0)) height=(ROW - 8.0) rx="2" {}
                text.muted x=(x(*end) + 6.0) y=(y + 14.0) { (seconds(*end - *start)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, start_ms: i64, end_ms: Option<i64>) -> PhaseTiming {
        let at = |ms: i64| {
            (DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap()
                + chrono::TimeDelta::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        PhaseTiming {
            name: name.into(),
            started_at: at(start_ms),
            ended_at: end_ms.map(at),
        }
    }

    #[test]
    fn every_phase_is_drawn_with_its_duration_and_the_closed_window_is_marked() {
        let phases = [
            phase("stage", 0, Some(400)),
            phase("quiesce", 400, Some(450)),
            phase("close", 450, Some(500)),
            phase("swap", 500, Some(700)),
            phase("deploy_hook", 700, Some(1200)),
            phase("open", 1200, Some(1250)),
            phase("post_deploy", 1250, Some(1300)),
        ];
        let svg = timeline(&phases, Utc::now()).into_string();
        for name in [
            "stage",
            "quiesce",
            "close",
            "swap",
            "deploy hook",
            "open",
            "post deploy",
        ] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name} in {svg}");
        }
        assert!(svg.contains("0.50 s"), "the hook's duration in {svg}");
        assert!(svg.contains("closed window 0.80 s"), "{svg}");
    }

    #[test]
    fn a_log_line_cannot_start_an_event_field_of_its_own() {
        let event = log_event("building\nfoo\revent: end\rdata: x\n".into());
        assert_eq!(event, "data: building\ndata: fooevent: enddata: x\n\n");
    }

    #[test]
    fn a_running_phase_ends_now_and_no_window_is_marked_before_open() {
        let phases = [phase("stage", 0, Some(100)), phase("close", 100, None)];
        let now = instant(&phases[1].started_at).unwrap() + chrono::TimeDelta::milliseconds(300);
        let svg = timeline(&phases, now).into_string();
        assert!(svg.contains("bar running"), "{svg}");
        assert!(svg.contains("0.30 s"), "{svg}");
        assert!(!svg.contains("closed window"), "{svg}");
    }
}
