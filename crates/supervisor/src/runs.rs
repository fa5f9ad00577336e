//! Cron run records: in memory, and in a JSON-lines file that survives restarts.
//!
//! A run is appended twice: when it starts (no `ended_at`, no `outcome`) and when it ends. The
//! later line for the same `(name, started_at)` replaces the earlier one on reading, so a run
//! whose end line is missing is one the agent did not see end (it stopped or crashed meanwhile).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// How many runs are kept in memory and written back when the file is compacted.
const HISTORY_MAX: usize = 1000;
/// The runs file is compacted down to the history once it grows past this.
const FILE_MAX_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CronRun {
    pub name: String,
    pub started_at: DateTime<Utc>,
    /// `None` while the run is in progress.
    pub ended_at: Option<DateTime<Utc>>,
    /// `None` while the run is in progress.
    pub outcome: Option<CronOutcome>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CronOutcome {
    Succeeded,
    /// The command exited with a non-zero code, was killed by a signal nobody of ours sent, or
    /// could not be started at all (both `None`).
    Failed {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// It ran past its `timeout` and was terminated.
    TimedOut,
    /// [`crate::CronRunner::stop`] ended it.
    Stopped,
}

impl CronOutcome {
    pub(crate) fn from_exit(status: &io::Result<ExitStatus>) -> Self {
        match status {
            Ok(status) if status.success() => CronOutcome::Succeeded,
            Ok(status) => match crate::group::ended(*status) {
                Some(crate::group::Ended::Code(code)) => CronOutcome::Failed {
                    code: Some(code),
                    signal: None,
                },
                Some(crate::group::Ended::Signal(signal)) => CronOutcome::Failed {
                    code: None,
                    signal: Some(signal),
                },
                None => CronOutcome::Failed {
                    code: None,
                    signal: None,
                },
            },
            Err(_) => CronOutcome::Failed {
                code: None,
                signal: None,
            },
        }
    }
}

impl fmt::Display for CronOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CronOutcome::Succeeded => f.write_str("succeeded"),
            CronOutcome::Failed {
                code: Some(code), ..
            } => write!(f, "failed with code {code}"),
            CronOutcome::Failed {
                signal: Some(signal),
                ..
            } => write!(f, "failed: killed by signal {signal}"),
            CronOutcome::Failed { .. } => f.write_str("failed"),
            CronOutcome::TimedOut => f.write_str("timed out"),
            CronOutcome::Stopped => f.write_str("stopped"),
        }
    }
}

/// The newest runs, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    runs: VecDeque<CronRun>,
}

impl History {
    /// Reads the runs file; a missing file is an empty history, and unreadable lines (a line
    /// cut short by a crash) are skipped.
    pub(crate) fn load(path: &Path) -> History {
        let mut history = History::default();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return history,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the cron runs file; starting with no history");
                return history;
            }
        };
        let mut skipped = 0usize;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<CronRun>(line) {
                Ok(run) => history.record(run),
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "skipped unreadable lines in the cron runs file");
        }
        history
            .runs
            .make_contiguous()
            .sort_by_key(|run| run.started_at);
        history
    }

    /// Adds a run, or replaces the earlier record of the same run.
    pub(crate) fn record(&mut self, run: CronRun) {
        // A run's end is recorded soon after its start, so look from the newest end.
        match self
            .runs
            .iter_mut()
            .rev()
            .find(|r| r.name == run.name && r.started_at == run.started_at)
        {
            Some(existing) => *existing = run,
            None => {
                self.runs.push_back(run);
                while self.runs.len() > HISTORY_MAX {
                    self.runs.pop_front();
                }
            }
        }
    }

    pub(crate) fn newest(&self, limit: usize) -> Vec<CronRun> {
        self.runs.iter().rev().take(limit).cloned().collect()
    }

    pub(crate) fn snapshot(&self) -> Vec<CronRun> {
        self.runs.iter().cloned().collect()
    }
}

/// The runs file.
#[derive(Debug)]
pub(crate) struct RunFile {
    path: PathBuf,
    /// Appends and compactions must not interleave.
    lock: tokio::sync::Mutex<()>,
}

impl RunFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        RunFile {
            path,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. When the file has grown too big it is first rewritten from
    /// `history` (called only then), which already holds the newest runs.
    pub(crate) async fn append(
        &self,
        run: &CronRun,
        history: impl FnOnce() -> Vec<CronRun>,
    ) -> io::Result<()> {
        let _guard = self.lock.lock().await;
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let size = match tokio::fs::metadata(&self.path).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if size > FILE_MAX_BYTES {
            self.rewrite(&history()).await?;
        }
        let mut line = serde_json::to_vec(run).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        // One write of the whole line, so a crash leaves at worst one truncated last line.
        file.write_all(&line).await?;
        file.flush().await
    }

    /// Replaces the file atomically (write a sibling, rename over), so a crash never leaves it
    /// half written.
    async fn rewrite(&self, runs: &[CronRun]) -> io::Result<()> {
        let mut text = Vec::new();
        for run in runs {
            serde_json::to_writer(&mut text, run).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&text).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &self.path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn run(name: &str, minute: u32, outcome: Option<CronOutcome>) -> CronRun {
        let started_at = Utc.with_ymd_and_hms(2025, 1, 1, 0, minute, 0).unwrap();
        CronRun {
            name: name.into(),
            started_at,
            ended_at: outcome.map(|_| started_at + chrono::Duration::seconds(5)),
            outcome,
        }
    }

    #[test]
    fn outcomes_serialize_with_a_kind_tag() {
        let json = serde_json::to_string(&CronOutcome::Failed {
            code: Some(2),
            signal: None,
        })
        .unwrap();
        assert_eq!(json, r#"{"kind":"failed","code":2,"signal":null}"#);
        assert_eq!(
            serde_json::to_string(&CronOutcome::TimedOut).unwrap(),
            r#"{"kind":"timed_out"}"#
        );
    }

    #[tokio::test]
    async fn end_records_replace_start_records_and_survive_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/runs.jsonl");
        let file = RunFile::new(path.clone());
        let none = Vec::new;
        file.append(&run("a", 1, None), none).await.unwrap();
        file.append(&run("b", 2, None), none).await.unwrap();
        file.append(&run("a", 1, Some(CronOutcome::Succeeded)), none)
            .await
            .unwrap();
        // A crash mid-write leaves a truncated line; it is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"name\":\"c\",\"sta"))
            .unwrap();

        let history = History::load(&path);
        assert_eq!(
            history.newest(10),
            vec![run("b", 2, None), run("a", 1, Some(CronOutcome::Succeeded))]
        );
        assert_eq!(history.newest(1).len(), 1);
        assert!(
            History::load(&dir.path().join("absent"))
                .newest(5)
                .is_empty()
        );
    }

    #[test]
    fn history_keeps_only_the_newest_runs() {
        let mut history = History::default();
        for i in 0..(HISTORY_MAX + 5) {
            let mut r = run("a", 0, None);
            r.started_at += chrono::Duration::seconds(i as i64);
            history.record(r);
        }
        assert_eq!(history.snapshot().len(), HISTORY_MAX);
        assert_eq!(
            history.newest(1)[0].started_at,
            run("a", 0, None).started_at + chrono::Duration::seconds((HISTORY_MAX + 4) as i64)
        );
    }
}
