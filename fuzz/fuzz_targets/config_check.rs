//! Any text, as any of the three configuration files, must give diagnostics, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_config::{Sources, check};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let minimal = "name: app\ntype: 'python:3.11'\nweb: {commands: {start: x}}\n".to_owned();
    let sources = match selector % 3 {
        0 => Sources {
            app: Some(text),
            ..Sources::default()
        },
        1 => Sources {
            app: Some(minimal),
            routes: Some(text),
            ..Sources::default()
        },
        _ => Sources {
            app: Some(minimal),
            services: Some(text),
            ..Sources::default()
        },
    };
    let checked = check(&sources, &lockstep_config::AnyRuntime);
    for diagnostic in &checked.diagnostics {
        let _ = diagnostic.to_string();
    }
    assert_eq!(checked.project.is_some(), checked.errors().next().is_none());
});
