//! Cron specs as Platform.sh reads them: five fields, minute to day of the week.
//!
//! The cron library's own errors say little more than "out of bounds", so each field is checked
//! here first and the message names the field, the value and its range. The library still has
//! the last word, so that a spec accepted here is one the scheduler can run.

/// A problem with a spec: what is wrong, and what to do about it.
pub(crate) struct Problem {
    pub what: String,
    pub help: String,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names accepted in place of numbers, starting at `min` (`jan` is 1, `sun` is 0).
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of the month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day of the week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

const MACROS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

const FIELDS_HELP: &str = "the five fields are minute (0-59), hour (0-23), day of the month (1-31), month (1-12) and day of the week (0-7, where 0 and 7 are Sunday), such as `*/15 * * * *`";

pub(crate) fn check(spec: &str) -> Result<(), Problem> {
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.iter().any(|f| f.contains('H')) {
        return Err(Problem {
            what: "it uses `H`, which only Platform.sh's Grid hosting understands".into(),
            help: "pick a fixed minute instead, such as `17 * * * *`".into(),
        });
    }
    if spec.starts_with('@') {
        check_macro(spec)?;
    } else {
        check_fields(&fields)?;
    }
    spec.parse::<croner::Cron>()
        .map(|_| ())
        .map_err(|error| Problem {
            what: error.to_string(),
            help: FIELDS_HELP.into(),
        })
}

fn check_macro(spec: &str) -> Result<(), Problem> {
    if MACROS.contains(&spec.trim()) {
        return Ok(());
    }
    Err(Problem {
        what: format!("`{}` is not a schedule Lockstep knows", spec.trim()),
        help: format!(
            "write five fields, or one of {}",
            crate::decode::listed(MACROS)
        ),
    })
}

fn check_fields(fields: &[&str]) -> Result<(), Problem> {
    if fields.len() != FIELDS.len() {
        let help = if fields.len() == 6 {
            "crons run at most once a minute, as on Platform.sh: remove the seconds (or year) field"
                .to_owned()
        } else {
            FIELDS_HELP.to_owned()
        };
        return Err(Problem {
            what: format!("it has {} fields instead of five", fields.len()),
            help,
        });
    }
    for (text, field) in fields.iter().zip(&FIELDS) {
        for item in text.split(',') {
            check_item(item, field).map_err(|what| Problem {
                what,
                help: FIELDS_HELP.into(),
            })?;
        }
    }
    Ok(())
}

/// One comma-separated item: `*`, `N`, `N-M`, each optionally followed by `/STEP`.
fn check_item(item: &str, field: &Field) -> Result<(), String> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(step) if step > 0 => {}
            _ => {
                return Err(format!(
                    "the {} field `{item}` has `{step}` as its step, which must be a whole number above 0",
                    field.name
                ));
            }
        }
    }
    if range == "*" {
        return Ok(());
    }
    let (first, last) = match range.split_once('-') {
        Some((first, last)) => (value(first, field, item)?, value(last, field, item)?),
        None => {
            let single = value(range, field, item)?;
            (single, single)
        }
    };
    if first > last {
        return Err(format!(
            "the {} field `{item}` is a range that goes backwards",
            field.name
        ));
    }
    Ok(())
}

fn value(text: &str, field: &Field, item: &str) -> Result<u32, String> {
    if let Some(at) = field
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        return Ok(field.min + at as u32);
    }
    let Ok(number) = text.parse::<u32>() else {
        return Err(format!(
            "the {} field `{item}` is not `*`, a number, a range such as `1-5` or a step such as `*/15`",
            field.name
        ));
    };
    if !(field.min..=field.max).contains(&number) {
        return Err(format!(
            "the {} `{number}` is out of range: it goes from {} to {}",
            field.name, field.min, field.max
        ));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(spec: &str) -> String {
        check(spec).err().map(|p| p.what).unwrap_or_default()
    }

    #[test]
    fn accepts_what_platform_sh_templates_write() {
        for spec in [
            "*/19 * * * *",
            "0 3 * * *",
            "0,30 8-18 * * mon-fri",
            "15 2 1 jan,jul *",
            "0 0 * * 7",
            "@daily",
        ] {
            assert!(check(spec).is_ok(), "{spec}: {}", what(spec));
        }
    }

    #[test]
    fn names_the_field_and_its_range() {
        assert_eq!(
            what("75 3 * * *"),
            "the minute `75` is out of range: it goes from 0 to 59"
        );
        assert_eq!(
            what("0 25 * * *"),
            "the hour `25` is out of range: it goes from 0 to 23"
        );
        assert!(what("0 0 0 * *").contains("day of the month `0`"));
    }

    #[test]
    fn rejects_wrong_shapes() {
        assert_eq!(what("*/10 * * * * *"), "it has 6 fields instead of five");
        assert!(what("*/0 * * * *").contains("step"));
        assert!(what("5-1 * * * *").contains("backwards"));
        assert!(what("x * * * *").contains("is not `*`"));
        assert!(what("H * * * *").contains("`H`"));
        assert!(what("@reboot").contains("not a schedule"));
    }
}
