//! The configuration corpus: every invalid project must fail with exactly the messages in its
//! snapshot, and every valid project must pass.
//!
//! A case is one text file holding a project's files, each introduced by a `==> PATH <==` line.
//! A file that is none of the configuration files is there for them to include.

use lockstep_config::{Checked, Sources};

fn load_case(path: &std::path::Path) -> Sources {
    let text = std::fs::read_to_string(path).expect("case is readable");
    let mut sources = Sources::default();
    let mut current: Option<(String, String)> = None;
    let store = |sources: &mut Sources, (name, body): (String, String)| {
        let slot = match name.as_str() {
            ".platform.app.yaml" => &mut sources.app,
            ".platform/routes.yaml" => &mut sources.routes,
            ".platform/services.yaml" => &mut sources.services,
            ".platform/applications.yaml" => &mut sources.applications,
            nested if nested.ends_with("/.platform.app.yaml") => {
                sources.nested_apps.insert(name, body);
                return;
            }
            _ => {
                sources.included.insert(name, body.into_bytes());
                return;
            }
        };
        *slot = Some(body);
    };
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("==> ")
            .and_then(|l| l.strip_suffix(" <=="))
        {
            if let Some(done) = current.take() {
                store(&mut sources, done);
            }
            current = Some((name.to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some(done) = current.take() {
        store(&mut sources, done);
    }
    sources
}

fn render(checked: &Checked) -> String {
    checked
        .diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn invalid_projects_fail_with_their_messages() {
    insta::glob!("corpus/invalid/*.txt", |path| {
        let checked = lockstep_config::check(&load_case(path), &lockstep_config::AnyRuntime);
        assert!(
            checked.project.is_none() && checked.errors().count() > 0,
            "{} should be invalid",
            path.display()
        );
        insta::assert_snapshot!(render(&checked));
    });
}

#[test]
fn valid_projects_pass() {
    insta::glob!("corpus/valid/*.txt", |path| {
        let checked = lockstep_config::check(&load_case(path), &lockstep_config::AnyRuntime);
        assert!(
            checked.project.is_some(),
            "{} should be valid:\n{}",
            path.display(),
            render(&checked)
        );
        insta::assert_snapshot!(render(&checked));
    });
}
