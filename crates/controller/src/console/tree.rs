//! The environments page: the project's environments as a tree (each under its parent), with
//! what each serves, its state and its nodes, read from the store alone so that it renders fast
//! however many environments there are.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::failure;
use super::layout::page;
use super::session::Viewer;
use crate::{Activity, Controller, Environment};
use lockstep_image::short_release;

/// What an environment is doing, as the tree says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvironmentState {
    Deploying,
    Open,
    /// A deployment failed past close and left it closed.
    Closed,
    NoRelease,
}

impl EnvironmentState {
    pub(crate) fn of(environment: &Environment, running: Option<&Activity>) -> EnvironmentState {
        match (running, &environment.serving, &environment.previous) {
            (Some(_), _, _) => EnvironmentState::Deploying,
            (None, Some(_), _) => EnvironmentState::Open,
            (None, None, Some(_)) => EnvironmentState::Closed,
            (None, None, None) => EnvironmentState::NoRelease,
        }
    }

    pub(crate) fn badge(self) -> Markup {
        let (class, text) = match self {
            EnvironmentState::Deploying => ("state-deploying", "deploying"),
            EnvironmentState::Open => ("state-open", "open"),
            EnvironmentState::Closed => ("state-closed", "closed"),
            EnvironmentState::NoRelease => ("state-none", "no release"),
        };
        html! { span class={ "badge " (class) } { (text) } }
    }
}

/// `environments` in tree order: each after its parent, children by name, with its depth. An
/// environment whose parent the viewer may not see starts a tree of its own.
pub(crate) fn tree_order(environments: &[Environment]) -> Vec<(&Environment, usize)> {
    let names: Vec<&str> = environments.iter().map(|e| e.name.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Environment>> = BTreeMap::new();
    for environment in environments {
        let parent = environment
            .parent
            .as_deref()
            .filter(|parent| names.contains(parent));
        children.entry(parent).or_default().push(environment);
    }
    for siblings in children.values_mut() {
        // Production first among the roots, as Platform.sh draws it.
        siblings.sort_by_key(|e| (e.name != "production", e.name.clone()));
    }
    let mut ordered = Vec::with_capacity(environments.len());
    let mut stack: Vec<(&Environment, usize)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|e| (*e, 0))
        .collect();
    while let Some((environment, depth)) = stack.pop() {
        ordered.push((environment, depth));
        if let Some(kids) = children.get(&Some(environment.name.as_str())) {
            stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
        }
    }
    ordered
}

pub(crate) async fn environments_page(
    State(controller): State<Arc<Controller>>,
    viewer: Viewer,
) -> Response {
    match render(&controller, &viewer) {
        Ok(body) => page("Environments", Some(&viewer), body).into_response(),
        Err(error) => failure(&viewer, error),
    }
}

pub(crate) fn render(
    controller: &Controller,
    viewer: &Viewer,
) -> Result<Markup, crate::ControllerError> {
    let environments = crate::api::visible(controller, &viewer.principal)?;
    let running = controller.store.running_activities()?;
    let mut rows = Vec::new();
    for (environment, depth) in tree_order(&environments) {
        let nodes = controller.store.nodes(&environment.name)?;
        let under_way = running
            .iter()
            .find(|activity| activity.environment == environment.name);
        rows.push(html! {
            tr {
                td class={ "tree depth-" (depth.min(3)) } {
                    @if depth > 0 { "└ " }
                    a href={ "/environments/" (environment.name) } { strong { (environment.name) } }
                    " " span.badge { (environment.kind.as_str()) }
                }
                td { (EnvironmentState::of(environment, under_way).badge()) }
                td {
                    @match &environment.serving {
                        Some(release) => code title=(release.image) { (short_release(&release.image)) },
                        None => span.hint { "none" },
                    }
                }
                td { (environment.generation) }
                td { @for node in &nodes { code { (node.name) } " " } }
                td {
                    @if let Some(activity) = under_way {
                        a href={ "/activities/" (activity.id) } { (activity.description) }
                    } @else {
                        a href={ "/activities?environment=" (environment.name) } { "activities" }
                    }
                }
            }
        });
    }
    Ok(html! {
        h1 { "Environments of " (controller.options.project) }
        @if rows.is_empty() {
            p { "No environment yet: push a branch (" code { "git push lockstep HEAD:production" } ")." }
        } @else {
            table {
                thead { tr { th { "Environment" } th { "State" } th { "Release" } th { "Generation" } th { "Nodes" } th { "Now" } } }
                tbody { @for row in &rows { (row) } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(name: &str, parent: Option<&str>) -> Environment {
        serde_json::from_value(serde_json::json!({
            "name": name, "kind": "development", "branch": name, "parent": parent,
            "generation": 0, "serving": null, "previous": null, "settings": {},
            "created_at": "", "uid": 0,
        }))
        .unwrap()
    }

    #[test]
    fn children_follow_their_parent_and_production_comes_first() {
        let environments = [
            environment("feature-b", Some("staging")),
            environment("staging", Some("production")),
            environment("alpha", None),
            environment("production", None),
            environment("feature-a", Some("staging")),
            environment("orphan", Some("hidden")),
        ];
        let order: Vec<(&str, usize)> = tree_order(&environments)
            .into_iter()
            .map(|(e, depth)| (e.name.as_str(), depth))
            .collect();
        assert_eq!(
            order,
            [
                ("production", 0),
                ("staging", 1),
                ("feature-a", 2),
                ("feature-b", 2),
                ("alpha", 0),
                ("orphan", 0),
            ]
        );
    }
}
