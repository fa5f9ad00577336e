//! Log files: `<name>.log` in a log folder, rotated by size to `<name>.log.1` … `.<keep>`.
//!
//! Processes write to a pipe and a task of ours copies the pipe into the file (see
//! [`pump`]). Handing the child the file itself would be simpler, but rotation could then
//! never take effect: the child would keep writing to the renamed file.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::error::check_name;

/// When a log file is rotated, and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A log file never grows past this many bytes; 0 means never rotate.
    pub max_bytes: u64,
    /// How many rotated files (`.1` is the newest) are kept; 0 keeps none.
    pub keep: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
        }
    }
}

/// The path of the current log of `name`.
pub(crate) fn log_path(log_dir: &Path, name: &str) -> PathBuf {
    log_dir.join(format!("{name}.log"))
}

/// The last `max_bytes` of the current log of `name` (not the rotated ones), as lossy UTF-8;
/// an empty string when there is no log yet.
pub fn read_log(log_dir: &Path, name: &str, max_bytes: u64) -> io::Result<String> {
    check_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut file = match std::fs::File::open(log_path(log_dir, name)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    // The cut may fall inside a multi-byte character: drop its continuation bytes rather than
    // show a replacement character for them.
    let skip = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
        .count();
    Ok(String::from_utf8_lossy(&bytes[skip..]).into_owned())
}

/// One process's (or cron's) log, shared by every incarnation of it and by its output pumps.
pub(crate) type SharedLog = Arc<tokio::sync::Mutex<LogWriter>>;

/// Appends to a log file and rotates it so that it never exceeds `max_bytes`.
#[derive(Debug)]
pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    /// Opens (creating the folder and file if needed) the log of `name` for appending.
    pub(crate) async fn open(log_dir: &Path, name: &str, limits: LogLimits) -> io::Result<Self> {
        fs::create_dir_all(log_dir).await?;
        let path = log_path(log_dir, name);
        let file = open_append(&path).await?;
        let size = file.metadata().await?.len();
        Ok(LogWriter {
            path,
            file,
            size,
            limits,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn shared(self) -> SharedLog {
        Arc::new(tokio::sync::Mutex::new(self))
    }

    /// Appends `data`, rotating first whenever it would not fit. A rotation happens after the
    /// last complete line that fits, so lines are only split when a single line is longer
    /// than `max_bytes`.
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = match self.limits.max_bytes {
                0 => u64::MAX,
                max => max.saturating_sub(self.size),
            };
            if data.len() as u64 <= room {
                self.append(data).await?;
                break;
            }
            // `room` < data.len() here, so it fits in usize.
            let room = room as usize;
            let cut = match data[..room].iter().rposition(|b| *b == b'\n') {
                Some(newline) => newline + 1,
                // An empty file takes what fits of a line too long for any file.
                None if self.size == 0 => room,
                None => 0,
            };
            if cut > 0 {
                self.append(&data[..cut]).await?;
                data = &data[cut..];
            }
            self.rotate().await?;
        }
        self.file.flush().await
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).await?;
        self.size += data.len() as u64;
        Ok(())
    }

    /// `.log` becomes `.log.1`, `.log.1` becomes `.log.2` … and `.log.<keep>` is overwritten.
    async fn rotate(&mut self) -> io::Result<()> {
        self.file.flush().await?;
        if self.limits.keep == 0 {
            remove_if_exists(&self.path).await?;
        } else {
            for index in (1..self.limits.keep).rev() {
                rename_if_exists(&self.rotated(index), &self.rotated(index + 1)).await?;
            }
            rename_if_exists(&self.path, &self.rotated(1)).await?;
        }
        self.file = open_append(&self.path).await?;
        self.size = 0;
        Ok(())
    }

    fn rotated(&self, index: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    }
}

async fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

async fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

async fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Copies everything read from `pipe` into `log` until every writer has closed the pipe.
///
/// It keeps reading even when the log cannot be written (a full disk), because a pipe nobody
/// drains blocks the process writing to it.
pub(crate) async fn pump(mut pipe: pipe::Receiver, log: SharedLog) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut failing = false;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading process output failed; output is lost");
                return;
            }
        };
        let mut log = log.lock().await;
        match log.write(&buf[..n]).await {
            Ok(()) => failing = false,
            Err(e) => {
                // Once per failing streak, not once per chunk.
                if !failing {
                    tracing::warn!(log = %log.path().display(), error = %e, "writing a log failed; output is dropped");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: u64, keep: usize) -> LogLimits {
        LogLimits { max_bytes, keep }
    }

    #[tokio::test]
    async fn rotates_at_line_boundaries_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), "web", limits(25, 2))
            .await
            .unwrap();
        for i in 0..10 {
            log.write(format!("line {i:03}\n").as_bytes())
                .await
                .unwrap(); // 9 bytes
        }
        let read =
            |suffix: &str| std::fs::read_to_string(dir.path().join(format!("web.log{suffix}")));
        // Two lines (18 bytes) fit in 25: files hold 008-009, 006-007, 004-005.
        assert_eq!(read("").unwrap(), "line 008\nline 009\n");
        assert_eq!(read(".1").unwrap(), "line 006\nline 007\n");
        assert_eq!(read(".2").unwrap(), "line 004\nline 005\n");
        assert!(read(".3").is_err());
    }

    #[tokio::test]
    async fn splits_a_chunk_at_its_last_fitting_newline_and_overlong_lines_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), "w", limits(10, 5))
            .await
            .unwrap();
        log.write(b"ab\ncd\nefghijklmnopqrstuvwxyz\nz")
            .await
            .unwrap();
        let read = |suffix: &str| {
            std::fs::read_to_string(dir.path().join(format!("w.log{suffix}"))).unwrap()
        };
        assert_eq!(read(".3"), "ab\ncd\n");
        assert_eq!(read(".2"), "efghijklmn");
        assert_eq!(read(".1"), "opqrstuvwx");
        assert_eq!(read(""), "yz\nz");
    }

    #[tokio::test]
    async fn keep_zero_truncates_and_max_zero_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), "a", limits(4, 0))
            .await
            .unwrap();
        log.write(b"1\n2\n3\n").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log")).unwrap(),
            "3\n"
        );
        assert!(!dir.path().join("a.log.1").exists());

        let mut log = LogWriter::open(dir.path(), "b", limits(0, 3))
            .await
            .unwrap();
        log.write(&[b'x'; 10_000]).await.unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("b.log")).unwrap().len(),
            10_000
        );
        assert!(!dir.path().join("b.log.1").exists());
    }

    #[tokio::test]
    async fn reopening_continues_the_size_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), "a", limits(6, 1))
            .await
            .unwrap();
        log.write(b"1234\n").await.unwrap();
        drop(log);
        let mut log = LogWriter::open(dir.path(), "a", limits(6, 1))
            .await
            .unwrap();
        log.write(b"5\n").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.1")).unwrap(),
            "1234\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log")).unwrap(),
            "5\n"
        );
    }

    #[test]
    fn read_log_returns_the_tail_and_nothing_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_log(dir.path(), "web", 100).unwrap(), "");
        std::fs::write(dir.path().join("web.log"), "first\nsecond\n").unwrap();
        assert_eq!(read_log(dir.path(), "web", 7).unwrap(), "second\n");
        assert_eq!(
            read_log(dir.path(), "web", 1000).unwrap(),
            "first\nsecond\n"
        );
        // "é" is two bytes; a cut between them drops the orphaned half.
        std::fs::write(dir.path().join("u.log"), "aé!").unwrap();
        assert_eq!(read_log(dir.path(), "u", 2).unwrap(), "!");
        assert!(read_log(dir.path(), "../etc/passwd", 10).is_err());
    }
}
